"""`python -m fer_fastai.ensemble`: trained models answering as one (the mean of their calibrated probabilities).

    python -m fer_fastai.ensemble artifacts/fer_vgg.safetensors artifacts/fer_seed.safetensors --out runs/ensemble
    python -m fer_fastai.ensemble A.safetensors B.safetensors --shifts 1 --out runs/ensemble-shifted

`--shifts N` also averages over each face moved by up to N pixels ((2N+1)² views, test-time
augmentation), `--mirrors` over each of those views mirrored too, for the members trained with
flips (the others never saw a mirrored face and do worse on one, README); with either, one trained
model is enough.

The result is a run folder like training's (model.safetensors + card, metrics.json, plots/), so
`make ship`, export with parity, evaluate and the demo take it as they take one network. The
members must have been selected on the same validation split, or the ensemble's valid scores
would count faces that some member trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastcore.script import call_parse

from .atomic import check_output_folder, ensure_folder
from .calibrate import validation_faces
from .data import load_splits, recipe_split_seed
from .errors import FerError, cli_errors
from .metrics import format_report
from .model_io import load_card, load_model, new_card
from .models import ENSEMBLE, count_macs, count_parameters, create_model
from .train import finish_model

SPLIT_KEYS = ("data", "valid_pct", "split_seed")  # what fixes the validation split of a member's training run


def split_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """A run's SPLIT_KEYS from its card's recipe (older cards record the split's seed as `seed`)."""
    return {"data": recipe.get("data"), "valid_pct": recipe.get("valid_pct"), "split_seed": recipe_split_seed(recipe)}


FLIPLESS_VERSIONS = ("0.1.0",)  # fer_fastai versions whose training dropped the flips a recipe asked for (README)


def trained_with_flips(card: dict[str, Any]) -> bool:
    """Whether a trained network saw mirrored faces: its recipe asked for flips, in a version where they ran."""
    asked = bool(((card.get("recipe") or {}).get("augment") or {}).get("flip", False))
    return asked and (card.get("versions") or {}).get("fer_fastai") not in FLIPLESS_VERSIONS


def shared_recipe(cards: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The validation-split settings every member was trained with; an error names the member that differs."""
    settings = [split_settings(card.get("recipe") or {}) for card in cards]
    for name, setting in zip(names, settings):
        if None in setting.values():
            raise FerError(f"{name}: its model card does not record {', '.join(SPLIT_KEYS)}, "
                           "so its validation split is unknown; only trained run models can join an ensemble")
    first = settings[0]
    for name, setting in zip(names[1:], settings[1:]):
        different = [key for key in SPLIT_KEYS if setting[key] != first[key]]
        if different:
            raise FerError(f"{name} was trained with {', '.join(f'{key}={setting[key]!r}' for key in different)}, "
                           f"{names[0]} with {', '.join(f'{key}={first[key]!r}' for key in different)}: "
                           "ensemble members must share the validation split")
    return first


def build_ensemble(member_paths: list[str | Path], out: str | Path, data: str | None = None,
                   shifts: int = 0, mirrors: bool = False) -> dict[str, Any]:
    """Average `member_paths` (saved .safetensors models), over shifted views of each face with
    `shifts` > 0 and, with `mirrors`, mirrored ones for the members trained with flips, into
    `out`/model.safetensors; returns its metrics."""
    if len(member_paths) < (1 if shifts or mirrors else 2):
        raise FerError(f"an ensemble needs at least two trained models (or one with --shifts or --mirrors), "
                       f"got {len(member_paths)}")
    run_dir = check_output_folder(out)
    weights_path = run_dir / "model.safetensors"
    if weights_path.exists():
        raise FerError(f"{run_dir} already holds a model; choose another --out")
    names = [str(path) for path in member_paths]
    not_weights = [name for name in names if Path(name).suffix.lower() != ".safetensors"]
    if not_weights:
        raise FerError(f"{not_weights[0]}: ensemble members are trained .safetensors models (card beside them), "
                       "not exports")
    members = [load_model(path) for path in member_paths]
    cards = [card for _, card in members]
    recipe = shared_recipe(cards, names)
    data = data or recipe["data"]
    mirrored = [mirrors and trained_with_flips(card) for card in cards]
    if mirrors and not any(mirrored):
        raise FerError("--mirrors: no member was trained with flips (their cards say augment.flip false, or "
                       f"fer_fastai {' / '.join(FLIPLESS_VERSIONS)}, whose flips never ran); mirrored views would only hurt them")
    member_specs = [{"arch": card["arch"], "arch_kwargs": card.get("arch_kwargs", {}),
                     "temperature": float(card.get("temperature", 1.0)), "mirrors": mirror}
                    for card, mirror in zip(cards, mirrored)]
    model = create_model(ENSEMBLE, members=member_specs, shifts=shifts)
    for target, (member, _) in zip(model.members, members):
        target.load_state_dict(member.state_dict())
    model.eval()

    first_recipe = cards[0]["recipe"]  # shared_recipe checked that it records the validation split
    splits = load_splits(data, skip_unknown=first_recipe.get("skip_unknown", False),
                         skip_bad=first_recipe.get("skip_bad", False))
    card = new_card(ENSEMBLE, {"members": member_specs, "shifts": shifts},
                    recipe={"recipe": ENSEMBLE, **recipe, "data": str(data)},
                    members=[{"weights": name, "weights_sha256": member_card.get("weights_sha256"), "recipe": member_card.get("recipe"),
                              "metrics": member_card.get("metrics")} for name, member_card in zip(names, cards)],
                    data=cards[0].get("data"), model={"params": count_parameters(model), "macs": count_macs(model)})
    ensure_folder(run_dir)
    return finish_model(model, card, weights_path, validation_faces(splits, card["recipe"]), splits.get("test"), str(data),
                        {"members": names, "shifts": shifts, "mirrors": mirrors})


@call_parse
def main(*members: str,  # trained models to average: .safetensors files with their .json cards beside them
         out: str = "runs/ensemble",  # run folder to write (model.safetensors, model.json, metrics.json, plots/)
         data: str = None,  # data set for calibration and scores (default: the members' training data)
         shifts: int = 0,  # also average over each face moved by up to this many pixels: (2N+1)² views, as many times the cost
         mirrors: bool = False,  # also average over each view mirrored left-right, for the members trained with flips (twice their views)
         ):
    "Combine trained models into one ensemble model (mean of calibrated probabilities), calibrated and scored."
    with cli_errors():
        metrics = build_ensemble(list(members), out, data, shifts, mirrors)
        for split in ("valid", "test"):
            if split in metrics:
                print(format_report(metrics[split], title=f"\n{split}:"))
        if mirrors:
            specs = load_card(Path(out) / "model.safetensors")["arch_kwargs"]["members"]
            print("\nmirrored views for " + ", ".join(f"{name} ({'yes' if spec['mirrors'] else 'no: trained without flips'})"
                                                    for name, spec in zip(members, specs)))
        print(f"\nensemble of {len(members)} models written to {Path(out) / 'model.safetensors'}")
