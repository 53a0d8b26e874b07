"""Fail loudly on broken models and data (issue #30): every consumer checks a card against its weights,
refuses non-finite weights and answers, and says what it did with odd data instead of doing it silently."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.to_onnx import export_onnx
from fer_fastai.card import new_card
from fer_fastai.data import load_splits, stratified_split
from fer_fastai.ensemble import build_ensemble
from fer_fastai.errors import FerError
from fer_fastai.evaluate import main as evaluate
from fer_fastai.faces import detect_emotions
from fer_fastai.model_io import load_model, save_model
from fer_fastai.models import create_model
from fer_fastai.predict import ONNX_FACES_PER_RUN, OnnxPredictor, load_predictor

from conftest import write_folder_dataset


def copy_model(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(source.with_suffix(suffix), folder / f"model{suffix}")
    return folder / "model.safetensors"


def edit_card(weights: Path, **changes) -> None:
    card_file = weights.with_suffix(".json")
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), **changes}))


def one_line_error(capsys, *args, **kwargs) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.__wrapped__(*args, **kwargs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("temperature", [-1, 0, "NaN", "warm"])
def test_a_card_temperature_that_is_not_a_positive_number_is_refused(seed_model_file, face_folder, tmp_path,
                                                                     temperature, backend):
    weights = copy_model(seed_model_file, tmp_path / "model")
    edit_card(weights, temperature=temperature)
    with pytest.raises(FerError, match="temperature must be a finite number above 0"):
        load_predictor(weights)
    if backend == "onnx":  # an ONNX file with such a temperature in its metadata
        export_onnx(seed_model_file, tmp_path / "model.onnx", data=face_folder)
        proto = onnx.load(str(tmp_path / "model.onnx"))
        next(p for p in proto.metadata_props if p.key == "temperature").value = str(temperature)
        onnx.save(proto, str(tmp_path / "model.onnx"))
        with pytest.raises(FerError, match="temperature must be a finite number above 0"):
            OnnxPredictor(tmp_path / "model.onnx")


def test_another_runs_card_beside_the_weights_is_refused_by_every_consumer(seed_model_file, trained_run, face_folder,
                                                                           tmp_path, capsys):
    weights = copy_model(seed_model_file, tmp_path / "model")
    shutil.copy(trained_run / "model.json", weights.with_suffix(".json"))  # same architecture, other weights
    with pytest.raises(FerError, match="the card belongs to other weights"):
        load_model(weights)
    with pytest.raises(FerError, match="the card belongs to other weights"):
        load_predictor(weights)
    assert "the card belongs to other weights" in one_line_error(capsys, str(weights), data=str(face_folder))


def test_weights_with_nan_are_refused(tmp_path, face_folder, capsys):
    model = create_model("seed")
    with torch.no_grad():
        model[-1].weight[0, 0] = float("nan")
    weights = tmp_path / "model.safetensors"
    save_model(model, weights, new_card("seed", {}))  # a consistent card: the weights themselves are broken
    with pytest.raises(FerError, match=r"hold NaN or inf .*training diverged"):
        load_model(weights)
    assert "hold NaN or inf" in one_line_error(capsys, str(weights), data=str(face_folder))
    with pytest.raises(FerError, match="hold NaN or inf"):
        export_onnx(weights, tmp_path / "model.onnx", data=face_folder)
    assert not (tmp_path / "model.onnx").exists()


def test_an_onnx_file_that_answers_nan_is_refused(seed_model_file, face_folder, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    export_onnx(seed_model_file, path, data=face_folder)
    proto = onnx.load(str(path))
    weight = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4)
    broken = numpy_helper.to_array(weight).copy()
    broken[...] = np.nan
    weight.CopyFrom(numpy_helper.from_array(broken, weight.name))
    onnx.save(proto, str(path))
    with pytest.raises(FerError, match="answered NaN or inf for 3 face"):
        OnnxPredictor(path).predict_proba(np.full((3, 1, 48, 48), 0.5, np.float32))
    assert "answered NaN or inf" in one_line_error(capsys, str(path), data=str(face_folder))


def test_the_onnx_predictor_runs_large_batches_in_bounded_chunks(seed_model_file, face_folder, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(seed_model_file, path, data=face_folder)
    predictor = OnnxPredictor(path)
    assert predictor.batch_size == ONNX_FACES_PER_RUN
    calls = []
    run = predictor.session.run
    predictor.session = type("Counting", (), {"run": lambda self, *args: calls.append(len(args[1]["image"])) or run(*args)})()
    batch = np.random.default_rng(0).random((2 * ONNX_FACES_PER_RUN + 5, 1, 48, 48), dtype=np.float32)
    probs = predictor.predict_proba(batch)
    assert calls == [ONNX_FACES_PER_RUN, ONNX_FACES_PER_RUN, 5] and probs.shape == (len(batch), 7)


def test_the_same_weights_twice_are_not_an_ensemble(trained_run, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(trained_run, twin)
    with pytest.raises(FerError, match="are the same weights .* an ensemble needs different networks"):
        build_ensemble([trained_run / "model.safetensors", twin / "model.safetensors"], tmp_path / "ensemble")
    assert not (tmp_path / "ensemble").exists()


def test_empty_and_missing_class_folders_are_named(tmp_path, caplog):
    root = write_folder_dataset(tmp_path / "data", {"train": 2})
    for file in (root / "train" / "disgust").iterdir():
        file.unlink()  # an empty class folder
    shutil.rmtree(root / "train" / "fear")  # a missing one
    with caplog.at_level(logging.WARNING):
        load_splits(root)
    assert "has no faces of class(es) disgust, fear" in caplog.text


def test_a_validation_share_rounded_far_from_what_was_asked_is_named(caplog):
    labels = np.repeat(np.arange(7), 6)  # 42 faces: every class keeps one face in each split
    with caplog.at_level(logging.WARNING):
        _, valid = stratified_split(labels, 0.001, seed=0)
    assert len(valid) == 7
    assert "--valid-pct 0.001 holds out 7 of 42 faces (16.7%)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        stratified_split(np.repeat(np.arange(7), 100), 0.1, seed=0)
    assert caplog.text == ""


def test_skip_bad_names_what_it_left_out_every_time(tmp_path, caplog):
    root = write_folder_dataset(tmp_path / "data", {"train": 2})
    (root / "train" / "happy" / "broken.png").write_bytes(b"not a png")
    for attempt in ("decoded", "from the cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            splits = load_splits(root, skip_bad=True)
        assert len(splits["train"]) == 14, attempt
        assert "broken.png" in caplog.text and "--skip-bad left out 1 unreadable image(s)" in caplog.text, attempt


def test_a_corrupt_cache_is_named_deleted_and_rebuilt(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("FER_FASTAI_CACHE", str(tmp_path / "cache"))
    root = write_folder_dataset(tmp_path / "data", {"train": 2})
    first = load_splits(root)["train"]
    [cache_file] = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        again = load_splits(root)["train"]
    assert f"the decoded-image cache {cache_file} is unreadable" in caplog.text
    assert np.array_equal(again.pixels, first.pixels) and cache_file.is_file()


@pytest.mark.parametrize("image, message", [
    (None, "expected an image: a file path, bytes, a numpy array or a PIL image, got NoneType"),
    (np.zeros((0, 0, 3), np.uint8), r"the image array is empty \(shape \(0, 0, 3\)\)"),
    (np.zeros(0), r"expected an image array of shape HxW, HxWx3 or HxWx4, got \(0,\)"),
])
def test_detect_emotions_refuses_what_is_not_an_image(seed_model_file, image, message):
    with pytest.raises(FerError, match=message):
        detect_emotions(image, load_predictor(seed_model_file))
