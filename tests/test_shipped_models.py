"""The shipped models are what their cards say: test scores (slow: needs ../shared/fer2013), the ensemble's gain."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from export.to_onnx import DEFAULT_DATA
from fer_fastai.data import FaceSet
from fer_fastai.evaluate import load_eval_data, predict_faces
from fer_fastai.predict import load_predictor

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SHIPPED = sorted(path for path in ARTIFACTS.glob("*.onnx") if not path.name.endswith(".int8.onnx"))


@cache
def real_test_faces() -> FaceSet:
    """The real test split, decoded once for all the shipped files."""
    return load_eval_data(DEFAULT_DATA, "test").faces


def accuracy_on_real_test(path: Path) -> float:
    faces = real_test_faces()
    probs = predict_faces(load_predictor(path), faces).probs
    return float((probs.argmax(axis=1) == faces.labels).mean())


@pytest.mark.slow
@pytest.mark.parametrize("onnx_path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_onnx_scores_what_its_card_says(onnx_path: Path):
    if not DEFAULT_DATA.is_dir():
        pytest.skip(f"needs {DEFAULT_DATA}")
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert round(accuracy_on_real_test(onnx_path), 4) == card["metrics"]["test_accuracy"]
    int8 = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    if int8.is_file():
        assert accuracy_on_real_test(int8) >= card["metrics"]["test_accuracy"] - 0.005


def test_shipped_ensemble_beats_each_member_on_valid_and_test():
    card = json.loads((ARTIFACTS / "fer_ensemble.json").read_text())
    for member in card["members"]:
        for split in ("valid", "test"):
            assert card["metrics"][f"{split}_accuracy"] > member["metrics"][f"{split}_accuracy"]
