"""The model card: the JSON file beside a model's weights that says how to rebuild, trust and describe it.

`ModelCard` is its one typed form. `read_card` / `card_from_dict` are the one place that reads a card and
upgrades what older versions wrote (see CHANGELOG.md); `to_dict` writes it back in the same format.
An ONNX file carries a subset of the card in its metadata (`card_from_onnx_metadata`). numpy-, torch- and
fastai-free, so the ONNX demo and predictor can read cards too.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_json
from .errors import FerError
from .labels import LABELS
from .paths import sibling
from .preprocess import INPUT_DESCRIPTION
from .recipes import Recipe, TrainConfig, recipe_from_dict, recipe_to_dict
from .views import ENSEMBLE, member_mirrors, rows_per_face

CARD_FORMAT = "fer-fastai model card v1"
FLIPLESS_VERSIONS = ("0.1.0",)  # fer_fastai versions whose training dropped the flips a recipe asked for (docs/results.md)


@dataclass(frozen=True)
class DataRecord:
    """Which data trained the model, and how many faces each split had."""

    source: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSize:
    params: int
    macs: int  # multiply-adds per face, every test-time view included


@dataclass(frozen=True)
class MemberRecord:
    """Where an ensemble member came from: its weights file and checksum, its recipe and its scores."""

    weights: str
    weights_sha256: str | None = None
    recipe: TrainConfig | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    """Everything a consumer needs to rebuild, trust and describe a model (docs/models.md lists the fields)."""

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = LABELS
    input: str = INPUT_DESCRIPTION
    temperature: float = 1.0
    calibration: dict[str, Any] | None = None  # fitted T, ECE and NLL before/after on valid and test
    uncertainty: dict[str, Any] | None = None  # the confidence threshold below which answers are uncertain (selective.py)
    # The photo contract (contract.preprocess_contract), written by the export beside an .onnx, for runtimes
    # that cannot read ONNX metadata (onnxruntime-node and -web); None in cards written before it.
    preprocess: dict[str, Any] | None = None
    recipe: Recipe | None = None
    recipe_file: dict[str, str] | None = None  # {"path", "sha256"} of the recipe file the run was read from
    data: DataRecord | None = None
    model: ModelSize | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # headline numbers: valid_/test_ accuracy, macro_f1, …
    training_compute: dict[str, Any] | None = None  # MACs it cost to train (compute.Compute.as_dict)
    teacher: dict[str, Any] | None = None  # distillation: the teacher's file, sha256 and MACs per face
    versions: dict[str, str] = field(default_factory=dict)
    weights_sha256: str | None = None
    best_epoch: int | None = None  # the saved epoch, chosen by valid accuracy (--keep best) …
    last_epoch: int | None = None  # … or the last one (--keep last)
    lr: float | None = None
    lr_found: float | None = None
    device: str | None = None
    precision: str | None = None
    members: tuple[MemberRecord, ...] = ()
    corrections: tuple[str, ...] = ()  # notes on fields corrected after the fact, with the reason
    format: str = CARD_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept as written

    @property
    def threshold(self) -> float | None:
        """Answers with a lower top probability are uncertain; None: the card has no threshold yet."""
        return None if self.uncertainty is None else float(self.uncertainty["threshold"])

    @property
    def is_ensemble(self) -> bool:
        return self.arch == ENSEMBLE

    @property
    def saved_epoch(self) -> int | None:
        return self.best_epoch if self.best_epoch is not None else self.last_epoch

    @property
    def data_source(self) -> str | None:
        return self.data.source if self.data else None

    @property
    def test_ece(self) -> float | None:
        """Expected calibration error on the test split, after temperature scaling if the card has it."""
        calibrated = ((self.calibration or {}).get("test") or {}).get("ece_after")
        return calibrated if calibrated is not None else self.metrics.get("test_ece")

    @property
    def trained_with_flips(self) -> bool:
        """Whether a trained network saw mirrored faces: its recipe asked for flips, in a version where they ran."""
        asked = isinstance(self.recipe, TrainConfig) and self.recipe.augment is not None and self.recipe.augment.flip
        return asked and self.versions.get("fer_fastai") not in FLIPLESS_VERSIONS

    @property
    def member_mirrors(self) -> list[bool]:
        """For an ensemble, which members also see mirrored views (cards before 2026-11-29 said it once for all)."""
        return member_mirrors(self.arch_kwargs.get("members") or [], ensemble_wide=self.arch_kwargs.get("mirrors", False))

    @property
    def rows_per_face(self) -> int:
        """Rows of a network's batch one face becomes (an ensemble's views are rows too)."""
        return rows_per_face(self.arch, self.arch_kwargs)

    def replace(self, **changes: Any) -> "ModelCard":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON values, in the on-disk format (fields that are unset are left out)."""
        values: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "extra" or value is None or value == ():
                continue
            if item.name == "recipe":
                value = recipe_to_dict(value)
            elif item.name == "members":
                value = [{**asdict(member), "recipe": None if member.recipe is None else recipe_to_dict(member.recipe)}
                         for member in value]
            elif hasattr(value, "__dataclass_fields__"):
                value = asdict(value)
            values[item.name] = list(value) if isinstance(value, tuple) else value
        return {**values, **self.extra}


