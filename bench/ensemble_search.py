"""Which trained networks make the best ensemble within a training budget? Validation accuracy of every combination.

    python bench/ensemble_search.py artifacts/fer_vgg.safetensors=121.3 artifacts/fer_seed.safetensors=21.3 \\
        runs/NAME/model.safetensors=61 … [--budget 150] [--shifts 1] [--mirrors]

Each model may carry its training cost in CPU-minutes after `=` (README's table has them; a run
trained on a GPU needs the CPU estimate, not its GPU time). Every combination of the models is scored
as `fer_fastai.ensemble` would build it: calibrated probabilities averaged over each face's views
(`--shifts N`: every shift up to N pixels; 0: the face alone; `--mirrors`: each also mirrored, for
the networks trained with flips, as the ensemble does it), then over the members. It scores the
validation split the models were selected on, never the test split, so the ensemble it picks still
gets an honest test score. The members must share that split, as `fer_fastai.ensemble` requires.
Each model's probabilities are kept in --cache (by its weights' checksum), so a later search with
more models scores only the new ones.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from fer_fastai.ensemble import shared_recipe, trained_with_flips
from fer_fastai.errors import cli_errors
from fer_fastai.model_io import file_sha256, load_card
from fer_fastai.views import view_count
from test_time_views import short_name, view_probabilities


def model_and_minutes(argument: str) -> tuple[str, float | None]:
    """'runs/a/model.safetensors=61' → ('runs/a/model.safetensors', 61.0); no '=' → no known cost."""
    path, _, minutes = argument.partition("=")
    try:
        return path, (float(minutes) if minutes else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{argument!r}: the cost after '=' must be CPU-minutes, e.g. {path}=61") from None


def validation_probabilities(path: str, shifts: int, mirrors: bool, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated validation probabilities averaged over the views, and the labels; read from `cache` when
    this model's weights were scored with these views before (minutes for a big net), else scored and kept."""
    cached = cache / f"{file_sha256(path)}-shifts{shifts}{'-mirrors' * mirrors}.npz"
    if cached.is_file():
        with np.load(cached) as saved:
            return saved["probabilities"], saved["labels"]
    views, labels = view_probabilities(path, shifts, mirrors=mirrors)
    probabilities = np.mean(list(views.values()), axis=0)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cached, probabilities=probabilities, labels=labels)
    return probabilities, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=model_and_minutes, help="trained .safetensors models, each optionally =CPU-MINUTES")
    parser.add_argument("--shifts", type=int, default=1, help="views: every shift up to this many pixels (default 1)")
    parser.add_argument("--mirrors", action="store_true", help="also each view mirrored, for the networks trained with flips")
    parser.add_argument("--budget", type=float, default=150, help="CPU-minutes of training allowed (default 150)")
    parser.add_argument("--cache", type=Path, default=Path("runs/view-cache"),
                        help="folder keeping each model's validation probabilities (default runs/view-cache)")
    parser.add_argument("--top", type=int, default=25, help="combinations to list (default 25)")
    args = parser.parse_args()

    paths, minutes = zip(*args.models)
    with cli_errors():
        cards = [load_card(path) for path in paths]
        shared_recipe(cards, list(paths))  # before minutes of inference
    mirrored = [args.mirrors and trained_with_flips(card) for card in cards]
    probabilities, labels = [], None
    for path, mirror in zip(paths, mirrored):
        start = time.perf_counter()
        member_probabilities, labels = validation_probabilities(path, args.shifts, mirror, args.cache)
        probabilities.append(member_probabilities)
        views = view_count(args.shifts, mirror)
        print(f"{path}: {len(labels):,} validation faces, {views} view{'s' * (views > 1)}, {time.perf_counter() - start:.0f} s")

    rows = []
    for size in range(1, len(paths) + 1):
        for members in itertools.combinations(range(len(paths)), size):
            accuracy = 100 * float((np.mean([probabilities[i] for i in members], axis=0).argmax(axis=1) == labels).mean())
            costs = [minutes[i] for i in members]
            cost = None if None in costs else sum(costs)
            rows.append((accuracy, cost, " + ".join(short_name(paths[i]) for i in members)))
    rows.sort(key=lambda row: -row[0])
    views = view_count(args.shifts)
    mirrors = " (twice that for the networks trained with flips)" if any(mirrored) else ""
    print(f"\nvalidation accuracy over {views} view{'s' * (views > 1)} per face{mirrors}; * = within {args.budget:g} CPU-minutes")
    print_rows(rows[:args.top], args.budget)
    affordable = [row for row in rows if row[1] is not None and row[1] <= args.budget]
    if affordable:
        # Listed apart: when the best sets all cost more, the top list alone shows no affordable runner-up.
        print(f"\nthe best within {args.budget:g} CPU-minutes:")
        print_rows(affordable[:args.top], args.budget)
        accuracy, cost, names = affordable[0]
        print(f"\nbest within {args.budget:g} CPU-minutes: {names} ({accuracy:.2f}%, {cost:.1f} min)")


def print_rows(rows: list[tuple[float, float | None, str]], budget: float) -> None:
    """One line per combination: valid accuracy, CPU-minutes (* within the budget, ? unknown), members."""
    for accuracy, cost, names in rows:
        mark = "?" if cost is None else "*" if cost <= budget else " "
        print(f"{accuracy:6.2f}%  {'?' if cost is None else f'{cost:6.1f}':>6} min {mark}  {names}")


if __name__ == "__main__":
    main()
