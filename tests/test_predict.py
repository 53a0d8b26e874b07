"""Predictors: ONNX and Torch agree, labels come from the model, ONNX needs no torch, bad input is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS
from fer_fastai.model_io import load_card
from fer_fastai.predict import CPU_ROWS_PER_PASS, OnnxPredictor, TorchPredictor, check_batch, load_predictor


@pytest.fixture(scope="module")
def onnx_file(seed_onnx_file) -> Path:
    return seed_onnx_file


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 48, 48), dtype=np.float32)


def test_onnx_predictor_and_card_views_import_neither_torch_nor_fastai(onnx_file):
    # torch and fastai are made unimportable: any import of them, direct or indirect, fails the run.
    script = f"""
import json, sys
sys.modules["torch"] = None
sys.modules["fastai"] = None
import numpy as np
from fer_fastai.predict import OnnxPredictor, load_predictor
from fer_fastai.preprocess import pixels_to_input
from fer_fastai.views import member_mirrors, view_count  # the demo names an ensemble's views with these
predictor = load_predictor({str(onnx_file)!r})
probs = predictor.predict_proba(pixels_to_input(np.full((2, 48, 48), 128, np.uint8)))
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "fastai", "fastcore") and sys.modules[name])
print(json.dumps({{"backend": predictor.backend, "probs": probs.tolist(), "loaded": loaded}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["backend"] == "onnx" and output["loaded"] == []
    expected = OnnxPredictor(onnx_file).predict_proba(np.full((2, 1, 48, 48), 128 / 255, np.float32))
    np.testing.assert_allclose(output["probs"], expected, atol=1e-6)


def test_labels_and_card_come_from_the_onnx_file(onnx_file, seed_model_file):
    predictor = OnnxPredictor(onnx_file)
    card = load_card(seed_model_file)
    assert predictor.labels == LABELS
    assert predictor.card.arch == "seed" and predictor.card.metrics == card.metrics
    assert predictor.temperature == 1.0
    assert TorchPredictor.from_file(seed_model_file).labels == LABELS


def test_backends_agree(onnx_file, seed_model_file):
    batch = faces(9)
    onnx_predictor, torch_predictor = load_predictor(onnx_file), load_predictor(seed_model_file)
    assert (onnx_predictor.backend, torch_predictor.backend) == ("onnx", "torch")
    np.testing.assert_allclose(onnx_predictor.predict_logits(batch), torch_predictor.predict_logits(batch), atol=1e-4, rtol=0)
    probs = onnx_predictor.predict_proba(batch)
    np.testing.assert_allclose(probs, torch_predictor.predict_proba(batch), atol=1e-6, rtol=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_load_predictor_picks_the_backend_asked_for(onnx_file, seed_model_file, tmp_path):
    assert load_predictor(seed_model_file, backend="onnx").backend == "onnx"  # finds model.onnx beside it
    assert load_predictor(onnx_file, backend="torch").backend == "torch"
    for source, name in ((seed_model_file, "model.safetensors"), (seed_model_file.with_suffix(".json"), "model.json"),
                         (onnx_file, "model.int8.onnx")):  # the fp32 file stands in for an int8 one: only names matter
        shutil.copy(source, tmp_path / name)
    assert load_predictor(tmp_path / "model.int8.onnx", backend="torch").backend == "torch"  # → model.safetensors
    with pytest.raises(FerError, match="unknown backend 'tflite'"):
        load_predictor(onnx_file, backend="tflite")


def test_onnx_predictor_chunks_large_batches_and_accepts_empty_ones(onnx_file):
    batch = faces(10, seed=3)
    whole = OnnxPredictor(onnx_file).predict_proba(batch)
    np.testing.assert_allclose(OnnxPredictor(onnx_file, batch_size=4).predict_proba(batch), whole, atol=1e-6)
    assert OnnxPredictor(onnx_file).predict_proba(faces(0)).shape == (0, 7)


def test_torch_predictor_runs_small_cpu_passes_with_the_same_answers(seed_model_file):
    batch = faces(150, seed=4)
    predictor = TorchPredictor.from_file(seed_model_file)
    assert predictor.batch_size == CPU_ROWS_PER_PASS  # one network: one row per face
    whole = TorchPredictor.from_file(seed_model_file)
    whole.batch_size = len(batch)
    np.testing.assert_allclose(predictor.predict_proba(batch), whole.predict_proba(batch), atol=1e-6)
    assert predictor.predict_proba(faces(0)).shape == (0, 7)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("batch, message", [
    (np.zeros((2, 1, 48, 48), np.uint8), "got dtype uint8; use pixels / 255"),
    (np.zeros((2, 1, 48, 48), np.float64), r"got dtype float64; use array\.astype\(np\.float32\)"),
    (np.zeros((48, 48), np.float32), r"got \[48, 48\]; for one image use preprocess.pixels_to_input"),
    (np.zeros((2, 3, 48, 48), np.float32), r"shape \[N, 1, 48, 48\], got \[2, 3, 48, 48\]"),
    (np.zeros((2, 1, 64, 64), np.float32), r"got \[2, 1, 64, 64\]$"),
    (np.full((2, 1, 48, 48), 255.0, np.float32), "values in \\[0, 1\\], got min 255 max 255; divide 0-255 pixels by 255"),
    (np.full((1, 1, 48, 48), np.nan, np.float32), "got no finite values and NaN/inf$"),
    ([[0.0]], "expected a numpy array, got list"),
])
def test_bad_batches_are_refused_clearly(onnx_file, seed_model_file, backend, batch, message):
    predictor = load_predictor(onnx_file if backend == "onnx" else seed_model_file)
    with pytest.raises(FerError, match=message):
        predictor.predict_proba(batch)


def test_check_batch_allows_rounding_at_the_edges():
    batch = np.zeros((1, 1, 48, 48), np.float32)
    batch[0, 0, 0, :2] = (-1e-6, 1 + 1e-6)
    assert check_batch(batch) is not None


def foreign_model(path: Path, input_name: str = "x") -> Path:
    """A valid ONNX file that is not a fer-fastai export (one Identity node)."""
    graph = helper.make_graph([helper.make_node("Identity", [input_name], ["y"])], "foreign",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", 1, 48, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 48, 48])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_bad_onnx_files_are_refused_clearly(onnx_file, tmp_path):
    with pytest.raises(FerError, match="no such ONNX file"):
        OnnxPredictor(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(FerError, match="not a loadable ONNX model"):
        OnnxPredictor(tmp_path / "garbage.onnx")
    with pytest.raises(FerError, match=r"expected one float input 'image'.*\('x'"):
        OnnxPredictor(foreign_model(tmp_path / "foreign.onnx"))
    with pytest.raises(FerError, match=r"expected outputs \['logits', 'probs'\], found \['y'\]"):
        OnnxPredictor(foreign_model(tmp_path / "foreign_image.onnx", "image"))
    stripped = onnx.load(str(onnx_file))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "stripped.onnx"))
    with pytest.raises(FerError, match="no 'labels' in the ONNX metadata"):
        OnnxPredictor(tmp_path / "stripped.onnx")
    stripped.metadata_props.add(key="labels", value="angry,happy")
    onnx.save(stripped, str(tmp_path / "bad_labels.onnx"))
    with pytest.raises(FerError, match="metadata 'labels' must be a JSON list of class names, got 'angry,happy'"):
        OnnxPredictor(tmp_path / "bad_labels.onnx")
