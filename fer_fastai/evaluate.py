"""`python -m fer_fastai.evaluate MODEL --data PATH`: score a .safetensors or .onnx model on any data.

Both backends go through the same path: decoded uint8 faces → `preprocess.pixels_to_input` →
`predictor.predict_proba` → `metrics.classification_report`, so their numbers are comparable.
PATH is a folder layout (`--split` picks train/valid/test), a fer2013.csv (`--split` picks the Usage),
a folder of class folders (one labeled split), or a flat folder of unlabeled images (→ predictions CSV).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from fastcore.script import call_parse

from .atomic import atomic_path, check_output_file, check_output_folder, write_json
from .card import card_path, read_card
from .data import FaceSet
from .errors import FerError, cli_errors
from .eval_data import EvalData, load_eval_data
from .interpret import write_data_plots
from .metrics import classification_report, expected_calibration_error, format_report
from .predict import Predictor, load_predictor
from .recipes import Recipe
from .scoring import Predictions, predict, predict_faces
from .selective import selective_scores
from .spreadsheet import spreadsheet_safe


def evaluation_report(predictor: Predictor, data: EvalData, predictions: Predictions, model: str) -> dict[str, Any]:
    """The JSON-ready result: the classification report, and with --tta the flip-averaged one beside it."""
    result: dict[str, Any] = {"model": str(model), "backend": predictor.backend, "data": data.description,
                              "n": len(data.faces), "temperature": predictor.temperature}
    targets = data.faces.labels
    result["report"] = classification_report(predictions.probs, targets)
    if predictions.probs_uncalibrated is not None:
        result["ece_uncalibrated"] = expected_calibration_error(predictions.probs_uncalibrated, targets)
    threshold = getattr(predictor, "threshold", None)
    if threshold is not None:
        result["uncertainty"] = {"threshold": threshold, **selective_scores(predictions.probs, targets, threshold)}
    if predictions.probs_tta is not None:
        result["tta"] = {"method": "mean of the probabilities of each face and its horizontal mirror",
                         "report": classification_report(predictions.probs_tta, targets)}
    return result


def format_tta(plain: dict[str, Any], tta: dict[str, Any]) -> str:
    """Plain and flip-TTA numbers side by side, so neither silently replaces the other."""
    lines = [f"{'':<18} {'plain':>8} {'flip TTA':>9} {'change':>8}"]
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("balanced accuracy", "balanced_accuracy"),
            ("ECE", "ece"), ("loss (NLL)", "loss")]
    for name, key in rows:
        lines.append(f"{name:<18} {plain[key]:>8.4f} {tta[key]:>9.4f} {tta[key] - plain[key]:>+8.4f}")
    for label in plain["per_class"]:
        a, b = plain["per_class"][label]["f1"], tta["per_class"][label]["f1"]
        lines.append(f"{'F1 ' + label:<18} {a:>8.4f} {b:>9.4f} {b - a:>+8.4f}")
    return "\n".join(lines)


def format_evaluation(result: dict[str, Any]) -> str:
    title = f"{result['model']} ({result['backend']}) on {result['data']}"
    text = format_report(result["report"], title=title)
    if "ece_uncalibrated" in result and result["temperature"] != 1.0:
        text += (f"\ncalibration: temperature {result['temperature']:.4f}; ECE {result['ece_uncalibrated']:.4f} at T=1 "
                 f"→ {result['report']['ece']:.4f}")
    if "uncertainty" in result:
        sure = result["uncertainty"]
        text += (f"\nsure answers (confidence ≥ {sure['threshold']:.4f}, the model's threshold): {sure['coverage']:.1%} of "
                 f"the faces, {sure['accuracy']:.1%} right; the rest are shown as uncertain")
    if "tta" in result:
        text += "\n\nflip test-time augmentation, side by side:\n" + format_tta(result["report"], result["tta"]["report"])
    return text


def write_predictions_csv(path: str | Path | None, sources: tuple[str, ...], probs: np.ndarray,
                          labels: tuple[str, ...], probs_tta: np.ndarray | None = None) -> None:
    """file, label, one probability column per class (and tta_ columns with --tta); stdout if path is None."""
    import pandas as pd

    frame = pd.DataFrame({"file": [spreadsheet_safe(source) for source in sources],
                          "label": [labels[i] for i in probs.argmax(axis=1)]})
    for i, label in enumerate(labels):
        frame[label] = probs[:, i].round(6)
    if probs_tta is not None:
        frame["tta_label"] = [labels[i] for i in probs_tta.argmax(axis=1)]
        for i, label in enumerate(labels):
            frame[f"tta_{label}"] = probs_tta[:, i].round(6)
    if path is None:
        frame.to_csv(sys.stdout, index=False)
        return
    with atomic_path(path) as temp:
        frame.to_csv(temp, index=False)


def predict_unlabeled(predictor: Predictor, faces: FaceSet, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities in the model's own class order, for the predictions CSV."""
    probs = predict(predictor, faces.pixels)
    probs_tta = (probs + predict(predictor, faces.pixels, flip=True)) / 2 if tta else None
    return probs, probs_tta


