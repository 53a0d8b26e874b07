"""Weights as safetensors with a JSON model card beside them (no pickle), and loading that checks both."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .atomic import atomic_path, write_json
from .errors import FerError
from .labels import LABELS
from .models import ARCHS, ENSEMBLE, create_model
from .preprocess import INPUT_DESCRIPTION

CARD_FORMAT = "fer-fastai model card v1"


def card_path(weights_path: str | Path) -> Path:
    """The model card that belongs to a weights file: `model.safetensors` → `model.json`."""
    return Path(weights_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import fastai
    import numpy

    return {"fer_fastai": __version__, "torch": torch.__version__, "fastai": fastai.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def new_card(arch: str, arch_kwargs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A model card with everything a consumer needs to rebuild and trust the model."""
    return {"format": CARD_FORMAT, "arch": arch, "arch_kwargs": arch_kwargs, "labels": list(LABELS),
            "input": INPUT_DESCRIPTION, "temperature": 1.0, "versions": library_versions(), **fields}


def save_model(model: nn.Module, weights_path: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write weights then card, each atomically; the card records the weights' sha256. Returns the card."""
    weights_path = Path(weights_path)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(weights_path) as temp:
        save_file(state, str(temp), metadata={"arch": card["arch"], "arch_kwargs": json.dumps(card["arch_kwargs"])})
    card = {**card, "weights_sha256": file_sha256(weights_path)}
    write_json(card_path(weights_path), card)
    return card


def load_card(weights_path: str | Path) -> dict[str, Any]:
    path = card_path(weights_path)
    if not path.is_file():
        raise FerError(f"{weights_path}: model card {path.name} is missing beside it; "
                       "it records the architecture, so the weights cannot be used without it")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FerError(f"{path}: model card is not valid JSON ({error})") from None
    if not isinstance(card, dict) or not isinstance(card.get("arch_kwargs", {}), dict):
        raise FerError(f"{path}: not a model card (expected a JSON object with arch, arch_kwargs and labels)")
    if card.get("arch") not in (*ARCHS, ENSEMBLE):
        raise FerError(f"{path}: unknown architecture {card.get('arch')!r}; this version knows {', '.join((*ARCHS, ENSEMBLE))}")
    if list(card.get("labels", [])) != list(LABELS):
        raise FerError(f"{path}: labels {card.get('labels')} differ from FER2013's {list(LABELS)}")
    return card


def load_state(weights_path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(weights_path)
    if not path.is_file():
        raise FerError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise FerError(f"{path}: not a readable safetensors file ({error})") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load a state dict, turning a shape/key mismatch into a one-line 'other architecture' error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shape tensors"
                  f" (first: {(missing + unexpected + wrong)[0]})")
        raise FerError(f"{source}: weights do not fit architecture {arch!r}: {detail}; "
                       "was it saved from another architecture?")
    model.load_state_dict(state)


def load_model(weights_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its card and load the weights, in eval mode on `device`."""
    card = load_card(weights_path)
    try:
        model = create_model(card["arch"], **card.get("arch_kwargs", {}))
    except (TypeError, ValueError) as error:  # arguments this version's architecture does not take
        raise FerError(f"{card_path(weights_path)}: arch_kwargs do not fit architecture {card['arch']!r} ({error})") from None
    load_into(model, load_state(weights_path), str(weights_path), card["arch"])
    return model.to(device).eval(), card
