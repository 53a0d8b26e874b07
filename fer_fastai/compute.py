"""Training compute: what a model cost to train, counted so that it means the same on every machine.

    python -m fer_fastai.compute artifacts/fer_vgg.safetensors artifacts/fer_ensemble.safetensors

Seconds depend on the machine (the same recipe has run at 50 to 392 faces/s on these 2-core CPUs), so a
training budget is counted in multiply-accumulates instead: 3 × (forward MACs per face at the size
trained: forward, and about twice that backward) × faces processed, summed over every epoch and every
run the model needs (an ensemble: its members), plus a teacher's inference MACs over the faces it
labelled (distillation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastcore.script import call_parse

from .errors import FerError, cli_errors
from .preprocess import IMAGE_SIZE

TRAINING_PASSES = 3  # forward + backward ≈ 3 forward passes


def progressive_size(epoch: int, n_epoch: int, start_size: int, full_size_at: float,
                     full_size: int = IMAGE_SIZE, step: int = 8) -> int:
    """The face size for `epoch`: `start_size` at first, growing in `step`-pixel steps to
    `full_size`, which it reaches at the fraction `full_size_at` of the epochs and keeps."""
    progress = epoch / (full_size_at * n_epoch) if full_size_at > 0 else 1.0
    if progress >= 1:
        return full_size
    levels = -(-(full_size - start_size) // step)  # sizes below full: start_size, start_size + step, …
    return min(full_size, start_size + int(progress * levels) * step)


@dataclass(frozen=True)
class Compute:
    """A model's training compute in MACs: its own training, and a teacher's labelling if it had one."""

    training: int
    teacher: int = 0

    @property
    def total(self) -> int:
        return self.training + self.teacher

    def __add__(self, other: "Compute") -> "Compute":
        return Compute(self.training + other.training, self.teacher + other.teacher)

    def as_dict(self) -> dict[str, int | str]:
        return {"total_macs": self.total, "training_macs": self.training, "teacher_macs": self.teacher,
                "formula": "3 × forward MACs per face at the size trained × faces processed, "
                           "+ the teacher's inference MACs per face × faces labelled"}


def training_macs(macs_at: Callable[[int], int], epochs: int, faces_per_epoch: int, start_size: int | None = None,
                  full_size_at: float = 0.5) -> int:
    """3 × MACs per face × faces, summed over the epochs; `macs_at(size)` gives the forward MACs of one
    size × size face (progressive resizing trains its first epochs on smaller faces)."""
    sizes = [progressive_size(epoch, epochs, start_size, full_size_at) if start_size else IMAGE_SIZE
             for epoch in range(epochs)]
    per_size = {size: macs_at(size) for size in set(sizes)}
    return sum(TRAINING_PASSES * per_size[size] * faces_per_epoch for size in sizes)


def card_compute(weights_path: str | Path) -> Compute:
    """The training compute of a saved model, from its card (recorded there since distillation came in;
    rebuilt from the recipe, the architecture and the data counts for older cards)."""
    from .model_io import load_card

    card = load_card(weights_path)
    if card.training_compute:
        return Compute(int(card.training_compute["training_macs"]), int(card.training_compute["teacher_macs"]))
    if card.is_ensemble:
        members = [Path(member.weights) for member in card.members]
        missing = [str(path) for path in members if not path.is_file()]
        if missing:
            raise FerError(f"{weights_path}: its member {missing[0]} is not here, so its training compute is unknown")
        return sum((card_compute(path) for path in members), Compute(0))
    if card.recipe is None or card.data is None or "train" not in card.data.counts:
        raise FerError(f"{weights_path}: the card does not record its recipe and training faces")
    return Compute(training_macs(macs_at_size(card.arch, card.arch_kwargs), card.recipe.epochs,
                                 card.data.counts["train"], card.recipe.start_size, card.recipe.full_size_at))


def macs_at_size(arch: str, arch_kwargs: dict) -> Callable[[int], int]:
    """Forward MACs of one face of a given size through a freshly built network."""
    from .models import count_macs, create_model

    model = create_model(arch, **arch_kwargs)
    return lambda size: count_macs(model, (1, 1, size, size))


def format_macs(macs: int) -> str:
    return f"{macs:.3g}".replace("e+", " × 10^")


@call_parse
def main(*models: str):  # saved models (.safetensors with their cards)
    "Print the training compute of saved models: 3 × MACs per face × faces processed (+ a teacher's labelling)."
    with cli_errors():
        if not models:
            raise FerError("give one or more .safetensors models")
        for path in models:
            compute = card_compute(path)
            teacher = f" (training {format_macs(compute.training)} + teacher {format_macs(compute.teacher)})" if compute.teacher else ""
            print(f"{path}: {format_macs(compute.total)} MACs{teacher}")