def card_from_dict(values: Any, source: str) -> ModelCard:
    """A card read from JSON, checked and upgraded; `source` names the file in error messages."""
    if not isinstance(values, dict) or not isinstance(values.get("arch"), str) \
            or not isinstance(values.get("arch_kwargs", {}), dict):
        raise FerError(f"{source}: not a model card (expected a JSON object with arch, arch_kwargs and labels)")
    if list(values.get("labels", [])) != list(LABELS):
        raise FerError(f"{source}: labels {values.get('labels')} differ from FER2013's {list(LABELS)}")
    known = {item.name for item in fields(ModelCard)} - {"extra"}
    card = {key: value for key, value in values.items() if key in known}
    extra = {key: value for key, value in values.items() if key not in known}
    temperature = checked_temperature(card.get("temperature", 1.0), source)
    recipe = card.get("recipe")
    data, size = card.get("data"), card.get("model")
    return ModelCard(**{**card,
                        "labels": tuple(card.get("labels", LABELS)),
                        "temperature": temperature,
                        "recipe": None if recipe is None else recipe_from_dict(recipe, f"{source} recipe"),
                        "data": None if data is None else DataRecord(**data),
                        "model": None if size is None else ModelSize(**size),
                        "members": tuple(_member(member, source) for member in card.get("members") or ()),
                        "corrections": tuple(card.get("corrections") or ()),
                        "extra": extra})


def checked_temperature(value: Any, source: str) -> float:
    """The softmax temperature, which must be a finite number above 0: T <= 0 would rank the classes
    backwards or divide by zero, and every consumer divides the logits by it."""
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        temperature = math.nan
    if not (math.isfinite(temperature) and temperature > 0):
        raise FerError(f"{source}: temperature must be a finite number above 0, got {value!r}; "
                       "recalibrate the model (python -m fer_fastai.calibrate) or restore its card")
    return temperature


def _member(values: dict[str, Any], source: str) -> MemberRecord:
    recipe = values.get("recipe")
    return MemberRecord(values["weights"], values.get("weights_sha256"),
                        None if recipe is None else recipe_from_dict(recipe, f"{source} member {values['weights']}"),
                        values.get("metrics") or {})


def card_path(weights_path: str | Path) -> Path:
    """The model card that belongs to a model file: `model.safetensors` (or `model.onnx`) → `model.json`."""
    return sibling(weights_path, "card")


def read_card(weights_path: str | Path) -> ModelCard:
    """The card beside `weights_path`; a missing or broken card is a one-line error naming it."""
    path = card_path(weights_path)
    if not path.is_file():
        raise FerError(f"{weights_path}: model card {path.name} is missing beside it; "
                       "it records the architecture, so the weights cannot be used without it")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FerError(f"{path}: model card is not valid JSON ({error})") from None
    return card_from_dict(values, str(path))


def write_card(weights_path: str | Path, card: ModelCard) -> None:
    write_json(card_path(weights_path), card.to_dict())


def card_from_onnx_metadata(metadata: dict[str, str], source: str) -> ModelCard:
    """The card an exported ONNX file carries in its metadata (export.to_onnx.metadata_for writes it)."""
    values = {key: maybe_json(value) for key, value in metadata.items()}
    temperature = checked_temperature(values.get("temperature", 1.0), source)
    metrics = values.get("metrics")
    threshold = values.get("uncertainty_threshold")
    preprocess = values.get("preprocess")
    return ModelCard(arch=str(values.get("arch", "?")), labels=tuple(values["labels"]), input=str(values.get("input", "")),
                     temperature=temperature, metrics=metrics if isinstance(metrics, dict) else {},
                     uncertainty=None if threshold is None else {"threshold": float(threshold)},
                     preprocess=preprocess if isinstance(preprocess, dict) else None,
                     weights_sha256=values.get("source_weights_sha256"),
                     versions={"fer_fastai": str(values.get("fer_fastai_version", "?"))})


def maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def library_versions() -> dict[str, str]:
    """Versions that shaped the weights; read from package metadata, so an ensemble built without
    training never imports fastai just to name its version."""
    return {"fer_fastai": __version__, **{name: _installed(name) for name in ("torch", "fastai", "numpy")},
            "python": platform.python_version()}


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def new_card(arch: str, arch_kwargs: dict[str, Any], **fields_: Any) -> ModelCard:
    """A model card for a model being made now, with the library versions that made it."""
    return ModelCard(arch=arch, arch_kwargs=arch_kwargs, versions=library_versions(), **fields_)
