"""Temperature scaling: the fit finds the NLL minimum, never changes predictions, and reaches the model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_fastai.calibrate import (TEMPERATURE_RANGE, calibrate_model_file, calibration_scores, fit_temperature, main,
                                  nll)
from fer_fastai.data import load_splits, validation_faces
from fer_fastai.errors import FerError
from fer_fastai.recipes import recipe_from_dict


def sampled_logits(temperature: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 7))
    scaled = np.exp(logits / temperature - (logits / temperature).max(axis=1, keepdims=True))
    probs = scaled / scaled.sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(7, p=p) for p in probs])
    return logits, targets


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    logits, targets = sampled_logits(true_temperature)
    assert fit_temperature(logits, targets) == pytest.approx(true_temperature, rel=0.08)


def test_fitted_temperature_is_the_nll_minimum():
    logits, targets = sampled_logits(1.7, seed=1)
    fitted = fit_temperature(logits, targets)
    grid = np.geomspace(0.3, 8, 400)
    best_on_grid = grid[np.argmin([nll(logits, targets, t) for t in grid])]
    assert nll(logits, targets, fitted) <= nll(logits, targets, best_on_grid) + 1e-9
    assert fitted == pytest.approx(best_on_grid, rel=0.01)


def test_scaling_lowers_ece_and_nll_of_an_overconfident_model_but_keeps_predictions():
    logits, targets = sampled_logits(2.0, seed=2)  # the model's logits are twice too sharp
    temperature = fit_temperature(logits, targets)
    scores = calibration_scores(logits, targets, temperature)
    assert scores["n"] == len(targets)
    assert scores["ece_after"] < scores["ece_before"] / 2
    assert scores["nll_after"] < scores["nll_before"]
    assert np.array_equal((logits / temperature).argmax(axis=1), logits.argmax(axis=1))


def test_separable_logits_stop_at_the_range_edge_and_empty_data_is_an_error():
    logits = np.eye(7)[np.arange(70) % 7] * 5
    assert fit_temperature(logits, np.arange(70) % 7) == TEMPERATURE_RANGE[0]
    with pytest.raises(FerError, match="empty validation split"):
        fit_temperature(np.zeros((0, 7)), np.zeros(0, dtype=int))


def test_validation_faces_are_the_ones_training_held_out(face_folder):
    from fer_fastai.data import make_dataloaders

    splits = load_splits(face_folder)
    dls = make_dataloaders(splits, bs=8, valid_pct=0.25, seed=3, device="cpu")
    expected = [splits["train"].sources[i] for i in dls.split_items["valid"]]
    for recipe in ({"valid_pct": 0.25, "seed": 9, "split_seed": 3}, {"valid_pct": 0.25, "seed": 3}):  # new card, old card
        recipe = recipe_from_dict({"data": str(face_folder), "out": "", **recipe}, "a card")
        assert list(validation_faces(splits, recipe).sources) == expected
    with pytest.raises(FerError, match="does not record valid_pct and split_seed"):
        validation_faces(splits, None)


def test_calibrate_model_file_stores_temperature_in_the_card_and_is_idempotent(model_with_recipe):
    first = calibrate_model_file(model_with_recipe)
    card = json.loads(model_with_recipe.with_suffix(".json").read_text())
    assert card["temperature"] == first["temperature"] != 1.0
    assert card["calibration"]["valid"]["n"] == 14 and card["calibration"]["test"]["n"] == 21
    assert calibrate_model_file(model_with_recipe)["temperature"] == first["temperature"]  # fitted on raw logits


def test_calibrated_temperature_is_used_by_the_predictor(model_with_recipe):
    from fer_fastai.predict import load_predictor

    temperature = calibrate_model_file(model_with_recipe)["temperature"]
    assert load_predictor(model_with_recipe).temperature == temperature


def test_cli_prints_before_and_after(model_with_recipe, capsys):
    main(str(model_with_recipe))
    out = capsys.readouterr().out
    assert "temperature" in out and "ECE" in out and "→" in out and "test  n=21" in out


def test_cli_refuses_onnx_and_a_card_without_data(tmp_path, seed_model_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(str(tmp_path / "model.onnx"))
    assert exit_info.value.code == 2
    assert "calibrate the .safetensors model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(str(seed_model_file))
    assert "the card does not say which data trained it; pass --data" in capsys.readouterr().err
