"""`python -m fer_fastai.ensemble_search MODEL=MINUTES …`: which trained networks make the best ensemble within
a training budget? Validation accuracy of every combination.

    python -m fer_fastai.ensemble_search artifacts/fer_vgg.safetensors=121.3 artifacts/fer_seed.safetensors=21.3 \\
        runs/NAME/model.safetensors=61 … [--budget 150] [--shifts 1] [--mirrors] [--cache runs/view-cache]

Each model may carry its training cost in CPU-minutes after `=` (docs/results.md has them for the shipped
networks; a run trained on a GPU needs the CPU estimate, not its GPU time); without one, the combinations it joins
have an unknown cost and never count as within the budget. Every combination of the models is scored
as `fer_fastai.ensemble` would build it: calibrated probabilities averaged over each face's views
(`--shifts N`: every shift up to N pixels; 0: the face alone; `--mirrors`: each also mirrored, for
the networks trained with flips, as the ensemble does it), then over the members. It scores the
validation split the models were selected on, never the test split, so the ensemble it picks still
gets an honest test score. The members must share that split, as `fer_fastai.ensemble` requires.
Each model's probabilities are kept in --cache (by its weights' checksum and temperature), so a later search with
more models scores only the new ones.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastcore.script import call_parse

from .ensemble import mirrored_members
from .errors import FerError, cli_errors, require
from .model_io import file_sha256, load_card
from .view_search import MAX_SHIFT, accuracy_percent, member_cards, short_name, view_probabilities
from .views import view_count


@dataclass(frozen=True)
class Combination:
    """Models averaged as one ensemble: their names, its validation accuracy in %, and its training cost
    in CPU-minutes (None when a member's cost is unknown)."""

    members: tuple[str, ...]
    accuracy: float
    cost: float | None

    @property
    def names(self) -> str:
        return " + ".join(self.members)

    def fits(self, budget: float) -> bool:
        return self.cost is not None and self.cost <= budget


def model_and_minutes(argument: str) -> tuple[str, float | None]:
    """'runs/a/model.safetensors=61' → ('runs/a/model.safetensors', 61.0); no '=' (or nothing after it) → no known cost."""
    path, _, minutes = argument.partition("=")
    try:
        cost = float(minutes) if minutes else None
    except ValueError:
        cost = math.nan
    if cost is not None and not (math.isfinite(cost) and cost >= 0):
        raise FerError(f"{argument!r}: the cost after '=' must be CPU-minutes, e.g. {path}=61")
    return path, cost


def validation_probabilities(path: str | Path, shifts: int, mirrors: bool, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated validation probabilities averaged over the views, and the labels; read from `cache` when
    this model's weights were scored with these views and this temperature before (minutes for a big net),
    else scored and kept. The temperature is in the key: recalibrating a model changes its probabilities."""
    temperature = load_card(path).temperature
    cached = Path(cache) / f"{file_sha256(path)}-T{temperature:g}-shifts{shifts}{'-mirrors' * mirrors}.npz"
    if cached.is_file():
        with np.load(cached) as saved:
            return saved["probabilities"], saved["labels"]
    views, labels = view_probabilities(path, shifts, mirrors=mirrors)
    probabilities = np.mean(list(views.values()), axis=0)
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, probabilities=probabilities, labels=labels)
    return probabilities, labels


def rank_combinations(probabilities: list[np.ndarray], labels: np.ndarray, names: list[str],
                      minutes: list[float | None]) -> list[Combination]:
    """Every combination of the models (the mean of its members' `probabilities`), best validation accuracy
    first; equal ones keep the smaller combination first."""
    combinations = []
    for size in range(1, len(names) + 1):
        for members in itertools.combinations(range(len(names)), size):
            costs = [minutes[i] for i in members]
            combinations.append(Combination(tuple(names[i] for i in members),
                                            accuracy_percent(np.mean([probabilities[i] for i in members], axis=0), labels),
                                            None if None in costs else sum(costs)))
    return sorted(combinations, key=lambda combination: -combination.accuracy)


def within_budget(combinations: list[Combination], budget: float) -> list[Combination]:
    """The combinations whose known cost is at most `budget` CPU-minutes, in the given order."""
    return [combination for combination in combinations if combination.fits(budget)]


def format_combinations(combinations: list[Combination], budget: float) -> str:
    """One line per combination: valid accuracy, CPU-minutes (* within the budget, ? unknown), members."""
    lines = []
    for combination in combinations:
        cost = "?" if combination.cost is None else f"{combination.cost:6.1f}"
        mark = "?" if combination.cost is None else "*" if combination.fits(budget) else " "
        lines.append(f"{combination.accuracy:6.2f}%  {cost:>6} min {mark}  {combination.names}")
    return "\n".join(lines)


@call_parse
def main(*models: str,  # trained .safetensors models, each optionally =CPU-MINUTES of its training, e.g. runs/a/model.safetensors=61
         budget: float = 150,  # CPU-minutes of training allowed
         shifts: int = 1,  # views: every shift up to this many pixels (0: the face alone)
         mirrors: bool = False,  # also each view mirrored, for the networks trained with flips
         cache: str = "runs/view-cache",  # folder keeping each model's validation probabilities, by its weights' checksum
         top: int = 25,  # combinations to list
         ):
    "Which trained networks make the best ensemble within a training budget: validation accuracy of every combination."
    with cli_errors():
        require([(0 <= shifts <= MAX_SHIFT, f"--shifts must be a whole number of pixels from 0 to {MAX_SHIFT}, got {shifts}"),
                 (budget >= 0, f"--budget is CPU-minutes, at least 0, got {budget:g}"),
                 (top >= 1, f"--top must list at least 1 combination, got {top}")])
        paths, minutes = zip(*map(model_and_minutes, models)) if models else ((), ())
        mirrored = mirrored_members(member_cards(list(paths)), mirrors)
        probabilities, labels = [], None
        for path, mirror in zip(paths, mirrored):
            start = time.perf_counter()
            member_probabilities, member_labels = validation_probabilities(path, shifts, mirror, Path(cache))
            if labels is not None and not np.array_equal(member_labels, labels):
                raise FerError(f"{path}: its validation faces differ from {paths[0]}'s; if the data changed since "
                               f"they were scored, empty --cache {cache}")
            probabilities.append(member_probabilities)
            labels = member_labels
            views = view_count(shifts, mirror)
            print(f"{path}: {len(labels):,} validation faces, {views} view{'s' * (views > 1)}, {time.perf_counter() - start:.0f} s")

        combinations = rank_combinations(probabilities, labels, [short_name(path) for path in paths], list(minutes))
        views = view_count(shifts)
        twice = " (twice that for the networks trained with flips)" if any(mirrored) else ""
        print(f"\nvalidation accuracy over {views} view{'s' * (views > 1)} per face{twice}; * = within {budget:g} CPU-minutes")
        print(format_combinations(combinations[:top], budget))
        affordable = within_budget(combinations, budget)
        if affordable:
            # Listed apart: when the best sets all cost more, the top list alone shows no affordable runner-up.
            print(f"\nthe best within {budget:g} CPU-minutes:")
            print(format_combinations(affordable[:top], budget))
            best = affordable[0]
            print(f"\nbest within {budget:g} CPU-minutes: {best.names} ({best.accuracy:.2f}%, {best.cost:.1f} min)")
