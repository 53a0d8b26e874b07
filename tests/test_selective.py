"""Uncertain, visibly (issue #32): a confidence threshold chosen on valid for a stated accuracy of the sure
answers, stored in the card and the ONNX metadata, returned by the API and shown on the page."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from export.to_onnx import export_onnx
from fer_fastai.calibrate import calibrate_model_file
from fer_fastai.faces import Face, answer_text, detect_emotions
from fer_fastai.labels import LABELS
from fer_fastai.predict import OnnxPredictor, load_predictor
from fer_fastai.selective import choose_threshold, fit_uncertainty, is_uncertain, risk_coverage, selective_scores


def answers(confidences, right) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose top class (always 0) has the given confidence; labels right or wrong as asked."""
    probs = np.array([[c] + [(1 - c) / 6] * 6 for c in confidences])
    return probs, np.array([0 if ok else 1 for ok in right])


def test_the_threshold_is_the_lowest_confidence_whose_answers_reach_the_target():
    probs, labels = answers([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [True, True, True, False, True, False])
    curve = risk_coverage(probs, labels)
    assert curve["accuracy"].tolist() == pytest.approx([1, 1, 1, 0.75, 0.8, 4 / 6])
    assert choose_threshold(probs, labels, target=0.8) == 0.5  # 4 of the top 5 are right
    assert choose_threshold(probs, labels, target=0.9) == 0.7
    assert choose_threshold(probs, labels, target=1.01) == 1.0  # never reached: everything is uncertain
    assert selective_scores(probs, labels, 0.5) == {"n": 6, "coverage": round(5 / 6, 4), "accuracy": 0.8}
    assert is_uncertain(probs, 0.5).tolist() == [False] * 5 + [True]
    assert not is_uncertain(probs, None).any()


def test_tied_confidences_are_answered_or_doubted_together():
    probs, labels = answers([0.9, 0.6, 0.6, 0.6], [True, True, False, False])
    assert choose_threshold(probs, labels, target=0.6) == 0.9  # 2 of the 3 at 0.6 are wrong: none of them pass


def test_fit_reports_valid_and_the_honest_test_numbers():
    probs, labels = answers([0.9, 0.8, 0.3], [True, True, False])
    fitted = fit_uncertainty(probs, labels, *answers([0.85, 0.2], [False, True]), target=0.8)
    assert fitted["threshold"] == 0.8 and fitted["valid"]["coverage"] == round(2 / 3, 4)
    assert fitted["test"] == {"n": 2, "coverage": 0.5, "accuracy": 0.0}


def test_calibration_stores_the_threshold_and_every_consumer_reads_it(model_with_recipe, face_folder, tmp_path):
    result = calibrate_model_file(model_with_recipe)
    card = json.loads(model_with_recipe.with_suffix(".json").read_text())
    assert card["uncertainty"]["threshold"] == result["uncertainty"]["threshold"]
    assert card["uncertainty"]["target_accuracy"] == 0.8 and {"valid", "test"} <= set(card["uncertainty"])
    threshold = card["uncertainty"]["threshold"]
    assert load_predictor(model_with_recipe).threshold == threshold
    export_onnx(model_with_recipe, tmp_path / "model.onnx", data=face_folder)
    assert OnnxPredictor(tmp_path / "model.onnx").threshold == threshold


def test_the_api_marks_uncertain_answers_and_the_page_names_the_runner_up(seed_model_file):
    predictor = load_predictor(seed_model_file)
    predictor.threshold = 1.0  # nothing is sure
    [face] = detect_emotions(Image.new("L", (48, 48), 120), predictor)
    assert face["uncertain"] is True and sorted(face) == ["box", "emotions", "uncertain"]
    probs = np.array([0.05, 0.02, 0.10, 0.08, 0.31, 0.15, 0.29])
    assert answer_text(Face((0, 0, 1, 1), probs, uncertain=True), LABELS) == "uncertain: sad 31% / neutral 29%"
    assert answer_text(Face((0, 0, 1, 1), probs), LABELS) == "sad 31%"
