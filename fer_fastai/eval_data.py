"""Which faces to score: one split of a folder layout or fer2013.csv, a folder of class folders, or a flat
folder of unlabeled images. Shared by evaluate, interpret and export, so `--data` means the same to all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import (CSV_USAGE_SPLITS, IMAGE_SUFFIXES, SPLIT_FOLDERS, FaceSet, decode_files, list_images, load_csv,
                   load_labeled_folder, load_splits, validation_faces)
from .errors import FerError
from .labels import LABELS, canonical_label
from .recipes import Recipe

SPLITS = ("train", "valid", "test", "private")


@dataclass(frozen=True)
class EvalData:
    """Faces to score, and words for them in reports and plot titles. Unlabeled faces have label -1."""

    faces: FaceSet
    description: str
    labeled: bool

    @property
    def subject(self) -> str:
        """For plot titles: which data, how many faces."""
        return f"{self.description}, {len(self.faces):,} faces"


def load_eval_data(data: str | Path, split: str = "test", recipe: Recipe | None = None,
                   skip_unknown: bool = False, skip_bad: bool = False, valid_pct: float | None = None) -> EvalData:
    """One split of a folder layout or fer2013.csv, a folder of class folders, or a flat folder of images.

    `valid_pct` (split "valid" only) carves a smaller share of train than the recipe's, with its split seed;
    `recipe` (the model card's) rebuilds the validation split that training carved out of train.
    """
    path = Path(data)
    if split not in SPLITS:
        raise FerError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if valid_pct is not None:
        if split != "valid":
            raise FerError(f"--valid-pct carves a validation split out of train; it needs --split valid, not {split}")
        recipe = with_smaller_validation_split(recipe, valid_pct)
    if not path.exists():
        raise FerError(f"data path {path} does not exist")
    if path.is_file():
        return _pick_split(load_splits(path), split, f"{path} ({_usage_name(split)} rows)", recipe)
    subfolders = _subfolders(path)
    if any(name.lower() in SPLIT_FOLDERS for name in subfolders):
        layout = {SPLIT_FOLDERS[name.lower()]: path / name for name in subfolders if name.lower() in SPLIT_FOLDERS}
        if split in layout:
            if split == "valid" and valid_pct is not None:
                raise FerError(f"{path} has a valid/ folder of its own; --valid-pct carves a split out of train only")
            faces = load_labeled_folder(layout[split], skip_unknown, skip_bad)
            return EvalData(faces, f"{path} {split} split", True)
        if split == "valid" and "train" in layout:  # the carve-out of train that training used
            splits = {"train": load_labeled_folder(layout["train"], skip_unknown, skip_bad)}
            return _pick_split(splits, split, f"{path} valid split (carved out of train)", recipe)
        raise FerError(f"{path} has no {split}/ folder (it has {', '.join(sorted(layout))})")
    if any(canonical_label(name) is not None for name in subfolders):
        _check_whole_folder(path, split, "one folder of class folders")
        return EvalData(load_labeled_folder(path, skip_unknown, skip_bad), str(path), True)
    images = [file for file in path.iterdir() if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        _check_whole_folder(path, split, "a folder of unlabeled images")
        files = list_images(path)
        pixels, good = decode_files(files, skip_bad)
        sources = tuple(str(files[i]) for i in np.flatnonzero(good))
        return EvalData(FaceSet(pixels, np.full(len(sources), -1, dtype=np.int64), sources), f"{path} (unlabeled)", False)
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1:
        return _pick_split(load_csv(csvs[0]), split, f"{csvs[0]} ({_usage_name(split)} rows)", recipe)
    raise FerError(f"{path}: found no split folders (train/, test/), class folders ({', '.join(LABELS)}), "
                   f"fer2013.csv or images to evaluate on")


def with_smaller_validation_split(recipe: Recipe | None, valid_pct: float) -> Recipe:
    """The recipe with its valid_pct lowered to `valid_pct`.

    With the same split seed a smaller split lies inside the larger one (data.stratified_split), so the
    model never trained on its faces; a larger one would hold faces it trained on, and is refused.
    """
    if recipe is None:
        raise FerError("--valid-pct: the model's card does not record the valid_pct it was trained with, "
                       "so a smaller held-out split cannot be carved from it")
    if not 0 < valid_pct <= recipe.valid_pct:
        raise FerError(f"--valid-pct must be above 0 and at most the {recipe.valid_pct} the model held out in training "
                       f"(a larger share of train would include faces it trained on), got {valid_pct}")
    return replace(recipe, valid_pct=valid_pct)


def _check_whole_folder(path: Path, split: str, kind: str) -> None:
    """A folder without split folders is scored whole; asking it for another split than the default is a mistake."""
    if split != "test":
        raise FerError(f"--split {split} does not apply to {path}: it is {kind}, scored whole; "
                       "pass a folder with train/ and test/ (or a fer2013.csv) to pick a split")


def _subfolders(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _usage_name(split: str) -> str:
    return {value: key for key, value in CSV_USAGE_SPLITS.items()}.get(split, split)


def _pick_split(splits: dict[str, FaceSet], split: str, description: str, recipe: Recipe | None) -> EvalData:
    if split in splits:
        return EvalData(splits[split], description, True)
    if split == "valid":
        if recipe is None:
            raise FerError("this data has no valid split and the model's card does not record how training carved "
                           "one out of train (valid_pct, seed); evaluate on --split test instead")
        return EvalData(validation_faces(splits, recipe), description, True)
    raise FerError(f"this data has no {split!r} split (it has {', '.join(sorted(splits))})")
