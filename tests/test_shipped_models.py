"""The shipped models are what their cards say: test scores (slow: needs ../shared/fer2013), the ensemble's gain."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from export.to_onnx import DEFAULT_DATA
from fer_fastai.data import FaceSet
from fer_fastai.eval_data import load_eval_data
from fer_fastai.model_io import load_card
from fer_fastai.predict import load_predictor
from fer_fastai.scoring import predict_faces
from fer_fastai.recipes import recipe_to_dict

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SHIPPED = sorted(path for path in ARTIFACTS.glob("*.onnx") if not path.name.endswith(".int8.onnx"))


@cache
def real_test_faces() -> FaceSet:
    """The real test split, decoded once for all the shipped files."""
    return load_eval_data(DEFAULT_DATA, "test").faces


def accuracy_on_real_test(path: Path) -> float:
    faces = real_test_faces()
    probs = predict_faces(load_predictor(path), faces).probs
    return float((probs.argmax(axis=1) == faces.labels).mean())


@pytest.mark.slow
@pytest.mark.parametrize("onnx_path", SHIPPED, ids=lambda path: path.stem)
def test_shipped_onnx_scores_what_its_card_says(onnx_path: Path):
    if not DEFAULT_DATA.is_dir():
        pytest.skip(f"needs {DEFAULT_DATA}")
    card = load_card(onnx_path)
    assert round(accuracy_on_real_test(onnx_path), 4) == card.metrics["test_accuracy"]
    int8 = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    if int8.is_file():
        assert accuracy_on_real_test(int8) >= card.metrics["test_accuracy"] - 0.005


def test_shipped_ensemble_beats_each_member_on_valid_and_test():
    card = load_card(ARTIFACTS / "fer_ensemble.safetensors")
    for member in card.members:
        for split in ("valid", "test"):
            assert card.metrics[f"{split}_accuracy"] > member.metrics[f"{split}_accuracy"]


def reference_commands(module: str, target: str = "reference") -> list[list[str]]:
    """The argument lists `make TARGET` passes to `python -m MODULE`, as make expands them (nothing runs)."""
    repo = ARTIFACTS.parent
    lines = subprocess.run(["make", "-n", "-s", target], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [shlex.split(line.split(f"-m {module} ", 1)[1]) for line in lines if f"-m {module} " in line]


def cli_arguments(main, args: list[str]) -> dict:
    """What a `call_parse` command's function receives for `args`, without fastcore's own --pdb/--xtra."""
    from fastcore.script import anno_parser

    parsed = vars(anno_parser(main.__wrapped__).parse_args(args))
    return {name: value for name, value in parsed.items() if name not in ("pdb", "xtra")}


def test_make_reference_trains_what_the_shipped_cards_record(monkeypatch):
    """README's table must match what `make reference` (the ensemble's networks) and `make reference-resnet`
    produce: their training commands must ask for the recipes the shipped networks' cards record (paths
    and device aside), and the ensemble for the members and views its card records."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    import fer_fastai.ensemble as ensemble_module
    import fer_fastai.train as train_module

    configs = []
    recipe_files = []
    monkeypatch.setattr(train_module, "train", lambda config, resume=False, recipe_file=None, group=None: (
        configs.append(config), recipe_files.append(recipe_file)))
    monkeypatch.setattr(train_module, "_print_summary", lambda run_dir: None)
    for target in ("reference", "reference-resnet"):
        for args in reference_commands("fer_fastai.train", target):
            train_module.main.__wrapped__(**cli_arguments(train_module.main, args))
    shipped = {"vgg": "fer_vgg", "resnet": "fer_resnet", "seed": "fer_seed"}
    assert sorted(config.arch for config in configs) == sorted(shipped)
    assert sorted(Path(recipe_file.path).name for recipe_file in recipe_files) == sorted(f"{name}.toml" for name in shipped.values())
    for config in configs:
        recipe = recipe_to_dict(load_card(ARTIFACTS / f"{shipped[config.arch]}.safetensors").recipe)  # older cards upgraded
        asked = recipe_to_dict(config)
        for key in ("data", "out", "device"):
            asked.pop(key), recipe.pop(key)
        assert asked == recipe, shipped[config.arch]

    [ensemble_args] = reference_commands("fer_fastai.ensemble")
    arguments = cli_arguments(ensemble_module.main, ensemble_args)
    arguments["members"] = list(arguments.pop("members"))
    arguments.pop("out")
    asked = ensemble_module.ensemble_settings(**arguments)
    card = load_card(ARTIFACTS / "fer_ensemble.safetensors")
    assert card.arch_kwargs["shifts"] == asked["shifts"]
    assert any(card.member_mirrors) == asked["mirrors"]
    assert [member.weights for member in card.members] == asked["member_paths"]
