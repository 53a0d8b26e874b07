"""The photo contract and its conformance vectors: Python reproduces the shipped vectors exactly, the written
contract is precise enough to port (a port of its words equals Pillow), the shipped files carry it, and
the check catches a port that is off."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from export.stamp_contract import stamp_contract
from fer_fastai.card import read_card
from fer_fastai.conformance import VECTORS_FILE, check_vectors, compact_json, read_vectors, write_vectors
from fer_fastai.contract import PILLOW_PRECISION_BITS, preprocess_contract
from fer_fastai.errors import FerError
from fer_fastai.faces import PHOTO
from fer_fastai.hashing import file_sha256
from fer_fastai.paths import DEFAULT_MODEL, DEFAULT_MODEL_NAME
from fer_fastai.predict import load_predictor

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
VECTOR_FOLDERS = sorted(path.parent for path in (ARTIFACTS / "conformance").glob(f"*/{VECTORS_FILE}"))
SHIPPED_ONNX = sorted(ARTIFACTS.glob("*.onnx"))


@pytest.mark.parametrize("folder", VECTOR_FOLDERS, ids=lambda folder: folder.name)
def test_python_reproduces_the_shipped_vectors(folder: Path):
    result = check_vectors(folder)
    assert result["faces"] >= 7 and result["max_abs_diff_probs"] <= 1e-5


def test_the_default_model_has_vectors_for_its_current_file():
    vectors = read_vectors(ARTIFACTS / "conformance" / DEFAULT_MODEL_NAME)
    assert vectors["model"]["sha256"] == file_sha256(DEFAULT_MODEL), \
        f"re-run python -m fer_fastai.conformance --model {DEFAULT_MODEL.relative_to(ARTIFACTS.parent)} --out artifacts/conformance/{DEFAULT_MODEL_NAME}"


@pytest.mark.parametrize("folder", VECTOR_FOLDERS, ids=lambda folder: folder.name)
def test_the_vectors_reach_every_rule_of_the_contract(folder: Path):
    cases = read_vectors(folder)["cases"]
    assert {case["mode"] for case in cases} == {"crop", "faces", "no face"}
    photos = [case for case in cases if case["mode"] == "faces"]
    assert any(not case["found_before_retry"] for case in photos), "no face found only on the padded retry"
    assert any(max(case["size"]) > PHOTO.max_side for case in photos), "no photo over the detector's max_side"
    assert any("gray" in case for case in photos), "no lossless grayscale for a JPEG"
    assert sum(path.stat().st_size for path in folder.iterdir()) < 1_000_000


@pytest.mark.parametrize("onnx_path", SHIPPED_ONNX, ids=lambda path: path.name)
def test_every_shipped_file_and_its_card_carry_todays_contract(onnx_path: Path):
    card = read_card(onnx_path)
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert json.loads(metadata["preprocess"]) == preprocess_contract(card) == card.preprocess, \
        f"re-run python -m export.stamp_contract artifacts/{onnx_path.name.replace('.int8', '')}"
    assert load_predictor(onnx_path).card.preprocess == card.preprocess


def pillow_bilinear_port(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """The contract's "resize" written out as a port would, from its words alone (no Pillow)."""
    def one_axis(rows: np.ndarray, size: int) -> np.ndarray:  # resizes the last axis
        if rows.shape[-1] == size:
            return rows
        scale = rows.shape[-1] / size
        filterscale = max(scale, 1.0)
        out = np.empty(rows.shape[:-1] + (size,), np.uint8)
        for i in range(size):
            center = (i + 0.5) * scale
            xmin = max(math.trunc(center - filterscale + 0.5), 0)
            xmax = min(math.trunc(center + filterscale + 0.5), rows.shape[-1])
            weights = [max(0.0, 1.0 - abs((xmin + k - center + 0.5) / filterscale)) for k in range(xmax - xmin)]
            weights = [w / sum(weights) for w in weights] if sum(weights) else weights
            fixed = [math.trunc(w * (1 << PILLOW_PRECISION_BITS) + (0.5 if w >= 0 else -0.5)) for w in weights]
            total = np.full(rows.shape[:-1], 1 << (PILLOW_PRECISION_BITS - 1), np.int64)
            for k, w in enumerate(fixed):
                total += w * rows[..., xmin + k].astype(np.int64)
            out[..., i] = np.clip(total >> PILLOW_PRECISION_BITS, 0, 255)
        return out

    return one_axis(one_axis(pixels, width).T, height).T


@pytest.mark.parametrize("seed", range(4))
def test_the_contracts_resize_in_words_is_pillows_bilinear(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(12):
        height, width = rng.integers(1, 260, 2)
        out_width, out_height = (48, 48) if rng.random() < 0.5 else rng.integers(1, 120, 2)
        pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(pixels).resize((int(out_width), int(out_height)), Image.Resampling.BILINEAR))
        assert np.array_equal(pillow_bilinear_port(pixels, int(out_width), int(out_height)), expected), \
            (height, width, out_width, out_height)


def test_the_contracts_grayscale_formula_is_pillows_luma():
    rgb = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    r, g, b = (rgb[..., channel].astype(np.int64) for channel in range(3))
    assert preprocess_contract(read_card(DEFAULT_MODEL))["grayscale"]["formula"] == \
        "L = (19595 * R + 38470 * G + 7471 * B + 32768) >> 16"
    assert np.array_equal((19595 * r + 38470 * g + 7471 * b + 32768) >> 16, np.asarray(Image.fromarray(rgb).convert("L")))


