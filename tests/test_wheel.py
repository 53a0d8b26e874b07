"""The wheel works without the repository: built with `pip wheel`, installed in a fresh venv with only the
inference dependencies, it answers the example photo with its own model and no torch (docs/onnx.md#python-wheel)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fer_fastai.faces import detect_emotions
from fer_fastai.hashing import file_sha256
from fer_fastai.paths import BUNDLED_MODEL_FILE, DEFAULT_MODEL_NAME, bundled_model, sibling
from fer_fastai.predict import load_predictor

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "demo" / "examples" / "collins_and_hopper.jpg"
INFERENCE = ("numpy", "pillow", "onnxruntime", "opencv-python-headless")  # at least these; none of the next
NOT_FOR_INFERENCE = ("torch", "torchvision", "fastai", "gradio", "safetensors", "onnx", "pandas", "matplotlib")
# Run inside the fresh venv, from a folder outside the repository.
ANSWER = """
import importlib.util, json, sys
import fer_fastai
answers = fer_fastai.detect_emotions(sys.argv[1])
print(json.dumps({"file": fer_fastai.__file__, "model": str(fer_fastai.load_predictor().path), "answers": answers,
                  "absent": [name for name in sys.argv[2:] if importlib.util.find_spec(name) is not None],
                  "loaded": sorted(name for name in ("torch", "fastai") if name in sys.modules)}))
"""


def test_the_bundled_model_is_the_default_models_int8_twin_with_its_card():
    bundled = REPO / "fer_fastai" / "bundled"
    assert sorted(path.name for path in bundled.iterdir()) == sorted([BUNDLED_MODEL_FILE, f"{DEFAULT_MODEL_NAME}.json"]), \
        (f"the default model changed: in fer_fastai/bundled/, git rm the old links and ln -s ../../artifacts/{BUNDLED_MODEL_FILE} "
         f"and ../../artifacts/{DEFAULT_MODEL_NAME}.json")
    for path in bundled.iterdir():  # links, so the repository holds each binary once
        assert path.is_symlink() and path.resolve() == (REPO / "artifacts" / path.name).resolve()
    assert bundled_model() == bundled / BUNDLED_MODEL_FILE


def test_the_int8_model_is_within_half_a_point_of_fp32():
    parity = json.loads(sibling(REPO / "artifacts" / BUNDLED_MODEL_FILE, "parity").read_text())["int8"]
    assert parity["kept"] and parity["drop_points"] <= 0.5


def test_without_a_model_the_bundled_one_answers():
    assert load_predictor().path == bundled_model()
    assert detect_emotions(PHOTO) == detect_emotions(PHOTO, load_predictor(bundled_model()))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("fer_fastai-*.whl")
    return built


def installed_here(requirement: str) -> str | None:
    """The distribution a requirement names if this platform needs it without extras, else None."""
    parsed = Requirement(requirement)
    return parsed.name if parsed.marker is None or parsed.marker.evaluate({"extra": ""}) else None


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(name).decode() for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]


def core_requirements(wheel: Path) -> list[str]:
    """What `pip install` of the wheel brings, extras aside."""
    return [name for name in map(installed_here, wheel_requirements(wheel)) if name]


def test_the_wheel_holds_the_model_and_needs_only_the_inference_set(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        inside = archive.read(f"fer_fastai/bundled/{BUNDLED_MODEL_FILE}")
    assert len(inside) == bundled_model().stat().st_size and inside == bundled_model().read_bytes()
    core = core_requirements(wheel)
    assert set(INFERENCE) <= set(core) and not set(core) & set(NOT_FOR_INFERENCE), core
    assert any(requirement.startswith("torch") and 'extra == "train"' in requirement for requirement in wheel_requirements(wheel))
    assert wheel.stat().st_size < 8_000_000


def distribution_files(name: str, seen: set[str]) -> set[Path]:
    """The top-level folders and files of an installed distribution and of everything it requires."""
    key = name.lower().replace("_", "-")
    if key in seen:
        return set()
    seen.add(key)
    dist = importlib.metadata.distribution(name)
    root = Path(dist.locate_file(""))
    found = {root / Path(file).parts[0] for file in dist.files or () if not str(file).startswith("..")}
    for name in filter(None, map(installed_here, dist.requires or ())):
        found |= distribution_files(name, seen)
    return found


def test_the_wheel_answers_a_photo_in_a_fresh_venv_without_torch(wheel: Path, tmp_path: Path):
    """A fresh venv gets the wheel and the inference set only (linked from this environment: no download)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = tmp_path / "deps"
    deps.mkdir()
    for path in set().union(*(distribution_files(name, set()) for name in core_requirements(wheel))):
        (deps / path.name).symlink_to(path)
    (site / "inference-deps.pth").write_text(f"{deps}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
                    str(wheel)], check=True, capture_output=True, timeout=300)

    result = subprocess.run([python, "-c", ANSWER, str(PHOTO), *NOT_FOR_INFERENCE], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["file"].startswith(str(site)) and answer["model"].startswith(str(site))
    assert answer["absent"] == [] and answer["loaded"] == []
    assert answer["answers"] == detect_emotions(PHOTO)  # the repository's own answer with the bundled model
    assert [face["box"] for face in answer["answers"]] == [[133, 49, 75, 75], [485, 65, 151, 151]]
    check = subprocess.run([python, "-m", "fer_fastai.conformance", "--check", str(REPO / "artifacts" / "conformance" / DEFAULT_MODEL_NAME)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and check.stdout.endswith("PASSED\n"), check.stderr


@pytest.mark.slow
def test_pip_installs_the_wheel_with_its_dependencies_from_the_index(wheel: Path, tmp_path: Path):
    """The real thing: `pip install fer_fastai-*.whl` resolves its dependencies from PyPI (needs the network)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, symlinks=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True,
                             timeout=900)
    if install.returncode != 0:
        pytest.skip(f"pip could not install the dependencies: {(install.stderr.strip().splitlines() or ['?'])[-1]}")
    result = subprocess.run([python, "-c", ANSWER, str(PHOTO), *NOT_FOR_INFERENCE], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["absent"] == [] and answer["answers"] == detect_emotions(PHOTO)
