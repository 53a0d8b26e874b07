"""Occlusion heat maps point where the evidence is, for either backend; their pictures, API and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from fer_fastai.card import new_card
from fer_fastai.errors import FerError
from fer_fastai.explain import (OCCLUSION, Occlusion, draw_explained_faces, explain_analysis, explain_emotions,
                                explained_dicts, face_crops, main, occlusion_maps, overlay_analysis, overlay_heatmap)
from fer_fastai.faces import NO_FACE_HINT, analyze, detect_emotions, draw_faces
from fer_fastai.labels import LABELS
from fer_fastai.predict import OnnxPredictor, TorchPredictor, load_predictor

EXAMPLES = Path(__file__).resolve().parents[1] / "demo" / "examples"
TWO_FACES = EXAMPLES / "collins_and_hopper.jpg"
HAPPY = LABELS.index("happy")
GAIN = 3.0  # happy's logit is GAIN x the region's mean brightness (0 to 1); every other logit is 0
QUADRANTS = {"top-left": (0, 0), "top-right": (0, 24), "bottom-left": (24, 0), "bottom-right": (24, 24)}


def region_probs(batch: np.ndarray, top: int, left: int) -> np.ndarray:
    logits = np.zeros((len(batch), len(LABELS)), np.float32)
    logits[:, HAPPY] = GAIN * batch[:, 0, top:top + 24, left:left + 24].mean(axis=(1, 2))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


class RegionPredictor:
    """A fake model whose answer depends on one 24x24 quadrant only: the brighter it is, the happier."""

    backend = "fake"
    labels = LABELS
    card = new_card("seed", {})
    temperature, threshold = 1.0, None

    def __init__(self, top: int = 0, left: int = 0):
        self.top, self.left = top, left
        self.calls: list[int] = []

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return region_probs(batch, self.top, self.left)


def region_onnx(path: Path, top: int = 0, left: int = 0) -> Path:
    """The same model as an ONNX file with fer-fastai's I/O names and metadata, so OnnxPredictor runs it."""
    weights = np.zeros(len(LABELS), np.float32)
    weights[HAPPY] = GAIN
    const = lambda name, values: helper.make_tensor(name, TensorProto.INT64 if name != "w" else TensorProto.FLOAT,
                                                    [len(values)], values)
    nodes = [helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["region"]),
             helper.make_node("ReduceMean", ["region", "mean_axes"], ["mean"], keepdims=0),  # [N, 1]
             helper.make_node("Mul", ["mean", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "region", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 48, 48])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", len(LABELS)]) for name in ("logits", "probs")],
        [const("starts", [top, left]), const("ends", [top + 24, left + 24]), const("axes", [2, 3]),
         const("mean_axes", [2, 3]), const("w", weights.tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"labels": json.dumps(list(LABELS)), "arch": "region", "temperature": "1.0"})
    onnx.save(model, str(path))
    return path


def region_torch(top: int = 0, left: int = 0) -> TorchPredictor:
    import torch

    class RegionNet(torch.nn.Module):
        def forward(self, image):
            logits = torch.zeros(len(image), len(LABELS))
            logits[:, HAPPY] = GAIN * image[:, 0, top:top + 24, left:left + 24].mean(dim=(1, 2))
            return logits

    return TorchPredictor(RegionNet(), new_card("seed", {}))


