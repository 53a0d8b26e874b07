"""`python -m fer_fastai.ensemble`: trained models answering as one (the mean of their calibrated probabilities).

    python -m fer_fastai.ensemble artifacts/fer_vgg.safetensors artifacts/fer_seed.safetensors --out runs/ensemble
    python -m fer_fastai.ensemble A.safetensors B.safetensors --shifts 1 --out runs/ensemble-shifted
    python -m fer_fastai.ensemble --recipe recipes/fer_ensemble.toml --out runs/ensemble   # the shipped one

`--shifts N` also averages over each face moved by up to N pixels ((2N+1)² views, test-time
augmentation), `--mirrors` over each of those views mirrored too, for the members trained with
flips (the others never saw a mirrored face and do worse on one, docs/models.md); with either, one trained
model is enough.

The result is a run folder like training's (model.safetensors + card, metrics.json, plots/), so
`make ship`, export with parity, evaluate and the demo take it as they take one network. The
members must have been selected on the same validation split, or the ensemble's valid scores
would count faces that some member trained on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fastcore.script import call_parse

from .atomic import check_output_folder, ensure_folder
from .card import FLIPLESS_VERSIONS, MemberRecord, ModelCard, ModelSize, new_card, read_card
from .data import recipe_splits, validation_faces
from .errors import FerError, cli_errors
from .finish import finish_model
from .metrics import format_report
from .model_io import load_model
from .models import ENSEMBLE, count_macs, count_parameters, create_model
from .recipes import EnsembleRecipe, RecipeFile, read_recipe_file

SPLIT_KEYS = ("data", "valid_pct", "split_seed")  # what fixes the validation split of a member's training run


def shared_recipe(cards: list[ModelCard], names: list[str]) -> EnsembleRecipe:
    """The validation split every member was trained with; an error names the member that differs."""
    for name, card in zip(names, cards):
        if card.recipe is None:
            raise FerError(f"{name}: its model card does not record {', '.join(SPLIT_KEYS)}, "
                           "so its validation split is unknown; only trained run models can join an ensemble")
    settings = [{key: getattr(card.recipe, key) for key in SPLIT_KEYS} for card in cards]
    first = settings[0]
    for name, setting in zip(names[1:], settings[1:]):
        different = [key for key in SPLIT_KEYS if setting[key] != first[key]]
        if different:
            raise FerError(f"{name} was trained with {', '.join(f'{key}={setting[key]!r}' for key in different)}, "
                           f"{names[0]} with {', '.join(f'{key}={first[key]!r}' for key in different)}: "
                           "ensemble members must share the validation split")
    return EnsembleRecipe(**first, skip_unknown=cards[0].recipe.skip_unknown, skip_bad=cards[0].recipe.skip_bad)


def refuse_repeated_members(cards: list[ModelCard], names: list[str]) -> None:
    """The same weights twice would only weigh one network double (use --shifts/--mirrors for more views)."""
    seen: dict[str, str] = {}
    for name, card in zip(names, cards):
        if card.weights_sha256 in seen:
            raise FerError(f"{name} and {seen[card.weights_sha256]} are the same weights (sha256 "
                           f"{card.weights_sha256[:12]}…); an ensemble needs different networks")
        if card.weights_sha256:
            seen[card.weights_sha256] = name


def mirrored_members(cards: list[ModelCard], mirrors: bool) -> list[bool]:
    """Which members see mirrored views when `mirrors` is asked for: those trained with flips (the others never
    saw a mirrored face and do worse on one)."""
    return [mirrors and card.trained_with_flips for card in cards]


def build_ensemble(member_paths: list[str | Path], out: str | Path, data: str | None = None,
                   shifts: int = 0, mirrors: bool = False, recipe_file: RecipeFile | None = None) -> dict[str, Any]:
    """Average `member_paths` (saved .safetensors models), over shifted views of each face with
    `shifts` > 0 and, with `mirrors`, mirrored ones for the members trained with flips, into
    `out`/model.safetensors; returns its metrics. `recipe_file`, if the settings came from one, goes in the card."""
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
    recipe = replace(shared_recipe(cards, names), **({"data": str(data)} if data else {}))
    refuse_repeated_members(cards, names)
    mirrored = mirrored_members(cards, mirrors)
    if mirrors and not any(mirrored):
        raise FerError("--mirrors: no member was trained with flips (their cards say augment.flip false, or "
                       f"fer_fastai {' / '.join(FLIPLESS_VERSIONS)}, whose flips never ran); mirrored views would only hurt them")
    member_specs = [{"arch": card.arch, "arch_kwargs": card.arch_kwargs, "temperature": card.temperature, "mirrors": mirror}
                    for card, mirror in zip(cards, mirrored)]
    model = create_model(ENSEMBLE, members=member_specs, shifts=shifts)
    for target, (member, _) in zip(model.members, members):
        target.load_state_dict(member.state_dict())
    model.eval()

    splits = recipe_splits(recipe)
    card = new_card(ENSEMBLE, {"members": member_specs, "shifts": shifts}, recipe=recipe,
                    recipe_file=recipe_file.provenance() if recipe_file else None,
                    members=tuple(MemberRecord(name, member_card.weights_sha256, member_card.recipe, member_card.metrics)
                                  for name, member_card in zip(names, cards)),
                    data=cards[0].data, model=ModelSize(count_parameters(model), count_macs(model)))
    ensure_folder(run_dir)
    return finish_model(model, card, weights_path, validation_faces(splits, recipe), splits.get("test"), recipe.data,
                        {"members": names, "shifts": shifts, "mirrors": mirrors})


@call_parse
def main(*members: str,  # trained models to average: .safetensors files with their .json cards beside them
         recipe: str = None,  # a recipe file (recipes/NAME.toml) with members, shifts, mirrors; flags given here override it
         out: str = "runs/ensemble",  # run folder to write (model.safetensors, model.json, metrics.json, plots/)
         data: str = None,  # data set for calibration and scores (default: the members' training data)
         shifts: int = None,  # also average over each face moved by up to this many pixels: (2N+1)² views, as many times the cost (default 0)
         mirrors: bool = False,  # also average over each view mirrored left-right, for the members trained with flips (twice their views)
         ):
    "Combine trained models into one ensemble model (mean of calibrated probabilities), calibrated and scored."
    with cli_errors():
        settings = ensemble_settings(recipe, members=list(members), data=data, shifts=shifts, mirrors=mirrors)
        recipe_file = settings.pop("recipe_file")
        metrics = build_ensemble(**settings, out=out, recipe_file=recipe_file)
        for split in ("valid", "test"):
            if split in metrics:
                print(format_report(metrics[split], title=f"\n{split}:"))
        if settings["mirrors"]:
            specs = read_card(Path(out) / "model.safetensors").arch_kwargs["members"]
            print("\nmirrored views for " + ", ".join(f"{name} ({'yes' if spec['mirrors'] else 'no: trained without flips'})"
                                                    for name, spec in zip(settings["member_paths"], specs)))
        print(f"\nensemble of {len(settings['member_paths'])} models written to {Path(out) / 'model.safetensors'}")


RECIPE_FILE_KEYS = ("members", "data", "shifts", "mirrors")


def ensemble_settings(recipe: str | None, members: list[str], data: str | None, shifts: int | None,
                      mirrors: bool) -> dict[str, Any]:
    """build_ensemble's arguments: the recipe file's settings (if any), overridden by those given on the command line."""
    recipe_file = read_recipe_file(recipe, RECIPE_FILE_KEYS) if recipe else None
    settings = dict(recipe_file.settings) if recipe_file else {}
    given = {"members": members or None, "data": data, "shifts": shifts, "mirrors": mirrors or None}
    settings.update({key: value for key, value in given.items() if value is not None})
    member_paths = settings.get("members", [])
    if not isinstance(member_paths, list) or not all(isinstance(path, str) for path in member_paths):
        raise FerError(f"{recipe}: members must be a list of .safetensors paths, got {member_paths!r}")
    return {"member_paths": member_paths, "data": settings.get("data"), "shifts": settings.get("shifts", 0),
            "mirrors": bool(settings.get("mirrors", False)), "recipe_file": recipe_file}
