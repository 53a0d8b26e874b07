"""The shipped models are what their cards say: test scores (slow: needs ../shared/fer2013), the ensemble's gain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fer_fastai.evaluate import load_eval_data, predict_faces
from fer_fastai.predict import load_predictor

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "fer2013"
SHIPPED = sorted(path for path in (REPO / "artifacts").glob("*.onnx") if not path.name.endswith(".int8.onnx"))


def test_accuracy(path: Path) -> float:
    faces = load_eval_data(DATA, "test").faces
    probs = predict_faces(load_predictor(path), faces).probs
    return float((probs.argmax(axis=1) == faces.labels).mean())


test_accuracy.__test__ = False  # a helper, not a test


@pytest.mark.slow
@pytest.mark.parametrize("onnx_path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_onnx_scores_what_its_card_says(onnx_path: Path):
    if not DATA.is_dir():
        pytest.skip(f"needs {DATA}")
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert round(test_accuracy(onnx_path), 4) == card["metrics"]["test_accuracy"]
    int8 = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    if int8.is_file():
        assert test_accuracy(int8) >= card["metrics"]["test_accuracy"] - 0.005


def test_shipped_ensemble_beats_each_member_on_valid_and_test():
    card = json.loads((REPO / "artifacts" / "fer_ensemble.json").read_text())
    for member in card["members"]:
        for split in ("valid", "test"):
            assert card["metrics"][f"{split}_accuracy"] > member["metrics"][f"{split}_accuracy"]
