"""Weights as safetensors with a model card beside them (no pickle), and loading that checks both."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path
from .card import ModelCard, card_path, read_card, write_card
from .errors import FerError
from .hashing import file_sha256
from .models import ARCHS, ENSEMBLE, create_model


def save_model(model: nn.Module, weights_path: str | Path, card: ModelCard) -> ModelCard:
    """Write weights then card, each atomically; the card records the weights' sha256. Returns the card."""
    weights_path = Path(weights_path)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(weights_path) as temp:
        try:
            save_file(state, str(temp), metadata={"arch": card.arch, "arch_kwargs": json.dumps(card.arch_kwargs)})
        except SafetensorError as error:  # safetensors reports a full disk as its own error, not an OSError
            raise FerError(f"cannot write {weights_path}: {error}; free some space or choose another path") from None
    card = card.replace(weights_sha256=file_sha256(weights_path))
    write_card(weights_path, card)
    return card


def load_card(weights_path: str | Path) -> ModelCard:
    """The card beside a weights file, for an architecture this version can build."""
    card = read_card(weights_path)
    if card.arch not in (*ARCHS, ENSEMBLE):
        raise FerError(f"{card_path(weights_path)}: unknown architecture {card.arch!r}; "
                       f"this version knows {', '.join((*ARCHS, ENSEMBLE))}")
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


def check_card_fits_weights(card: ModelCard, weights_path: str | Path) -> None:
    """The card must be the one written with these weights (its sha256): a card copied from another run
    would rebuild the right architecture with the wrong temperature, metrics and recipe."""
    if card.weights_sha256 is not None:
        actual = file_sha256(weights_path)
        if actual != card.weights_sha256:
            raise FerError(f"{weights_path}: its model card records sha256 {card.weights_sha256[:12]}… but the file is "
                           f"{actual[:12]}…; the card belongs to other weights")


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """NaN or inf in the weights (a diverged run) would make every answer NaN, scored as class 0."""
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise FerError(f"{source}: {len(broken)} weight tensor(s) hold NaN or inf (first: {broken[0]}); training "
                       "diverged, so retrain it (a lower --lr, or --lr auto)")


def load_model(weights_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card and load the weights, in eval mode on `device`. Every consumer
    (evaluate, export, the predictor, the demo, ensembles) loads through here, so each checks the same:
    a card for a known architecture, written with these weights, and weights that are finite and fit it."""
    card = load_card(weights_path)
    try:
        model = create_model(card.arch, **card.arch_kwargs)
    except (TypeError, ValueError) as error:  # arguments this version's architecture does not take
        raise FerError(f"{card_path(weights_path)}: arch_kwargs do not fit architecture {card.arch!r} ({error})") from None
    state = load_state(weights_path)
    check_card_fits_weights(card, weights_path)
    check_finite(state, str(weights_path))
    load_into(model, state, str(weights_path), card.arch)
    return model.to(device).eval(), card