def training_recipe(model: str | Path, predictor: Predictor) -> Recipe | None:
    """The recipe the model was trained with (its validation split): an ONNX file's metadata leaves it out,
    so the card beside the file is read when there is one."""
    if predictor.card.recipe is None and card_path(model).is_file():
        return read_card(model).recipe
    return predictor.card.recipe


@call_parse
def main(model: str,  # a .safetensors (with its .json card beside it) or an .onnx file
         data: str = None,  # folder layout, fer2013.csv, folder of class folders, or flat folder of unlabeled images
         split: str = "test",  # train, valid, test or private (fer2013.csv: test = PublicTest, private = PrivateTest)
         json: str = None,  # write the full result as JSON here
         plots: str = None,  # write confusion matrix, per-class scores, top losses, samples and reliability plots here
         tta: bool = False,  # also score the mean prediction of each face and its mirror image (both reported)
         csv: str = None,  # unlabeled images: write predictions here (default: stdout)
         device: str = "cpu",  # torch backend: cpu, cuda or mps
         skip_unknown: bool = False,  # leave out class folders with unknown names instead of stopping
         skip_bad: bool = False,  # leave out unreadable images instead of stopping
         valid_pct: float = None,  # with --split valid: a smaller share of train than training held out (same seed), e.g. 0.02
         ):
    "Score a trained model (.safetensors or .onnx) on labeled data, or predict a folder of unlabeled images."
    with cli_errors():
        if data is None:
            raise FerError("--data is required: a folder layout, a fer2013.csv, or a folder of images")
        for destination in (json, csv):  # before the model is loaded and the data scored, not after
            if destination:
                check_output_file(destination)
        if plots:
            check_output_folder(plots)
        predictor = load_predictor(model, device=device)
        eval_data = load_eval_data(data, split, training_recipe(model, predictor), skip_unknown, skip_bad, valid_pct)
        faces = eval_data.faces
        if eval_data.labeled and csv:
            raise FerError(f"{data} is labeled, so it is scored, not predicted: --csv is for a folder of unlabeled "
                           "images; use --json for the scores")
        if not eval_data.labeled and (json or plots):
            raise FerError(f"{data} has no labels, so there is nothing to score or plot: --json and --plots need "
                           "labeled data; use --csv for the predictions")
        if not eval_data.labeled:
            probs, probs_tta = predict_unlabeled(predictor, faces, tta)
            write_predictions_csv(csv, faces.sources, probs, tuple(predictor.labels), probs_tta)
            if csv:
                print(f"wrote {len(faces)} predictions to {csv}")
            return
        predictions = predict_faces(predictor, faces, tta)
        result = evaluation_report(predictor, eval_data, predictions, model)
        print(format_evaluation(result))
        if json:
            write_json(json, result)
            print(f"wrote {json}")
        if plots:
            written = write_data_plots(faces, predictions, plots, eval_data.subject, predictor.temperature,
                                       getattr(predictor, "threshold", None), predictor=predictor)
            print(f"wrote {len(written)} plots to {plots}")
