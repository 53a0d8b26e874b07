"""ONNX export: contract (checker, I/O, metadata), parity and its failure, temperature, int8, bad input."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import to_onnx
from export.to_onnx import export_graph, export_onnx, parity_failures, parity_report
from fer_fastai import __version__
from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS
from fer_fastai.card import new_card, read_card
from fer_fastai.contract import preprocess_contract
from fer_fastai.model_io import file_sha256, load_card, load_model, save_model
from fer_fastai.models import ARCHS, create_model
from fer_fastai.preprocess import INPUT_DESCRIPTION

# The seed net after export: BatchNorm folded into Conv, Dropout gone, Normalize kept as Sub/Div
# (it cannot be folded into the first Conv: zero padding of the normalised input ≠ of the raw one).
SEED_GRAPH = ["Sub", "Div"] + ["Conv", "Relu", "MaxPool"] * 4 + ["Reshape", "Gemm", "Relu", "Gemm", "Softmax"]


@pytest.fixture(scope="module")
def exported(seed_model_file, face_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "seed.onnx"
    return out, export_onnx(seed_model_file, out, data=face_folder)


def copy_model(weights: Path, folder: Path, **card_changes) -> Path:
    """A copy of a model (weights + card) in `folder`, with some card fields changed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights.name
    shutil.copy(weights, target)
    card = {**json.loads(weights.with_suffix(".json").read_text()), **card_changes}
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


def run_session(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(["logits", "probs"], {"image": images}))


def test_export_passes_checker_with_contract_io(exported):
    path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in model.graph.input] == [("image", ["batch", 1, 48, 48])]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("logits", ["batch", 7]), ("probs", ["batch", 7])]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_metadata_describes_the_model(exported, seed_model_file):
    path, _ = exported
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    card = load_card(seed_model_file)
    assert metadata == {
        "labels": json.dumps(list(LABELS)), "input": INPUT_DESCRIPTION, "arch": "seed",
        "metrics": json.dumps(card.metrics), "source_weights_sha256": file_sha256(seed_model_file),
        "fer_fastai_version": __version__, "temperature": "1.0", "preprocess": json.dumps(preprocess_contract(card))}


def test_the_card_with_the_photo_contract_is_written_beside_the_file(exported, seed_model_file):
    """Runtimes that cannot read ONNX metadata (onnxruntime-node, -web) read the card beside the file."""
    path, _ = exported
    beside = read_card(path)
    assert beside.preprocess == preprocess_contract(load_card(seed_model_file))
    # (another test may have exported beside the fixture's weights, which writes the contract into its card too)
    assert beside.replace(preprocess=None) == load_card(seed_model_file).replace(preprocess=None)


def test_graph_is_folded_and_minimal(exported):
    path, report = exported
    assert [node.op_type for node in onnx.load(str(path)).graph.node] == SEED_GRAPH
    assert report["graph"]["nodes"] == len(SEED_GRAPH) and report["graph"]["exporter"] == "dynamo"


def test_parity_report_is_written_beside_the_model(exported, face_folder):
    path, report = exported
    written = json.loads(path.with_suffix(".parity.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["passed"] and written["images"] == 21 and written["argmax_agree"] == 21
    assert written["data"] == f"{face_folder} test split"
    assert 0 <= written["max_abs_diff_logits"] <= 1e-4 and written["batch_sizes"] == [64, 1]
    assert written["onnx_sha256"] == file_sha256(path)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_parity_at_batch_size(exported, seed_model_file, batch_size):
    path, _ = exported
    model, _ = load_model(seed_model_file)
    images = np.random.default_rng(batch_size).random((batch_size, 1, 48, 48), dtype=np.float32)
    logits, probs = run_session(path, images)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images))
    assert logits.shape == (batch_size, 7)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs, torch.softmax(expected, 1).numpy(), atol=1e-6, rtol=0)
    assert (logits.argmax(1) == expected.numpy().argmax(1)).all()


def perturbed(model: torch.nn.Module, class_shift: np.ndarray) -> torch.nn.Module:
    model = copy.deepcopy(model)
    with torch.no_grad():
        model[-1].bias += torch.as_tensor(class_shift, dtype=torch.float32)
    return model


def test_export_of_a_perturbed_graph_fails_and_leaves_nothing(seed_model_file, face_folder, tmp_path, monkeypatch):
    # The ONNX graph gets 1e-3 added to every logit: argmax is unchanged, only the tolerance can catch it.
    monkeypatch.setattr(to_onnx, "export_graph",
                        lambda model, *args: export_graph(perturbed(model, np.full(7, 1e-3)), *args))
    with pytest.raises(FerError, match=r"parity check failed \(max \|Δlogits\| 0\.001 > 0\.0001\)"):
        export_onnx(seed_model_file, tmp_path / "bad.onnx", data=face_folder)
    assert list(tmp_path.iterdir()) == []


