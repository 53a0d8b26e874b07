"""Plots: every file is written as a sensible PNG, by training, by the CLIs, and from plain arrays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_fastai.data import FaceSet
from fer_fastai.scoring import Predictions
from fer_fastai.card import ModelCard, card_from_dict
from fer_fastai.labels import LABELS
from fer_fastai.recipes import AugmentConfig, TrainConfig
from fer_fastai.interpret import (main, plot_learning_curves, plot_lr_find, recipe_schedule, recorded_schedule,
                                  top_loss_indices, train_loss_label, write_data_plots)
from fer_fastai.metrics import expected_calibration_error, reliability_bins

from conftest import synthetic_faces

DATA_PLOTS = {"confusion_matrix.png", "class_scores.png", "top_losses.png", "prediction_samples.png", "reliability.png",
              "risk_coverage.png"}
EXPLAINED = "top_losses_explained.png"  # drawn when the plots are given the predictor (explain.py)
RUN_PLOTS = DATA_PLOTS | {"learning_curves.png", EXPLAINED}


def assert_png(path: Path, min_size: tuple[int, int] = (500, 400)) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert min_size[0] <= width <= 4000 and min_size[1] <= height <= 4000, (path.name, image.size)
        # a blank canvas would be one colour; a real plot has text, lines and faces
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, path.name


def made_up_predictions(n_per_class: int = 4, seed: int = 0) -> tuple[FaceSet, Predictions]:
    pixels, labels = synthetic_faces(n_per_class, seed)
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(labels), 7))
    logits[np.arange(len(labels)), labels] += 1.5  # right most of the time, not always
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sharper = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)
    faces = FaceSet(pixels, labels, tuple(f"face_{i}.png" for i in range(len(labels))))
    return faces, Predictions(probs=sharper, probs_uncalibrated=probs, probs_tta=None)


def test_training_leaves_every_plot(trained_run):
    assert {path.name for path in (trained_run / "plots").glob("*.png")} == RUN_PLOTS
    for path in (trained_run / "plots").glob("*.png"):
        assert_png(path)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    card = json.loads((trained_run / "model.json").read_text())
    assert card["temperature"] == metrics["calibration"]["temperature"] > 0
    assert {"ece_before", "ece_after"} <= set(card["calibration"]["valid"])


def test_data_plots_from_arrays(tmp_path):
    faces, predictions = made_up_predictions()
    written = write_data_plots(faces, predictions, tmp_path / "plots", "made-up faces", temperature=0.5)
    assert {path.name for path in written} == DATA_PLOTS
    for path in written:
        assert_png(path)


def test_top_losses_are_drawn_beside_their_heat_maps(tmp_path):
    class BandPredictor:
        """Answers from the brightest band, as the synthetic faces are drawn (conftest.synthetic_faces)."""

        def predict_proba(self, batch: np.ndarray) -> np.ndarray:
            bands = np.stack([batch[:, 0, 6 * k:6 * k + 8].mean(axis=(1, 2)) for k in range(7)], axis=1)
            return np.exp(8 * bands) / np.exp(8 * bands).sum(axis=1, keepdims=True)

    faces, predictions = made_up_predictions()
    written = write_data_plots(faces, predictions, tmp_path, "made-up faces", predictor=BandPredictor())
    assert {path.name for path in written} == DATA_PLOTS | {EXPLAINED}
    assert_png(tmp_path / EXPLAINED, min_size=(1500, 600))


def test_plotting_leaves_matplotlib_settings_alone(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    faces, predictions = made_up_predictions(1)
    write_data_plots(faces, predictions, tmp_path, "made-up faces")
    assert dict(matplotlib.rcParams) == before


def test_top_losses_are_the_surest_mistakes():
    targets = np.array([0, 1, 2, 3])
    probs = np.array([[0.9, 0.1, 0, 0, 0, 0, 0],  # right
                      [0.6, 0.4, 0, 0, 0, 0, 0],  # wrong, p(actual) 0.4
                      [0.95, 0, 0.05, 0, 0, 0, 0],  # wrong, p(actual) 0.05: the worst
                      [0.8, 0, 0, 0.2, 0, 0, 0]])  # wrong, p(actual) 0.2
    assert list(top_loss_indices(probs, targets, k=2)) == [2, 3]
    assert list(top_loss_indices(probs, targets, k=10)) == [2, 3, 1]


def test_reliability_bins_agree_with_the_reported_ece():
    faces, predictions = made_up_predictions(20, seed=3)
    bins = reliability_bins(predictions.probs, faces.labels)
    weights = bins["count"] / bins["count"].sum()
    ece = float((weights * np.abs(bins["accuracy"] - bins["confidence"])).sum())
    assert ece == pytest.approx(expected_calibration_error(predictions.probs, faces.labels))
    assert bins["count"].sum() == len(faces)


def test_recipe_schedule_matches_what_fastai_recorded(face_folder, tmp_path):
    """The schedule drawn for finished runs is the one fit_one_cycle / fit really used."""
    import torch

    from fer_fastai.data import load_splits, make_dataloaders
    from fer_fastai.train import TrainConfig, make_learner

    dls = make_dataloaders(load_splits(face_folder), bs=8, device=torch.device("cpu"))
    for recipe in ("fastai", "seed"):
        config = TrainConfig.for_recipe(recipe, data=str(face_folder), out=str(tmp_path), epochs=2, bs=8, lr=2e-3,
                                        device="cpu", precision="fp32")
        learn = make_learner(dls, config, tmp_path)
        (learn.fit_one_cycle if recipe == "fastai" else learn.fit)(2, 2e-3)
        recorded = recorded_schedule(learn)
        rebuilt = recipe_schedule(ModelCard(arch="seed", recipe=config, lr=2e-3), at=recorded["epoch"])
        assert rebuilt["lr"] == pytest.approx(recorded["lr"], rel=1e-6), recipe
        assert rebuilt["mom"] == pytest.approx(recorded["mom"], rel=1e-6), recipe


def test_train_loss_label_says_what_the_train_loss_measured():
    assert train_loss_label(None) == "train (batch-smoothed)"
    label = train_loss_label(TrainConfig(data="", out="", augment=AugmentConfig(flip=True), mixup=0.4, start_size=32))
    assert label == "train (batch-smoothed, augmented, faces 32→48 px, mixup α 0.4)\n(mixed targets: higher than valid by design)"


def test_learning_curves_from_a_history_file(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,valid_loss,accuracy,f1_score,time\n"
                       "0,1.8,1.7,0.30,0.20,00:10\n1,1.5,1.45,0.42,0.33,00:10\n2,1.3,1.40,0.47,0.38,00:10\n")
    card = card_from_dict({"arch": "seed", "labels": list(LABELS), "lr": 3e-3, "best_epoch": 2,
                           "recipe": {"data": "", "out": "", "recipe": "fastai", "epochs": 3, "label_smoothing": 0.1,
                                      "augment": {"flip": True}}}, "a card")
    path = plot_learning_curves(history, tmp_path / "curves.png", card, recipe_schedule(card), run_name="made-up")
    assert_png(path)
    history.write_text("epoch,train_loss,valid_loss,accuracy,f1_score,time\n")
    with pytest.raises(Exception, match="no epochs to plot"):
        plot_learning_curves(history, tmp_path / "empty.png", card)


def test_cli_on_a_run_folder_and_on_a_model_file(trained_run, tmp_path, face_folder, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("plots", "checkpoint.pth"))
    main(str(run))
    assert {path.name for path in (run / "plots").glob("*.png")} == RUN_PLOTS
    main(str(run / "model.safetensors"), data=str(face_folder), out=str(tmp_path / "elsewhere"))
    assert {path.name for path in (tmp_path / "elsewhere").glob("*.png")} == DATA_PLOTS | {EXPLAINED}
    capsys.readouterr()


def test_evaluate_writes_the_data_plots(seed_model_file, face_folder, tmp_path, capsys):
    from fer_fastai.evaluate import main as evaluate

    evaluate(str(seed_model_file), data=str(face_folder), plots=str(tmp_path / "plots"))
    assert f"wrote {len(DATA_PLOTS) + 1} plots" in capsys.readouterr().out
    assert {path.name for path in (tmp_path / "plots").glob("*.png")} == DATA_PLOTS | {EXPLAINED}


def test_cli_errors(tmp_path, seed_model_file, capsys):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(SystemExit):
        main(str(tmp_path / "not_a_run"))
    assert "has no model.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(str(seed_model_file))
    assert "pass --data" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "photos" / "a.png")
    with pytest.raises(SystemExit):
        main(str(seed_model_file), data=str(tmp_path / "photos"))
    assert "has no labels" in capsys.readouterr().err


def test_lr_find_plot(tmp_path):
    lrs = np.geomspace(1e-7, 10, 100)
    losses = 2 - np.exp(-((np.log10(lrs) + 3) ** 2)) + np.where(lrs > 1e-1, 3, 0)
    suggestions = {"valley": 2e-4, "minimum": 1e-4, "steep": 5e-4}
    assert_png(plot_lr_find(lrs, losses, suggestions, "valley", tmp_path / "lr_find.png"))
