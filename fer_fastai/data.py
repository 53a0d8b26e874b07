"""Data sets on disk (folder layout or fer2013.csv) → decoded uint8 faces → fastai DataLoaders.

Every image is checked and decoded once, up front, into a uint8 [N, 48, 48] array that is cached on
disk (keyed by the files' names, sizes and modification times), so a bad file stops the run before
training starts and later runs skip the PNG decoding entirely.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import FerError
from .labels import LABELS, NUM_CLASSES, accepted_names, canonical_label
from .preprocess import IMAGE_SIZE, image_to_pixels

if TYPE_CHECKING:  # annotations only: recipes imports preprocess, not data
    from .recipes import Recipe

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
SPLIT_FOLDERS = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test", "publictest": "test"}
CSV_USAGE_SPLITS = {"Training": "train", "PublicTest": "test", "PrivateTest": "private"}
CACHE_VERSION = "1"


@dataclass(frozen=True)
class FaceSet:
    """One split, decoded: pixels uint8 [N, 48, 48], label ids int64 [N] (-1 = unlabeled), source names."""

    pixels: np.ndarray
    labels: np.ndarray
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        return {label: int((self.labels == i).sum()) for i, label in enumerate(LABELS)}

    def subset(self, index: np.ndarray) -> "FaceSet":
        return FaceSet(self.pixels[index], self.labels[index], tuple(self.sources[i] for i in index))


def default_cache_dir() -> Path:
    return Path(os.environ.get("FER_FASTAI_CACHE", Path.home() / ".cache" / "fer_fastai"))


def load_splits(path: str | Path, skip_unknown: bool = False, skip_bad: bool = False,
                cache_dir: Path | None = None) -> dict[str, FaceSet]:
    """Every split found at `path` (a folder layout or a fer2013.csv), decoded and checked."""
    path = Path(path)
    if not path.exists():
        raise FerError(f"data path {path} does not exist; point --data at a folder with train/<class>/ images or a fer2013.csv")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FerError(f"{path} is a file but not a .csv; --data takes a folder layout or a fer2013.csv")
        return load_csv(path, cache_dir)
    if not any(path.iterdir()):
        raise FerError(f"data folder {path} is empty; it needs train/<class>/ images or a fer2013.csv")
    split_dirs = {SPLIT_FOLDERS[d.name.lower()]: d for d in sorted(path.iterdir())
                  if d.is_dir() and d.name.lower() in SPLIT_FOLDERS}
    if "train" not in split_dirs:
        csvs = sorted(path.glob("*.csv"))
        if len(csvs) == 1:
            return load_csv(csvs[0], cache_dir)
        raise FerError(f"{path} has no train/ folder (expected train/<class>/*, optionally valid/ and test/) "
                       "and no single fer2013.csv")
    return {split: load_labeled_folder(folder, skip_unknown, skip_bad, cache_dir) for split, folder in split_dirs.items()}


def list_labeled_images(folder: Path, skip_unknown: bool = False) -> list[tuple[Path, int]]:
    """(file, label id) for every image in folder/<class>/; unknown class folders are an error unless skipped."""
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))  # .ipynb_checkpoints etc.
    unknown = [d.name for d in class_dirs if canonical_label(d.name) is None]
    if unknown and not skip_unknown:
        raise FerError(f"{folder}: unknown class folder(s) {', '.join(unknown)}; accepted names: {accepted_names()} "
                       "(train and evaluate can leave them out with --skip-unknown)")
    for name in unknown:
        log.warning("skipping unknown class folder %s", folder / name)
    items = [(file, LABELS.index(canonical_label(d.name)))
             for d in class_dirs if canonical_label(d.name) is not None
             for file in sorted(d.iterdir()) if file.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise FerError(f"{folder}: no images found in its class folders (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    warn_missing_classes(np.array([label for _, label in items]), str(folder))
    return items


def warn_missing_classes(labels: np.ndarray, where: str) -> None:
    """Say which of the 7 classes have no faces: a model trained without them never predicts them, and
    scores on such a split say nothing about them."""
    missing = [name for i, name in enumerate(LABELS) if not (labels == i).any()]
    if missing:
        log.warning("warning: %s has no faces of class(es) %s (an empty or missing class folder?)", where, ", ".join(missing))


def list_images(folder: Path) -> list[Path]:
    """Every image file directly in a flat folder (for unlabeled prediction)."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FerError(f"{folder}: no image files found")
    return files


