"""What defines a run, as typed, frozen dataclasses, and recipe files that spell one out.

`TrainConfig` (with its `AugmentConfig`) is a trained network's recipe and `EnsembleRecipe` an
ensemble's; the model card stores them, and `recipe_from_dict` is the one place that reads them back,
upgrading what older cards wrote. A recipe file (`recipes/NAME.toml`) holds train or ensemble CLI
settings under the flags' names, so "how was this model made" has one answer that the Makefile calls
and the card records (`RecipeFile`). Neither torch nor fastai is imported here.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from .errors import FerError, require
from .preprocess import IMAGE_SIZE

RECIPE_SUFFIX = ".toml"
ENSEMBLE_RECIPE = "ensemble"  # an ensemble card's recipe name: built from trained networks, not trained


@dataclass(frozen=True)
class AugmentConfig:
    """What the training batches see; saved in the model card so a run can be repeated."""

    flip: bool = True
    max_rotate: float = 10.0  # degrees
    max_zoom: float = 1.1
    # fastai's perspective warp solves a small linear system per image: on a 2-core CPU it costs
    # 4 ms per batch of 64, more than flip + rotate + zoom + lighting together. Off unless asked for.
    max_warp: float = 0.0
    max_lighting: float = 0.2
    max_shift: int = 0  # pixels: each face moves by up to this much (reflect-padded), per image
    p_affine: float = 0.75
    p_lighting: float = 0.75
    erase_p: float = 0.25  # chance that one random rectangle of a face is replaced by noise
    erase_max_area: float = 0.25

    def __post_init__(self) -> None:
        checks = [(self.max_rotate >= 0, f"--max-rotate must be 0 or more degrees, got {self.max_rotate}"),
                  (self.max_zoom >= 1, f"--max-zoom must be 1 (off) or more, got {self.max_zoom}"),
                  (self.max_warp >= 0, f"--max-warp must be 0 or more, got {self.max_warp}"),
                  (0 <= self.max_lighting < 1, f"--max-lighting must be from 0 to below 1, got {self.max_lighting}"),
                  (self.max_shift >= 0, f"--max-shift must be 0 or more pixels, got {self.max_shift}"),
                  (0 <= self.erase_p <= 1, f"--erase-p is a probability from 0 to 1, got {self.erase_p}")]
        require(checks)


RECIPES = ("fastai", "seed")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEPS = ("best", "last")  # which epoch's weights a run saves: best valid accuracy, or the last one
MIN_START_SIZE = 16


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in model.json and checkpoint.pth so it can be repeated."""

    data: str
    out: str
    arch: str = "seed"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: str = "fastai"  # "fastai": one-cycle + augmentation + label smoothing; "seed": the original
    epochs: int = 30
    bs: int = 64
    lr: float | None = 3e-3  # None = lr_find
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off
    start_size: int | None = None  # progressive resizing: train faces start this small (None = off) …
    full_size_at: float = 0.5  # … and grow to 48x48 by this fraction of the epochs
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    valid_pct: float = 0.1
    seed: int = 42  # initial weights, augmentation, batch order
    split_seed: int = 42  # which train faces are held out for validation: apart from seed, so that
    # runs differing only in seed validate on the same faces and can be ensembled
    device: str = "auto"
    precision: str = "auto"
    patience: int | None = None  # early stopping on valid accuracy, off by default with one-cycle
    keep: str = "best"  # "best": the epoch with the best valid accuracy; "last": the last epoch
    skip_unknown: bool = False
    skip_bad: bool = False
    teacher: str | None = None  # distillation: a model file whose calibrated probabilities the network also learns
    distill_weight: float = 0.5  # the teacher's share of the loss (the labels' is 1 - this)
    distill_temperature: float = 2.0  # softens the teacher's and the student's distributions in the teacher's term

    def __post_init__(self) -> None:
        """Bad numbers fail here, before any data is decoded or a run folder made."""
        checks = [(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
                  (self.bs >= 1, f"--bs must be at least 1, got {self.bs}"),
                  (self.lr is None or self.lr > 0, f"--lr must be above 0, got {self.lr}"),
                  (self.weight_decay >= 0, f"--wd must be 0 or more, got {self.weight_decay}"),
                  (0 <= self.label_smoothing < 1, f"--label-smoothing must be from 0 to below 1, got {self.label_smoothing}"),
                  (self.mixup >= 0, f"--mixup is a Beta alpha, 0 (off) or more, got {self.mixup}"),
                  (0 < self.valid_pct < 1, f"--valid-pct must be between 0 and 1, got {self.valid_pct}"),
                  (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"),
                  (self.patience is None or self.patience >= 1, f"--patience must be at least 1, got {self.patience}"),
                  (self.keep in KEEPS, f"unknown --keep {self.keep!r}; choose one of {', '.join(KEEPS)}"),
                  (0 <= self.distill_weight <= 1, f"--distill-weight is a share from 0 to 1, got {self.distill_weight}"),
                  (self.distill_temperature > 0, f"--distill-temperature must be above 0, got {self.distill_temperature}")]
        require(checks)
        if self.start_size is not None and not MIN_START_SIZE <= self.start_size < IMAGE_SIZE:
            raise FerError(f"--start-size must be from {MIN_START_SIZE} (four 2x poolings leave 1 pixel) "
                           f"to {IMAGE_SIZE - 1} pixels, got {self.start_size}")
        if not 0 < self.full_size_at <= 1:
            raise FerError(f"--full-size-at is a fraction of the epochs, above 0 and at most 1; got {self.full_size_at}")

    @classmethod
    def for_recipe(cls, recipe: str, **overrides: Any) -> "TrainConfig":
        """The recipe's defaults, then every override that is not None."""
        if recipe not in RECIPES:
            raise FerError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        defaults: dict[str, Any] = {"recipe": recipe}
        if recipe == "seed":  # the original project: Adam 1e-3 constant, plain CE, bs 32, 20 epochs, no augmentation
            defaults.update(epochs=20, bs=32, lr=1e-3, weight_decay=0.0, label_smoothing=0.0, augment=None)
        defaults.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**defaults)


@dataclass(frozen=True)
class EnsembleRecipe:
    """An ensemble's recipe: the validation split it was calibrated on, which its members share."""

    data: str
    valid_pct: float
    split_seed: int
    recipe: str = ENSEMBLE_RECIPE
    skip_unknown: bool = False  # as its members read the data
    skip_bad: bool = False


Recipe = TrainConfig | EnsembleRecipe


def recipe_from_dict(values: dict[str, Any], source: str) -> Recipe:
    """A recipe as a model card or checkpoint stored it, upgraded: cards written before runs had a
    `split_seed` carved the validation split with `seed`, options added later take their defaults, and
    a recipe that does not say where its data and run folder were gets "" for them."""
    kind = EnsembleRecipe if values.get("recipe") == ENSEMBLE_RECIPE else TrainConfig
    values = {"data": "", **({"out": ""} if kind is TrainConfig else {}), **values}
    if "split_seed" not in values and "seed" in values:
        values["split_seed"] = values["seed"]
    known = {item.name for item in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FerError(f"{source}: the recipe has setting(s) {', '.join(unknown)} that this version of fer_fastai "
                       "does not know; was it written by a newer one?")
    if kind is TrainConfig and isinstance(values.get("augment"), dict):
        values["augment"] = AugmentConfig(**values["augment"])
    try:
        return kind(**values)
    except TypeError as error:  # a required setting is missing
        raise FerError(f"{source}: incomplete recipe ({error})") from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as JSON-ready values (what cards and checkpoints store)."""
    return _jsonable(asdict(recipe))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


@dataclass(frozen=True)
class RecipeFile:
    """Settings read from a recipe file, and where they came from (recorded in the model card)."""

    path: str
    sha256: str
    settings: dict[str, Any]

    def provenance(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


def is_recipe_file(name: str | None) -> bool:
    return name is not None and name.lower().endswith(RECIPE_SUFFIX)


def read_recipe_file(path: str | Path, allowed: Iterable[str]) -> RecipeFile:
    """A TOML file of `key = value` settings, each one of `allowed` (the command's flag names, with underscores)."""
    path = Path(path)
    if not path.is_file():
        raise FerError(f"recipe file {path} does not exist; shipped recipes are in recipes/")
    data = path.read_bytes()
    try:
        settings = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise FerError(f"{path}: not a valid TOML recipe ({error})") from None
    allowed = sorted(allowed)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise FerError(f"{path}: unknown setting(s) {', '.join(unknown)}; a recipe file may set {', '.join(allowed)}")
    nested = sorted(key for key, value in settings.items() if isinstance(value, dict))
    if nested:
        raise FerError(f"{path}: {', '.join(nested)} must be plain values (key = value), not tables")
    return RecipeFile(str(path), hashlib.sha256(data).hexdigest(), settings)
