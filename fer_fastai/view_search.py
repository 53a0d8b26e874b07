"""`python -m fer_fastai.view_search MODEL …`: which test-time views help? Validation accuracy of models
(and of their mean) over shifted and mirrored faces.

    python -m fer_fastai.view_search artifacts/fer_vgg.safetensors artifacts/fer_seed.safetensors [--max-shift 2]

Each model sees every validation face moved by each whole-pixel offset up to --max-shift (made by
`models.shifted_views`, the function a `fer_fastai.ensemble --shifts` model runs), plain and mirrored;
the table averages calibrated probabilities over growing sets of those views. It scores the validation
split the models were selected on (rebuilt from their cards), never the test split, so choosing views
with it leaves the test split for the final score. Runs the .onnx beside each model when there is one
(several times faster), else PyTorch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from fastcore.script import call_parse

from .card import ModelCard
from .data import FaceSet, recipe_splits, validation_faces
from .ensemble import shared_recipe
from .errors import FerError, cli_errors, require
from .model_io import load_card
from .models import shifted_views, view_offsets
from .paths import sibling
from .predict import load_predictor
from .preprocess import pixels_to_input

View = tuple[int, int, bool]  # crop offset in rows and columns, mirrored
MAX_SHIFT = 23  # the most `models.ensemble` takes: a shift stays under half of a 48-pixel face


def member_cards(model_paths: list[str]) -> list[ModelCard]:
    """The cards of models to be scored together, checked before minutes of inference: an error names a
    model that is missing, or whose validation split differs from the first model's."""
    require([(len(model_paths) > 0, "give at least one trained .safetensors model (its .json card beside it)")]
            + [(Path(path).is_file(), f"{path}: no such model file") for path in model_paths])
    cards = [load_card(path) for path in model_paths]
    shared_recipe(cards, [str(path) for path in model_paths])
    return cards


def validation_set(card: ModelCard, model_path: str | Path) -> FaceSet:
    """The validation faces a trained model was selected on, rebuilt from its card's recipe."""
    if card.recipe is None:
        raise FerError(f"{model_path}: its model card does not record the data it was trained on, "
                       "so its validation split is unknown; only trained run models can be scored here")
    return validation_faces(recipe_splits(card.recipe), card.recipe)


def view_sets(max_shift: int) -> dict[str, list[View]]:
    """Named sets of views, from the plain face up to every shift within max_shift, with and without mirrors."""
    sets = {"plain": [(0, 0, False)], "mirror": [(0, 0, False), (0, 0, True)]}
    for shift in range(1, max_shift + 1):
        sets[f"shifts ≤ {shift}"] = [(dy, dx, False) for dy, dx in view_offsets(shift)]
        sets[f"shifts ≤ {shift} + mirrors"] = [(dy, dx, mirror) for dy, dx in view_offsets(shift) for mirror in (False, True)]
    return sets


def view_probabilities(model_path: str | Path, max_shift: int, mirrors: bool = True
                       ) -> tuple[dict[View, np.ndarray], np.ndarray]:
    """Calibrated probabilities of every view up to `max_shift` pixels (mirrored ones too, unless `mirrors`
    is False) of every validation face, and the labels."""
    faces = validation_set(load_card(model_path), model_path)
    onnx = sibling(model_path, "onnx")
    predictor = load_predictor(onnx if onnx.is_file() else model_path)
    views = shifted_views(torch.from_numpy(pixels_to_input(faces.pixels)), max_shift).numpy()
    probs = {}
    for index, (dy, dx) in enumerate(view_offsets(max_shift)):
        view = views[index * len(faces):(index + 1) * len(faces)]
        probs[dy, dx, False] = predictor.predict_proba(view)
        if mirrors:
            probs[dy, dx, True] = predictor.predict_proba(np.ascontiguousarray(view[..., ::-1]))
    return probs, faces.labels


def accuracy_percent(probs: np.ndarray, labels: np.ndarray) -> float:
    """The share of faces whose most probable class is their label, in %."""
    return 100 * float((probs.argmax(axis=1) == labels).mean())


def view_set_scores(results: list[dict[View, np.ndarray]], labels: np.ndarray, max_shift: int) -> dict[str, list[float]]:
    """For each of `view_sets(max_shift)`: the validation accuracy (%) of each model's probabilities averaged
    over the set's views, then, with several models, of the mean of those over the models."""
    scores = {}
    for name, views in view_sets(max_shift).items():
        per_model = [np.mean([probs[view] for view in views], axis=0) for probs in results]
        if len(results) > 1:
            per_model.append(np.mean(per_model, axis=0))
        scores[name] = [accuracy_percent(probs, labels) for probs in per_model]
    return scores


def short_name(model_path: str | Path) -> str:
    """fer_vgg for artifacts/fer_vgg.safetensors; the run folder's name for runs/NAME/model.safetensors."""
    path = Path(model_path)
    return path.parent.name if path.stem == "model" else path.stem


def format_view_table(model_paths: list[str], scores: dict[str, list[float]], max_shift: int) -> str:
    """`view_set_scores` as a table: one row per set of views, one column per model (and their mean)."""
    names = [short_name(path) for path in model_paths] + (["mean of all"] if len(model_paths) > 1 else [])
    width = max(12, *map(len, names))
    sizes = {name: len(views) for name, views in view_sets(max_shift).items()}
    lines = ["validation accuracy, %", f"{'views':<24}{'n':>4}  " + "  ".join(f"{name:>{width}}" for name in names)]
    lines += [f"{name:<24}{sizes[name]:>4}  " + "  ".join(f"{score:>{width}.2f}" for score in row)
              for name, row in scores.items()]
    return "\n".join(lines)


@call_parse
def main(*models: str,  # trained .safetensors models (card beside; the .onnx beside is run when there is one)
         max_shift: int = 2,  # largest shift in pixels: views at every offset up to it, each also mirrored
         ):
    "Which test-time views help: validation accuracy of models, and of their mean, over shifted and mirrored faces."
    with cli_errors():
        require([(0 <= max_shift <= MAX_SHIFT, f"--max-shift must be a whole number of pixels from 0 to {MAX_SHIFT}, got {max_shift}")])
        member_cards(list(models))
        results, labels = [], None
        for path in models:
            start = time.perf_counter()
            probs, labels = view_probabilities(path, max_shift)
            results.append(probs)
            print(f"{path}: {len(labels):,} validation faces, {len(probs)} views, {time.perf_counter() - start:.0f} s")
        print("\n" + format_view_table(list(models), view_set_scores(results, labels, max_shift), max_shift))
