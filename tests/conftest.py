"""Shared fixtures: tiny synthetic FER-style data sets (never the real data) and tiny models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from fer_fastai.labels import LABELS

# The tests' models and batches are tiny: one thread is as fast, and on a 2-core machine that also
# runs other work (CI, a training run) more threads spin-wait against each other. Subprocesses
# that the tests start (CLI, demo server) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def synthetic_faces(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 48, 48] images whose class is visible (a class-specific bright band), and their ids."""
    rng = np.random.default_rng(seed)
    pixels, labels = [], []
    for label in range(len(LABELS)):
        for _ in range(n_per_class):
            image = rng.integers(0, 90, (48, 48))
            image[label * 6:label * 6 + 8, :] += 160
            pixels.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(pixels), np.array(labels)


def write_folder_dataset(root: Path, splits: dict[str, int], suffix: str = ".png", seed: int = 0) -> Path:
    """root/<split>/<class>/<i><suffix> with `splits[split]` images per class."""
    for offset, (split, n_per_class) in enumerate(splits.items()):
        pixels, labels = synthetic_faces(n_per_class, seed + offset)
        for i, (image, label) in enumerate(zip(pixels, labels)):
            folder = root / split / LABELS[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{split}_{i}{suffix}")
    return root


def write_csv_dataset(path: Path, usages: dict[str, int], seed: int = 0) -> Path:
    """An original-format fer2013.csv (emotion,pixels,Usage) with `usages[usage]` rows per class."""
    rows = ["emotion,pixels,Usage"]
    for offset, (usage, n_per_class) in enumerate(usages.items()):
        pixels, labels = synthetic_faces(n_per_class, seed + offset)
        rows += [f"{label},{' '.join(map(str, image.ravel()))},{usage}" for image, label in zip(pixels, labels)]
    path.write_text("\n".join(rows) + "\n")
    return path


EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "demo" / "examples" / "collins_and_hopper.jpg"


def crowd_photo(columns: int = 5, rows: int = 4, tile: int = 170) -> Image.Image:
    """A group photo of columns x rows faces (20 by default): the example photo's two faces, tiled."""
    photo = Image.open(EXAMPLE_PHOTO).convert("RGB")
    faces = [photo.crop((93, 9, 248, 164)), photo.crop((425, 5, 696, 276))]
    crowd = Image.new("RGB", (columns * tile, rows * tile), "white")
    for i in range(columns * rows):
        crowd.paste(faces[i % 2].resize((tile, tile)), ((i % columns) * tile, (i // columns) * tile))
    return crowd


def stop_process(process) -> None:
    """Stop a server a test started: politely, then for good."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded-image caches go to a temp folder, never the user's ~/.cache."""
    monkeypatch.setenv("FER_FASTAI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory) -> Path:
    """A folder-layout data set: train/ (8 per class) and test/ (3 per class)."""
    return write_folder_dataset(tmp_path_factory.mktemp("faces"), {"train": 8, "test": 3})


@pytest.fixture(scope="session")
def face_csv(tmp_path_factory) -> Path:
    """A fer2013.csv with Training (8 per class), PublicTest and PrivateTest (3 per class) rows."""
    path = tmp_path_factory.mktemp("csv") / "fer2013.csv"
    return write_csv_dataset(path, {"Training": 8, "PublicTest": 3, "PrivateTest": 3})


@pytest.fixture
def make_folder_dataset(tmp_path) -> Callable[..., Path]:
    """Factory for a fresh folder data set in this test's tmp_path."""
    return lambda splits={"train": 4}, suffix=".png": write_folder_dataset(tmp_path / "data", splits, suffix)


@pytest.fixture(scope="session")
def seed_model_file(tmp_path_factory) -> Path:
    """A random-init (fixed seed) seed-architecture model saved as safetensors + card."""
    import torch

    from fer_fastai.card import new_card
    from fer_fastai.model_io import save_model
    from fer_fastai.models import create_model

    torch.manual_seed(0)
    model = create_model("seed").eval()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(model, path, new_card("seed", {}, metrics={"test_accuracy": 0.0}))
    return path


@pytest.fixture(scope="session")
def seed_onnx_file(seed_model_file, face_folder) -> Path:
    """The seed model exported beside its weights (model.onnx, and the card rewritten with the photo
    contract), so load_predictor finds either backend."""
    from export.to_onnx import export_onnx

    out = seed_model_file.with_suffix(".onnx")
    if not out.exists():
        export_onnx(seed_model_file, out, data=face_folder)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, face_folder) -> Path:
    """A complete run folder from 2 CPU epochs of the fastai recipe on the synthetic folder data."""
    from fer_fastai.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_FASTAI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return train(TrainConfig(data=str(face_folder), out=str(out), epochs=2, bs=8, lr=1e-3, device="cpu"))


@pytest.fixture
def model_with_recipe(tmp_path, seed_model_file, face_folder):
    """A copy of the seed model whose card names its training data and validation split, as training writes it."""
    weights = tmp_path / "model.safetensors"
    shutil.copy(seed_model_file, weights)
    card = json.loads(seed_model_file.with_suffix(".json").read_text())
    card.update(recipe={"valid_pct": 0.25, "seed": 3}, data={"source": str(face_folder)})
    weights.with_suffix(".json").write_text(json.dumps(card))
    return weights
