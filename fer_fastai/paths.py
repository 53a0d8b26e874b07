"""Default paths, one rule each: where the data is, and which files sit beside a model.

A model is a family of files that share a stem: `NAME.safetensors` (weights) + `NAME.json` (card) for
PyTorch, `NAME.onnx` (+ `NAME.int8.onnx`, its int8 twin) and `NAME.parity.json` (the export's proof).
Every command finds one member of the family from another through `sibling`.
"""

from __future__ import annotations

from pathlib import Path

# FER2013 in the folder layout, beside the repository: commands are run from the repository root.
DEFAULT_DATA = "../shared/fer2013"

REPO_ROOT = Path(__file__).resolve().parents[1]
# The model the demo, the docs' examples and the embedding checks serve when none is named: one name,
# so that changing the default is one edit (its files are artifacts/NAME.*).
DEFAULT_MODEL_NAME = "fer_ensemble"
DEFAULT_MODEL = REPO_ROOT / "artifacts" / f"{DEFAULT_MODEL_NAME}.onnx"
# The model inside the installed package (the wheel), which `load_predictor()` and `detect_emotions(image)` use
# when given none: the default model's int8 twin (within 0.5 test points of fp32, a quarter of its size)
# with its card. In the repository fer_fastai/bundled/ holds symlinks into artifacts/, which the wheel
# build copies as files; switching the default re-points them (tests/test_wheel.py checks they agree).
BUNDLED_MODEL_FILE = f"{DEFAULT_MODEL_NAME}.int8.onnx"

MODEL_SUFFIXES = {"safetensors": ".safetensors", "card": ".json", "onnx": ".onnx", "int8": ".int8.onnx",
                  "parity": ".parity.json"}


def bundled_model() -> Path:
    """The model file shipped inside the package, wherever it is installed."""
    from importlib.resources import files

    return Path(str(files(__package__) / "bundled" / BUNDLED_MODEL_FILE))


def model_stem(path: str | Path) -> Path:
    """`x.int8.onnx`, `x.onnx`, `x.safetensors`, `x.json`, `x.parity.json` → `x` (the longest suffix wins)."""
    path = Path(path)
    for suffix in sorted(MODEL_SUFFIXES.values(), key=len, reverse=True):
        if path.name.lower().endswith(suffix):
            return path.with_name(path.name[:-len(suffix)])
    return path.with_suffix("")


def sibling(path: str | Path, kind: str) -> Path:
    """The file of `kind` (a MODEL_SUFFIXES key) in the same family as `path`."""
    stem = model_stem(path)
    return stem.with_name(stem.name + MODEL_SUFFIXES[kind])


def is_int8(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(MODEL_SUFFIXES["int8"])
