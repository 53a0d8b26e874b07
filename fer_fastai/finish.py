"""Finishing a model: calibrate on valid, score valid and test, save weights + card + metrics.json, draw the plots.

Shared by training and `fer_fastai.ensemble`, so every model in a run folder is finished alike; it
trains nothing, so building an ensemble never loads fastai.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_json
from .calibrate import calibrate_logits
from .card import ModelCard
from .data import FaceSet
from .interpret import write_run_plots
from .labels import LABELS
from .metrics import classification_report
from .model_io import save_model
from .predict import TorchPredictor
from .preprocess import pixels_to_input
from .scoring import predictions_from_logits
from .selective import fit_uncertainty


def finish_model(model: torch.nn.Module, card: ModelCard, weights_path: Path, valid_faces: FaceSet,
                 test_faces: FaceSet | None, data_name: str, run_facts: dict[str, Any], learn=None,
                 ) -> dict[str, Any]:
    """Calibrate on valid, score valid and test, save the model and metrics.json, draw the run's plots.

    `learn` (a fastai Learner, at the end of training) gives the learning curves their recorded schedule.
    Returns the metrics (also in `weights_path`'s folder as metrics.json).
    """
    # The model runs once per split (a shifted ensemble costs 9 passes of its networks per face);
    # calibration, scores and plots all come from these logits.
    device = str(next(model.parameters()).device)
    faces_of = {split: faces for split, faces in (("valid", valid_faces), ("test", test_faces)) if faces is not None}
    uncalibrated = TorchPredictor(model, card, device)
    logits = {split: uncalibrated.predict_logits(pixels_to_input(faces.pixels)) for split, faces in faces_of.items()}
    # One temperature fitted on valid; the card carries it, so the reports below and every consumer use it.
    calibration = calibrate_logits(logits["valid"], valid_faces.labels, logits.get("test"),
                                   None if test_faces is None else test_faces.labels)
    card = card.replace(temperature=calibration["temperature"], calibration=calibration)
    predictions = {split: predictions_from_logits(logits[split], calibration["temperature"], np.arange(len(LABELS)))
                   for split in faces_of}
    uncertainty = fit_uncertainty(predictions["valid"].probs, valid_faces.labels,
                                  predictions["test"].probs if test_faces is not None else None,
                                  None if test_faces is None else test_faces.labels)
    card = card.replace(uncertainty=uncertainty)
    metrics = {**run_facts, "calibration": calibration, "uncertainty": uncertainty}
    for split, faces in faces_of.items():
        metrics[split] = classification_report(predictions[split].probs, faces.labels)
    save_model(model, weights_path, card.replace(metrics=headline(metrics)))
    run_dir = Path(weights_path).parent
    write_json(run_dir / "metrics.json", metrics)
    plot_split = "test" if test_faces is not None else "valid"
    plot_faces = faces_of[plot_split]
    write_run_plots(run_dir, TorchPredictor(model, card, device), plot_faces,
                    f"{data_name} {plot_split} split, {len(plot_faces):,} faces", learn=learn,
                    predictions=predictions[plot_split])
    return metrics


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that go in the model card (the full report stays in metrics.json)."""
    numbers = {}
    for split in ("valid", "test"):
        if split in metrics:
            for key in ("accuracy", "macro_f1", "loss", "ece"):
                numbers[f"{split}_{key}"] = round(metrics[split][key], 4)
            numbers[f"{split}_n"] = metrics[split]["n"]
    return numbers
