"""The README's "Use the ONNX model" snippet runs as written, with only numpy, Pillow and onnxruntime."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from export.to_onnx import export_onnx
from fer_fastai.predict import OnnxPredictor
from fer_fastai.preprocess import images_to_input

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Use the ONNX model"
BLOCKED = ("torch", "fastai", "fastcore", "fer_fastai", "cv2", "gradio")


def onnx_snippet() -> str:
    """The first ```python block after the heading in README.md."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.DOTALL)
    assert match, f"no ```python block after {HEADING!r}"
    return match.group(1)


def sharp_model(seed_model_file: Path, folder: Path) -> Path:
    """The random-init seed model with its head scaled up, so its probabilities react to small input changes
    (a plain random-init net answers ~1/7 for everything, which would hide a preprocessing mistake)."""
    import torch

    from fer_fastai.model_io import load_model, save_model

    model, card = load_model(seed_model_file)
    with torch.no_grad():
        model[-1].weight *= 200
    folder.mkdir()
    save_model(model, folder / "model.safetensors", card)  # records the new weights' sha256 in the card
    return folder / "model.safetensors"


def test_snippet_runs_with_only_numpy_pillow_onnxruntime(seed_model_file, face_folder, tmp_path):
    snippet = onnx_snippet()
    assert len(snippet.strip().splitlines()) <= 20  # the issue asks for about 15 lines
    model_name = re.search(r"\"([^\"]+\.onnx)\"", snippet).group(1)
    image_name = re.search(r"\"([^\"]+\.(?:jpg|jpeg|png))\"", snippet).group(1)

    model = tmp_path / model_name
    model.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(sharp_model(seed_model_file, tmp_path / "sharp"), tmp_path / "exported.onnx", data=face_folder)
    shutil.copy(tmp_path / "exported.onnx", model)
    # An RGB photo-sized face (not 48x48, not gray), so the snippet's own resizing and luma are exercised.
    rng = np.random.default_rng(0)
    face = np.clip(rng.normal(120, 50, (96, 80, 3)) + np.linspace(0, 60, 80)[None, :, None], 0, 255).astype(np.uint8)
    Image.fromarray(face).save(tmp_path / image_name, quality=95)

    # Any import of the project or of torch/fastai in the snippet fails it.
    guard = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    (tmp_path / "snippet.py").write_text(guard + snippet)
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    predictor = OnnxPredictor(model)
    probs = predictor.predict_proba(images_to_input([tmp_path / image_name]))[0]
    top = np.argsort(probs)[::-1][:3]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == [predictor.labels[i] for i in top]
    printed = np.array([float(line.split()[1].rstrip("%")) for line in lines])
    np.testing.assert_allclose(printed, probs[top] * 100, atol=0.05 + 1e-6)  # printed with one decimal