def test_parity_report_counts_argmax_flips(exported, seed_model_file, face_folder):
    path, _ = exported
    model, _ = load_model(seed_model_file)
    images = np.random.default_rng(0).random((32, 1, 48, 48), dtype=np.float32)
    reference = run_session(path, images)[0].argmax(1)
    shift = np.zeros(7)
    shift[(reference[0] + 1) % 7] = 1e3  # one class wins everywhere, so every other image's argmax flips
    report = parity_report(perturbed(model, shift), path, images)
    assert report["argmax_differ"] == int((reference != (reference[0] + 1) % 7).sum()) > 0
    assert not report["passed"]


@pytest.mark.parametrize("differences, message", [
    ({"max_abs_diff_logits": 0.0, "argmax_differ": 1}, "argmax differs on 1 of 10 images"),
    ({"max_abs_diff_logits": 2e-4, "argmax_differ": 0}, "max |Δlogits| 0.0002 > 0.0001"),
    ({"max_abs_diff_logits": float("nan"), "argmax_differ": 0}, "max |Δlogits| nan > 0.0001"),
    ({"max_abs_diff_probs": 0.03}, "max |Δprobs| 0.03 > 0.0001"),
])
def test_parity_failures_name_the_reason(differences, message):
    passing = {"images": 10, "max_abs_diff_logits": 1e-4, "max_abs_diff_probs": 1e-4, "argmax_differ": 0}
    assert parity_failures({**passing, **differences}) == [message]
    assert parity_failures(passing) == []


def test_export_with_a_wrong_probs_head_fails(seed_model_file, face_folder, tmp_path, monkeypatch):
    weights = copy_model(seed_model_file, tmp_path / "calibrated", temperature=3.0)
    monkeypatch.setattr(to_onnx, "export_graph", lambda model, temperature, *args: export_graph(model, 1.0, *args))
    with pytest.raises(FerError, match=r"parity check failed \(max \|Δprobs\| .* > 0\.0001\)"):
        export_onnx(weights, tmp_path / "lost-temperature.onnx", data=face_folder)
    assert not (tmp_path / "lost-temperature.onnx").exists()


def test_temperature_scales_probs_not_logits(seed_model_file, face_folder, tmp_path):
    weights = copy_model(seed_model_file, tmp_path / "calibrated", temperature=2.0)
    out = tmp_path / "calibrated.onnx"
    report = export_onnx(weights, out, data=face_folder)
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    images = np.random.default_rng(1).random((6, 1, 48, 48), dtype=np.float32)
    logits, probs = run_session(out, images)
    model, _ = load_model(weights)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(probs, torch.softmax(expected / 2.0, 1).numpy(), atol=1e-6, rtol=0)
    assert metadata["temperature"] == "2.0" and report["temperature"] == 2.0
    assert report["graph"]["nodes"] == len(SEED_GRAPH) + 1  # one Div before the Softmax


@pytest.mark.parametrize("arch", [name for name in ARCHS if name != "seed"])
def test_other_architectures_export_with_parity(arch, face_folder, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / arch / "model.safetensors"
    weights.parent.mkdir()
    save_model(create_model(arch).eval(), weights, new_card(arch, {}))
    report = export_onnx(weights, tmp_path / f"{arch}.onnx", data=face_folder)
    assert report["passed"] and report["images"] == 21
    assert not {"BatchNormalization", "Dropout", "Identity"} & set(report["graph"]["ops"])


def test_torchscript_exporter_gives_the_same_model(exported, seed_model_file):
    model, _ = load_model(seed_model_file)
    proto = export_graph(model, 1.0, "torchscript")
    ops = [node.op_type for node in proto.graph.node]
    assert ops == [op if op != "Reshape" else "Flatten" for op in SEED_GRAPH]
    images = np.random.default_rng(2).random((5, 1, 48, 48), dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"image": images})[0],
                               run_session(exported[0], images)[0], atol=1e-5, rtol=0)


def test_int8_is_kept_only_when_accuracy_holds(seed_model_file, face_folder, tmp_path, monkeypatch):
    out = tmp_path / "seed.onnx"
    report = export_onnx(seed_model_file, out, data=face_folder, int8=True)
    int8 = report["int8"]
    assert int8["kept"] == (int8["drop_points"] <= 0.5)
    assert (tmp_path / "seed.int8.onnx").exists() == int8["kept"]
    assert int8["test_images"] == 21 and int8["calibration"].startswith("56 images of ")  # all of train: it has fewer than 512
    assert json.loads(out.with_suffix(".parity.json").read_text())["int8"] == int8
    if int8["kept"]:
        metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "seed.int8.onnx")).metadata_props}
        assert json.loads(metadata["labels"]) == list(LABELS) and "quantization" in metadata

    monkeypatch.setattr(to_onnx, "INT8_MAX_DROP_POINTS", float("-inf"))  # nothing can pass, not even an int8 that scores higher
    (tmp_path / "seed.int8.onnx").write_bytes(b"an int8 file from an earlier export")
    report = export_onnx(seed_model_file, out, data=face_folder, int8=True)
    assert not report["int8"]["kept"] and not (tmp_path / "seed.int8.onnx").exists()
    assert report["int8"]["reason"].startswith("accuracy drops")


