"""Which test-time views help? Validation accuracy of models (and of their mean) over shifted and mirrored faces.

    python bench/test_time_views.py artifacts/fer_vgg.safetensors artifacts/fer_seed.safetensors [--max-shift 2]

Each model sees every validation face moved by each whole-pixel offset up to --max-shift (made
by `fer_fastai.models.shifted_views`, the function a `fer_fastai.ensemble --shifts` model runs),
plain and mirrored; the table averages calibrated probabilities over growing sets of those views. It scores
the validation split the models were selected on (rebuilt from their cards), never the test split,
so choosing views with it leaves the test split for the final score. Runs the .onnx beside each
model when there is one (several times faster), else PyTorch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fer_fastai.calibrate import validation_faces
from fer_fastai.data import load_splits
from fer_fastai.ensemble import shared_recipe
from fer_fastai.errors import cli_errors
from fer_fastai.model_io import load_card
from fer_fastai.models import shifted_views, view_offsets
from fer_fastai.predict import load_predictor
from fer_fastai.preprocess import pixels_to_input

View = tuple[int, int, bool]  # crop offset in rows and columns, mirrored


def view_sets(max_shift: int) -> dict[str, list[View]]:
    """Named sets of views, from the plain face up to every shift within max_shift, with and without mirrors."""
    sets = {"plain": [(0, 0, False)], "mirror": [(0, 0, False), (0, 0, True)]}
    for shift in range(1, max_shift + 1):
        sets[f"shifts ≤ {shift}"] = [(dy, dx, False) for dy, dx in view_offsets(shift)]
        sets[f"shifts ≤ {shift} + mirrors"] = [(dy, dx, mirror) for dy, dx in view_offsets(shift) for mirror in (False, True)]
    return sets


def view_probabilities(model_path: str, max_shift: int, mirrors: bool = True
                       ) -> tuple[dict[View, np.ndarray], np.ndarray]:
    """Calibrated probabilities of every view (mirrored ones too, unless `mirrors` is False) of every
    validation face, and the labels."""
    card = load_card(model_path)
    onnx = Path(model_path).with_suffix(".onnx")
    predictor = load_predictor(onnx if onnx.is_file() else model_path)
    recipe = card.get("recipe") or {}
    splits = load_splits(recipe["data"], skip_unknown=recipe.get("skip_unknown", False),
                         skip_bad=recipe.get("skip_bad", False))
    faces = validation_faces(splits, recipe)
    views = shifted_views(torch.from_numpy(pixels_to_input(faces.pixels)), max_shift).numpy()
    probs = {}
    for index, (dy, dx) in enumerate(view_offsets(max_shift)):
        view = views[index * len(faces):(index + 1) * len(faces)]
        probs[dy, dx, False] = predictor.predict_proba(view)
        if mirrors:
            probs[dy, dx, True] = predictor.predict_proba(np.ascontiguousarray(view[..., ::-1]))
    return probs, faces.labels


def short_name(model_path: str) -> str:
    """fer_vgg for artifacts/fer_vgg.safetensors; the run folder's name for runs/NAME/model.safetensors."""
    path = Path(model_path)
    return path.parent.name if path.stem == "model" else path.stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="trained .safetensors models (card beside; .onnx used if beside)")
    parser.add_argument("--max-shift", type=int, default=2, help="largest shift in pixels (default 2)")
    args = parser.parse_args()

    with cli_errors():
        shared_recipe([load_card(path) for path in args.models], args.models)  # before minutes of inference
    results, labels = {}, None
    for path in args.models:
        start = time.perf_counter()
        probs, labels = view_probabilities(path, args.max_shift)
        results[path] = probs
        print(f"{path}: {len(labels):,} validation faces, {len(probs)} views, {time.perf_counter() - start:.0f} s")

    columns = [*args.models, "mean of all"] if len(args.models) > 1 else args.models
    names = [short_name(column) for column in columns]
    width = max(12, *map(len, names))
    print(f"\nvalidation accuracy, %\n{'views':<24}{'n':>4}  " + "  ".join(f"{name:>{width}}" for name in names))
    for name, views in view_sets(args.max_shift).items():
        per_model = [np.mean([results[path][view] for view in views], axis=0) for path in args.models]
        if len(args.models) > 1:
            per_model.append(np.mean(per_model, axis=0))
        scores = [100 * float((probs.argmax(axis=1) == labels).mean()) for probs in per_model]
        print(f"{name:<24}{len(views):>4}  " + "  ".join(f"{score:>{width}.2f}" for score in scores))


if __name__ == "__main__":
    main()