def load_labeled_folder(folder: Path, skip_unknown: bool = False, skip_bad: bool = False,
                        cache_dir: Path | None = None) -> FaceSet:
    items = list_labeled_images(folder, skip_unknown)
    files = [file for file, _ in items]
    labels = np.array([label for _, label in items], dtype=np.int64)
    pixels, good = decode_files(files, skip_bad, cache_dir)
    return FaceSet(pixels, labels[good], tuple(str(files[i]) for i in np.flatnonzero(good)))


def decode_files(files: Sequence[Path], skip_bad: bool = False,
                 cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [M, 48, 48] for the readable files and a bool mask of which ones they were; cached."""
    cache_file = _cache_file(_files_key(files), cache_dir)
    cached = _read_cache(cache_file)
    if cached is not None:
        pixels, good = cached
        if skip_bad or good.all():
            _report_skipped([f"{files[i]} (unreadable when first decoded)" for i in np.flatnonzero(~good)])
            return pixels, _some_readable(good, files)
    pixels = np.zeros((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    good = np.ones(len(files), dtype=bool)
    problems: list[str] = []
    for i, file in enumerate(files):
        try:
            pixels[i] = image_to_pixels(file)
        except FerError as error:
            good[i] = False
            problems.append(str(error))
    _save_cache(cache_file, pixels=pixels[good], good=good)
    if problems and not skip_bad:
        raise FerError(f"{len(problems)} unreadable image(s), e.g. {problems[0]}"
                       f"{' … ' + problems[-1] if len(problems) > 1 else ''}; remove them (train and evaluate can leave them out with --skip-bad)")
    _report_skipped(problems)
    return pixels[good], _some_readable(good, files)


def _report_skipped(problems: list[str]) -> None:
    """--skip-bad says what it left out, every time, not only when the files were first decoded."""
    for problem in problems:
        log.warning("skipping %s", problem)
    if problems:
        log.warning("--skip-bad left out %d unreadable image(s)", len(problems))


def _read_cache(cache_file: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(pixels, good) from a cache file, or None if there is none; a corrupt one is deleted and rebuilt."""
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        with np.load(cache_file) as cached:
            return cached["pixels"], cached["good"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        log.warning("warning: the decoded-image cache %s is unreadable; deleting it and decoding the images again",
                    cache_file)
        cache_file.unlink(missing_ok=True)
        return None


def _some_readable(good: np.ndarray, files: Sequence[Path]) -> np.ndarray:
    """`good`, unless --skip-bad left nothing: an empty split would score as n=0 and 'succeed'."""
    if len(files) and not good.any():
        raise FerError(f"none of the {len(files)} image(s) could be read, e.g. {files[0]}; check the files")
    return good


def load_csv(path: Path, cache_dir: Path | None = None) -> dict[str, FaceSet]:
    """The original fer2013.csv (emotion, pixels[, Usage]) → splits by Usage (Training/PublicTest/PrivateTest)."""
    import pandas as pd

    try:
        # index_col=False: a row with one field too many would otherwise turn the first column into an
        # index and shift every column left, so the error named the wrong column.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, index_col=False)
    except pd.errors.ParserWarning:
        raise FerError(f"{path}: some row has more fields than the header; expected the fer2013.csv columns "
                       "emotion,pixels,Usage with the pixels as one space-separated field") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FerError(f"{path}: not a readable CSV ({error})") from None
    missing = {"emotion", "pixels"} - set(frame.columns)
    if missing:
        raise FerError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected the fer2013.csv "
                       f"columns emotion,pixels,Usage (found {', '.join(frame.columns)})")
    if frame.empty:
        raise FerError(f"{path}: the CSV has no rows")
    emotion = pd.to_numeric(frame["emotion"], errors="coerce")
    bad_emotion = np.flatnonzero(~emotion.isin(range(len(LABELS))).to_numpy())
    if len(bad_emotion):
        raise FerError(f"{path}: emotion must be an id 0-6 ({', '.join(LABELS)}); bad value on "
                       f"{len(bad_emotion)} row(s), first data row {bad_emotion[0] + 1}")
    pixels = _parse_pixel_rows(frame["pixels"].fillna(""), path)
    usage = frame["Usage"].fillna("Training") if "Usage" in frame.columns else pd.Series(["Training"] * len(frame))
    unknown_usage = sorted(set(usage) - set(CSV_USAGE_SPLITS))
    if unknown_usage:
        raise FerError(f"{path}: unknown Usage value(s) {', '.join(unknown_usage)}; expected {', '.join(CSV_USAGE_SPLITS)}")
    labels = emotion.to_numpy().astype(np.int64)
    splits = {}
    for usage_name, split in CSV_USAGE_SPLITS.items():
        rows = np.flatnonzero((usage == usage_name).to_numpy())
        if len(rows):
            splits[split] = FaceSet(pixels[rows], labels[rows], tuple(f"{path.name}:row{r + 1}" for r in rows))
            warn_missing_classes(labels[rows], f"{path} ({usage_name} rows)")
    if "train" not in splits:
        raise FerError(f"{path}: no rows with Usage=Training, so there is nothing to train on")
    return splits


def _parse_pixel_rows(rows, path: Path) -> np.ndarray:
    expected = IMAGE_SIZE * IMAGE_SIZE
    pixels = np.zeros((len(rows), expected), dtype=np.uint8)
    for i, text in enumerate(rows):
        try:
            values = np.array(text.split(), dtype=np.float64) if text else np.zeros(0)
        except ValueError:
            values = None
        if values is None:
            problem = "a value that is not a number"
        elif values.size != expected:
            problem = f"{values.size} values"
        elif not np.all((values >= 0) & (values <= 255) & (values == np.round(values))):  # NaN fails too
            problem = "values that are not whole numbers 0-255"
        else:
            pixels[i] = values
            continue
        raise FerError(f"{path}: data row {i + 1} has {problem}; each pixels cell needs {expected} "
                       "space-separated integers 0-255 (48x48)")
    return pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def stratified_split(labels: np.ndarray, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, valid indices): `valid_pct` of each class, chosen with a seeded generator."""
    if not 0.0 < valid_pct < 1.0:
        raise FerError(f"--valid-pct must be between 0 and 1, got {valid_pct}")
    rng = np.random.default_rng(seed)
    valid = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_valid = int(round(len(members) * valid_pct))
        if len(members) > 1:
            n_valid = min(max(n_valid, 1), len(members) - 1)
        else:
            n_valid = 0
        valid.append(members[:n_valid])
    valid_idx = np.sort(np.concatenate(valid))
    train_idx = np.setdiff1d(np.arange(len(labels)), valid_idx)
    held_out = len(valid_idx) / max(1, len(labels))
    if not 0.5 * valid_pct <= held_out <= 2 * valid_pct:  # every class keeps at least one face on each side
        log.warning("warning: --valid-pct %g holds out %d of %d faces (%.1f%%): each class keeps at least one face "
                    "in both splits, so the share is rounded that far", valid_pct, len(valid_idx), len(labels), 100 * held_out)
    return train_idx, valid_idx


def validation_split(splits: dict[str, FaceSet], valid_pct: float, seed: int) -> FaceSet:
    """The faces training validates on: valid/ if the data has one, else the seeded carve-out of train
    that `make_dataloaders` holds out with the same valid_pct and seed."""
    if "valid" in splits:
        return splits["valid"]
    _, index = stratified_split(splits["train"].labels, valid_pct, seed)
    return splits["train"].subset(index)


def recipe_splits(recipe: Recipe, data: str | Path | None = None) -> dict[str, FaceSet]:
    """The splits a recipe trained on (or those of `data`), read with the recipe's rules for unknown and bad files."""
    return load_splits(data or recipe.data, skip_unknown=recipe.skip_unknown, skip_bad=recipe.skip_bad)


def validation_faces(splits: dict[str, FaceSet], recipe: Recipe | None) -> FaceSet:
    """The validation split that training used: valid/ if the data has one, else the same seeded carve-out
    of train (the recipe's valid_pct and split_seed; `None`: a card without a recipe)."""
    if "valid" in splits:
        return splits["valid"]
    if recipe is None:
        raise FerError("the data has no valid/ split and the model card does not record valid_pct and split_seed, "
                       "so the validation images used in training cannot be recovered")
    return validation_split(splits, recipe.valid_pct, recipe.split_seed)


def _files_key(files: Sequence[Path]) -> str:
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _cache_file(key: str, cache_dir: Path | None) -> Path | None:
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        log.warning("cache folder %s is not writable; images will be decoded every run", cache_dir)
        return None
    return cache_dir / f"faces-{key}.npz"


def _save_cache(cache_file: Path | None, **arrays: np.ndarray) -> None:
    if cache_file is None:
        return
    from .atomic import atomic_path

    try:
        with atomic_path(cache_file) as temp:
            with open(temp, "wb") as handle:
                np.savez(handle, **arrays)
    except OSError as error:
        log.warning("could not write cache %s (%s)", cache_file, error)


def pixel_image(pixels: np.ndarray, index: int):
    """fastai get_x: an item is an index into one pixel array (bound with functools.partial)."""
    from fastai.vision.core import PILImageBW

    return PILImageBW.create(pixels[index])


def pixel_label(labels: np.ndarray, index: int) -> str:
    """fastai get_y: the class name of an item, from its fixed FER2013 id."""
    return LABELS[labels[index]]


SOFT_TARGET_WIDTH = 2 * NUM_CLASSES  # distillation targets: one-hot label, then the teacher's probabilities


def soft_targets(labels: np.ndarray, teacher: np.ndarray | None = None) -> np.ndarray:
    """[N, SOFT_TARGET_WIDTH] float32: each face's one-hot label, then its teacher probabilities (zeros: none)."""
    targets = np.zeros((len(labels), SOFT_TARGET_WIDTH), np.float32)
    targets[np.arange(len(labels)), labels] = 1.0
    if teacher is not None:
        targets[:, NUM_CLASSES:] = teacher
    return targets


def make_dataloaders(splits: dict[str, FaceSet], bs: int = 64, valid_pct: float = 0.1, seed: int = 42,
                     augment=None, device=None, num_workers: int = 0, fast: bool = True,
                     teacher: np.ndarray | None = None):
    """fastai DataLoaders (train, valid) from decoded splits; `valid/` if present, else a stratified split.

    `fast` builds batches with one array index (`ArrayDataLoader`) instead of fastai's per-item pipeline;
    both give identical batches. Other splits (test, private) ride along in the same lookup, so `split_dataloader(dls, name)`
    serves them through the identical item pipeline. The test split never influences training.
    `teacher` (probabilities [N, 7] for the train split's faces) makes every target a soft one
    (`soft_targets`): the training faces get their teacher probabilities, validation faces none.
    """
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.data import ImageBlock
    from fastai.vision.core import PILImageBW

    from .array_loader import ArrayDataLoader
    from .augment import batch_transforms

    names = ["train"] + [name for name in splits if name != "train"]
    offsets = np.cumsum([0] + [len(splits[name]) for name in names])
    index_of = {name: np.arange(offsets[i], offsets[i + 1]) for i, name in enumerate(names)}
    pixels = np.concatenate([splits[n].pixels for n in names])
    labels = np.concatenate([splits[n].labels for n in names])
    if "valid" in splits:
        train_idx, valid_idx = index_of["train"], index_of["valid"]
    else:
        local_train, local_valid = stratified_split(splits["train"].labels, valid_pct, seed)
        train_idx, valid_idx = index_of["train"][local_train], index_of["train"][local_valid]
    items = np.concatenate([train_idx, valid_idx]).tolist()
    block = DataBlock(blocks=(ImageBlock(cls=PILImageBW), CategoryBlock(vocab=list(LABELS), sort=False)),
                      get_x=partial(pixel_image, pixels), get_y=partial(pixel_label, labels),
                      splitter=IndexSplitter(list(range(len(train_idx), len(items)))),
                      batch_tfms=batch_transforms(augment))
    loader = {"dl_type": ArrayDataLoader, "pixels": pixels, "labels": labels} if fast else {}
    if teacher is not None:
        if not fast:
            raise FerError("distillation needs the fast array data loader")
        targets = soft_targets(labels)
        targets[train_idx, NUM_CLASSES:] = teacher[train_idx]  # the train split comes first in `pixels`
        loader["targets"] = targets
    dls = block.dataloaders(items, bs=bs, device=device, num_workers=num_workers, **loader)
    dls.split_items = {name: idx.tolist() for name, idx in index_of.items() if name not in ("train", "valid")}
    dls.split_items.update(train=train_idx.tolist(), valid=valid_idx.tolist())
    return dls


def split_dataloader(dls, split: str):
    """A non-shuffled, non-augmented DataLoader over one split (train/valid/test/private) of `dls`."""
    if split not in dls.split_items:
        raise FerError(f"this data has no {split!r} split (it has {', '.join(sorted(dls.split_items))})")
    return dls.test_dl(dls.split_items[split], with_labels=True)