def test_no_data_falls_back_to_synthetic_images_with_a_warning(exported, seed_model_file, tmp_path, monkeypatch,
                                                              capsys, caplog):
    monkeypatch.setattr(to_onnx, "DEFAULT_DATA", tmp_path / "missing")
    stale = onnx.load(str(exported[0]))  # an int8 file left by an export of other weights
    to_onnx.set_metadata(stale, {"source_weights_sha256": "0" * 64})
    onnx.save(stale, str(tmp_path / "seed.int8.onnx"))
    to_onnx.main(weights=seed_model_file, out=tmp_path / "seed.onnx")
    printed = capsys.readouterr().out
    assert "parity on 256 images (synthetic" in printed and "PASSED" in printed
    assert "synthetic random images, not real faces" in caplog.text
    assert "seed.int8.onnx is from other weights than the new" in caplog.text
    assert (tmp_path / "seed.onnx").is_file() and (tmp_path / "seed.parity.json").is_file()
    with pytest.raises(FerError, match="--int8 needs real images"):
        export_onnx(seed_model_file, tmp_path / "other.onnx", int8=True)


def test_weights_of_another_architecture(seed_model_file, face_folder, tmp_path):
    weights = copy_model(seed_model_file, tmp_path / "m", arch="vgg")
    with pytest.raises(FerError, match="weights do not fit architecture 'vgg'.*another architecture"):
        export_onnx(weights, tmp_path / "m.onnx", data=face_folder)
    assert not (tmp_path / "m.onnx").exists()


def test_card_of_other_weights(seed_model_file, face_folder, tmp_path):
    weights = copy_model(seed_model_file, tmp_path / "m", weights_sha256="0" * 64)
    with pytest.raises(FerError, match="the card belongs to other weights"):
        export_onnx(weights, tmp_path / "m.onnx", data=face_folder)


def test_missing_card(seed_model_file, tmp_path):
    weights = tmp_path / "lonely.safetensors"
    shutil.copy(seed_model_file, weights)
    with pytest.raises(FerError, match="model card lonely.json is missing"):
        export_onnx(weights, tmp_path / "m.onnx")


@pytest.mark.parametrize("out, message", [
    ("no/such/folder/m.onnx", "folder .*no/such/folder does not exist"),
    ("m.pt", "must end in .onnx"),
])
def test_bad_output_path(seed_model_file, tmp_path, out, message):
    with pytest.raises(FerError, match=message):
        export_onnx(seed_model_file, tmp_path / out)


@pytest.mark.parametrize("arguments, message", [
    ({}, "give exactly one of --weights"),
    ({"run": Path("no-such-run")}, "--run no-such-run: no such run folder"),
    ({"weights": Path("lonely.safetensors")}, "model card lonely.json is missing"),
    ({"weights": Path("lonely.safetensors"), "exporter": "magic"}, "unknown exporter 'magic'"),
])
def test_cli_errors_are_one_line(seed_model_file, tmp_path, monkeypatch, capsys, arguments, message):
    shutil.copy(seed_model_file, tmp_path / "lonely.safetensors")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        to_onnx.main(**{"weights": None, **arguments})
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_module_entry_point_reports_one_line(seed_model_file, tmp_path):
    shutil.copy(seed_model_file, tmp_path / "lonely.safetensors")
    result = subprocess.run([sys.executable, "-m", "export.to_onnx", "--weights", "lonely.safetensors"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("error: lonely.safetensors: model card lonely.json is missing beside it; it records "
                             "the architecture, so the weights cannot be used without it\n")


REAL_RUN = Path(__file__).resolve().parents[1] / "runs" / "seed-fastai-3ep" / "model.safetensors"


@pytest.mark.slow
def test_real_run_has_parity_on_the_real_test_split(tmp_path):
    if not (REAL_RUN.is_file() and to_onnx.DEFAULT_DATA.is_dir()):
        pytest.skip(f"needs {REAL_RUN} and {to_onnx.DEFAULT_DATA}")
    report = export_onnx(REAL_RUN, tmp_path / "real.onnx")
    assert report["passed"] and report["images"] == 3589 and report["argmax_differ"] == 0
    assert report["max_abs_diff_logits"] <= 1e-4 and report["accuracy_onnx"] == report["accuracy_torch"]