def faces_bright_in(top: int, left: int, n: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 [n, 48, 48]: dark noisy faces with one bright quadrant."""
    pixels = np.random.default_rng(seed).integers(20, 60, (n, 48, 48))
    pixels[:, top:top + 24, left:left + 24] += 160
    return pixels.astype(np.uint8)


def share_in(heat: np.ndarray, top: int, left: int) -> float:
    """The share of a map's positive mass inside the quadrant at (top, left)."""
    positive = np.clip(heat, 0, None)
    return float(positive[top:top + 24, left:left + 24].sum() / positive.sum())


@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_heat_is_where_the_evidence_is(quadrant):
    top, left = QUADRANTS[quadrant]
    heat_maps = occlusion_maps(faces_bright_in(top, left), RegionPredictor(top, left))
    assert (heat_maps.targets == HAPPY).all()
    opposite = (24 - top, 24 - left)
    for heat in heat_maps.maps:
        assert share_in(heat, top, left) > 0.8 and share_in(heat, *opposite) < 0.02, quadrant  # uniform: 0.25 each
        row, column = np.unravel_index(heat.argmax(), heat.shape)
        assert top <= row < top + 24 and left <= column < left + 24, (quadrant, row, column)
        assert heat.max() > 0.05  # hiding a sixth of the evidence costs happy several points


def test_a_class_asked_for_is_explained_instead():
    """Evidence for happy is evidence against angry: angry's map is negative where happy's is positive."""
    faces = faces_bright_in(0, 0, n=2)
    angry = occlusion_maps(faces, RegionPredictor(), targets=[0, 0])
    assert (angry.targets == 0).all()
    assert angry.maps[:, :24, :24].min() < -0.01 and angry.maps.max() < 1e-3


def test_all_faces_go_through_the_predictor_in_one_call():
    predictor = RegionPredictor()
    heat_maps = occlusion_maps(faces_bright_in(0, 0, n=5), predictor)
    assert OCCLUSION.rows_per_face == 50  # 7x7 squares + the face: the cost reported in docs/evaluation.md
    assert predictor.calls == [5 * OCCLUSION.rows_per_face]
    assert heat_maps.maps.shape == (5, 48, 48) and heat_maps.maps.dtype == np.float32
    np.testing.assert_allclose(heat_maps.probs, region_probs(faces_bright_in(0, 0, n=5)[:, None] / 255, 0, 0), atol=1e-6)
    assert occlusion_maps(np.zeros((0, 48, 48), np.uint8), predictor).maps.shape == (0, 48, 48)


def test_coarser_squares_cost_fewer_rows_and_still_point_at_the_evidence():
    coarse = Occlusion(patch=16, stride=8)
    assert coarse.offsets == [0, 8, 16, 24, 32] and coarse.rows_per_face == 26
    heat = occlusion_maps(faces_bright_in(24, 24, n=1), RegionPredictor(24, 24), occlusion=coarse).maps[0]
    assert share_in(heat, 24, 24) > 0.75


def test_bad_settings_and_targets_are_refused():
    with pytest.raises(FerError, match="patch must be 1 to 48"):
        Occlusion(patch=0)
    with pytest.raises(FerError, match="one class id"):
        occlusion_maps(faces_bright_in(0, 0, n=2), RegionPredictor(), targets=[3])
    with pytest.raises(FerError, match="one class id"):
        occlusion_maps(faces_bright_in(0, 0, n=1), RegionPredictor(), targets=[7])


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_real_backends_give_the_maps_of_the_same_model(backend, tmp_path):
    top, left = QUADRANTS["bottom-right"]
    predictor = (OnnxPredictor(region_onnx(tmp_path / "region.onnx", top, left)) if backend == "onnx"
                 else region_torch(top, left))
    faces = faces_bright_in(top, left)
    expected = occlusion_maps(faces, RegionPredictor(top, left)).maps
    np.testing.assert_allclose(occlusion_maps(faces, predictor).maps, expected, atol=1e-5)


def test_a_trained_architecture_is_explained_alike_by_both_backends(seed_onnx_file, seed_model_file):
    faces = faces_bright_in(0, 24, n=2)
    onnx_maps = occlusion_maps(faces, load_predictor(seed_onnx_file))
    torch_maps = occlusion_maps(faces, load_predictor(seed_model_file))
    np.testing.assert_array_equal(onnx_maps.targets, torch_maps.targets)
    np.testing.assert_allclose(onnx_maps.maps, torch_maps.maps, atol=1e-4)
    assert np.isfinite(onnx_maps.maps).all() and np.abs(onnx_maps.maps).max() > 0


def test_overlay_colours_only_where_the_heat_is():
    face = np.full((48, 48), 100, np.uint8)
    assert np.array_equal(np.asarray(overlay_heatmap(face, np.zeros((48, 48)))), np.full((192, 192, 3), 100))
    heat = np.zeros((48, 48), np.float32)
    heat[:24, :24] = 0.5
    image = np.asarray(overlay_heatmap(face, heat, size=96)).astype(int)
    assert image.shape == (96, 96, 3)
    assert (image[:40, :40, 0] - image[:40, :40, 2] > 40).all()  # the hottest colours are yellow: red over blue
    assert (image[56:, 56:] == 100).all()


def test_heat_maps_are_laid_inside_each_box_of_a_photo(tmp_path):
    predictor = OnnxPredictor(region_onnx(tmp_path / "region.onnx"))
    analysis = analyze(TWO_FACES, predictor)
    assert len(analysis.faces) == 2
    heat_maps = explain_analysis(analysis, predictor)
    np.testing.assert_allclose(heat_maps.probs, np.stack([face.probs for face in analysis.faces]), atol=1e-6)
    assert face_crops(analysis).shape == (2, 48, 48)
    photo = overlay_analysis(analysis, heat_maps)
    assert photo.size == analysis.image.size and photo.mode == "RGB"
    changed = np.any(np.asarray(photo) != np.asarray(analysis.image), axis=2)
    inside = np.zeros_like(changed)
    for face in analysis.faces:
        x, y, w, h = face.box
        inside[y:y + h, x:x + w] = True
    assert changed[inside].any() and not changed[~inside].any()
    assert draw_explained_faces(analysis, explain_analysis(analysis, predictor)).size == draw_faces(analysis).size


def test_explain_emotions_is_detect_emotions_with_a_heat_map(tmp_path):
    predictor = OnnxPredictor(region_onnx(tmp_path / "region.onnx"))
    explained = explain_emotions(TWO_FACES, predictor)
    plain = detect_emotions(TWO_FACES, predictor)
    assert [{key: face[key] for key in plain[0]} for face in explained] == plain
    for face in explained:
        heat = np.array(face["heatmap"])
        assert heat.shape == (48, 48) and share_in(heat, 0, 0) > 0.5  # a real face is not dark outside the region
    json.dumps(explained)  # plain lists and numbers, for the demo's API
    analysis = analyze(TWO_FACES, predictor)
    assert explained_dicts(analysis, explain_analysis(analysis, predictor)) == explained
    assert explain_emotions(Image.new("L", (200, 160), 128), predictor) == []


def save_face(path: Path) -> Path:
    Image.fromarray(faces_bright_in(0, 0, n=1)[0]).save(path)
    return path


def test_cli_draws_every_face(tmp_path, capsys):
    model = region_onnx(tmp_path / "region.onnx")
    main(str(save_face(tmp_path / "face.png")), model=str(model), out=str(tmp_path / "out" / "explained.png"))
    printed = capsys.readouterr().out
    assert "face 1 [0, 0, 48, 48]: happy" in printed and str(tmp_path / "out" / "explained.png") in printed
    with Image.open(tmp_path / "out" / "explained.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
    main(str(TWO_FACES), model=str(model), out=str(tmp_path / "two.png"))
    assert "face 2" in capsys.readouterr().out and (tmp_path / "two.png").is_file()


def test_cli_without_a_face_says_so_and_fails(tmp_path, capsys):
    Image.new("RGB", (240, 180), "white").save(tmp_path / "wall.png")
    with pytest.raises(SystemExit) as exit_info:
        main(str(tmp_path / "wall.png"), model=str(region_onnx(tmp_path / "region.onnx")), out=str(tmp_path / "x.png"))
    assert exit_info.value.code != 0
    assert capsys.readouterr().err == f"error: {NO_FACE_HINT}\n"
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("case, message", [("missing image", "no such file"), ("not an image", "not a readable image"),
                                           ("bad model", "expected a .onnx or .safetensors"),
                                           ("out is a folder", "it is a folder")])
def test_cli_bad_inputs_are_one_line(tmp_path, capsys, case, message):
    model, face, out = region_onnx(tmp_path / "region.onnx"), save_face(tmp_path / "face.png"), tmp_path / "x.png"
    (tmp_path / "notes.txt").write_text("hello")
    args = {"missing image": (tmp_path / "nope.png", model, out), "not an image": (tmp_path / "notes.txt", model, out),
            "bad model": (face, tmp_path / "notes.txt", out), "out is a folder": (face, model, tmp_path)}[case]
    with pytest.raises(SystemExit) as exit_info:
        main(str(args[0]), model=str(args[1]), out=str(args[2]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_onnx_path_loads_neither_torch_nor_fastai(tmp_path):
    """Run as a command, as a user would: explaining an ONNX model needs numpy, Pillow and onnxruntime only."""
    model, face = region_onnx(tmp_path / "region.onnx"), save_face(tmp_path / "face.png")
    code = ("import sys, runpy; sys.argv = ['explain', sys.argv[1], '--model', sys.argv[2], '--out', sys.argv[3]]\n"
            "try:\n    runpy.run_module('fer_fastai.explain', run_name='__main__')\n"
            "finally:\n    print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastai')))")
    result = subprocess.run([sys.executable, "-c", code, str(face), str(model), str(tmp_path / "x.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[]"), result.stdout
    assert (tmp_path / "x.png").is_file()