def test_an_ensembles_contract_says_its_logits_are_log_probabilities():
    ensemble = preprocess_contract(read_card(ARTIFACTS / "fer_ensemble.onnx"))
    network = preprocess_contract(read_card(ARTIFACTS / "fer_vgg.onnx"))
    assert "log-probabilities" in ensemble["outputs"]["logits"] and "raw logits" in network["outputs"]["logits"]
    assert ensemble["temperature"] == read_card(ARTIFACTS / "fer_ensemble.onnx").temperature


@pytest.fixture(scope="module")
def student_vectors(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vectors") / "fer_student"
    out.mkdir()
    write_vectors(ARTIFACTS / "fer_student.onnx", out)
    return out


def test_the_generator_writes_what_was_shipped(student_vectors: Path):
    shipped = ARTIFACTS / "conformance" / "fer_student"
    assert sorted(path.name for path in student_vectors.iterdir()) == sorted(path.name for path in shipped.iterdir())
    written, expected = read_vectors(student_vectors), read_vectors(shipped)
    assert written["cases"] == expected["cases"] and written["contract"] == expected["contract"]
    assert written["model"]["path"] != expected["model"]["path"]  # relative to the folder it is in


@pytest.mark.parametrize("tamper, message", [
    (lambda case: case["faces"][0]["box"].__setitem__(0, case["faces"][0]["box"][0] + 1), "boxes"),
    (lambda case: case["faces"][0]["crop"][10].__setitem__(10, (case["faces"][0]["crop"][10][10] + 1) % 256), "crop differs"),
    (lambda case: case["faces"][0]["probs"].__setitem__(3, case["faces"][0]["probs"][3] + 2e-5), "differ by 2.0"),
    (lambda case: case.__setitem__("mode", "no face"), "size/mode"),
])
def test_the_check_catches_a_port_that_is_off(student_vectors: Path, tmp_path: Path, tamper, message):
    folder = tmp_path / "tampered"
    shutil.copytree(student_vectors, folder)
    vectors = read_vectors(folder)
    vectors["model"]["path"] = str(ARTIFACTS / "fer_student.onnx")
    tamper(next(case for case in vectors["cases"] if case["mode"] == "faces"))
    (folder / VECTORS_FILE).write_text(compact_json(vectors))
    with pytest.raises(FerError, match=message):
        check_vectors(folder)


def test_compact_json_keeps_the_values():
    data = {"crop": [[1, 2, 3], [4, 5, 6]], "probs": [0.1, -2e-05, 3.5e+00], "name": "a, b", "empty": []}
    assert json.loads(compact_json(data)) == data and '"crop": [\n    [1, 2, 3],' in compact_json(data)


@pytest.mark.parametrize("arguments, message", [
    ([], "give --model M.onnx --out FOLDER"),
    (["--check", "no-such-folder"], "no-such-folder: no vectors.json"),
])
def test_cli_errors_are_one_line(tmp_path: Path, arguments, message):
    result = subprocess.run([sys.executable, "-m", "fer_fastai.conformance", *arguments], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_stamping_adds_the_contract_and_leaves_the_graph(tmp_path: Path):
    for path in ARTIFACTS.glob("fer_seed.*"):
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    for name in ("fer_seed.onnx", "fer_seed.int8.onnx"):  # as exported before the contract existed
        proto = onnx.load(str(tmp_path / name))
        kept = [p for p in proto.metadata_props if p.key != "preprocess"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        onnx.save(proto, str(tmp_path / name))
    card = json.loads((tmp_path / "fer_seed.json").read_text())
    card.pop("preprocess")
    (tmp_path / "fer_seed.json").write_text(json.dumps(card))
    assert read_card(tmp_path / "fer_seed.onnx").preprocess is None  # an old card still reads

    stamp_contract(tmp_path / "fer_seed.onnx")
    for name in ("fer_seed.onnx", "fer_seed.int8.onnx"):
        stamped, shipped = onnx.load(str(tmp_path / name)), onnx.load(str(ARTIFACTS / name))
        assert stamped.graph.SerializeToString() == shipped.graph.SerializeToString()
        assert {p.key: p.value for p in stamped.metadata_props} == {p.key: p.value for p in shipped.metadata_props}
    assert read_card(tmp_path / "fer_seed.onnx") == read_card(ARTIFACTS / "fer_seed.onnx")
    assert json.loads((tmp_path / "fer_seed.parity.json").read_text())["onnx_sha256"] == file_sha256(tmp_path / "fer_seed.onnx")


def test_stamping_refuses_a_card_that_is_not_the_files(tmp_path: Path):
    for path in ARTIFACTS.glob("fer_seed.*"):
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    card = json.loads((tmp_path / "fer_seed.json").read_text())
    (tmp_path / "fer_seed.json").write_text(json.dumps({**card, "temperature": 2.0}))
    before = file_sha256(tmp_path / "fer_seed.onnx")
    with pytest.raises(FerError, match="differ in temperature; re-export it"):
        stamp_contract(tmp_path / "fer_seed.onnx")
    assert file_sha256(tmp_path / "fer_seed.onnx") == before
    with pytest.raises(FerError, match="give the fp32 NAME.onnx"):
        stamp_contract(tmp_path / "fer_seed.int8.onnx")
