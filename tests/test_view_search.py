"""`fer_fastai.view_search`: validation accuracy of models over shifted and mirrored views of each face."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fer_fastai import __version__
from fer_fastai.data import FaceSet, load_splits, validation_split
from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS
from fer_fastai.models import create_model
from fer_fastai.predict import load_predictor
from fer_fastai.preprocess import pixels_to_input
from fer_fastai.view_search import (accuracy_percent, format_view_table, main, short_name, view_probabilities,
                                    view_set_scores, view_sets)

VALID_PCT = 0.5  # of the 8 training faces per class in `face_folder`: 4 per class to score


def save_member(folder: Path, data: Path, seed: int, flip: bool = True, temperature: float = 1.0,
                split_seed: int = 42) -> Path:
    """An untrained seed network (weights from torch seed `seed`) with the card a training run on `data` writes
    (its split, flips and calibration are all that scoring reads), as model.safetensors + model.json in `folder`."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    weights = folder / "model.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in create_model("seed").state_dict().items()}, str(weights))
    card = {"format": "fer-fastai model card v1", "arch": "seed", "arch_kwargs": {}, "labels": list(LABELS),
            "temperature": temperature, "versions": {"fer_fastai": __version__},
            "recipe": {"recipe": "fastai", "data": str(data), "out": str(folder), "valid_pct": VALID_PCT, "split_seed": split_seed,
                       "seed": seed, "skip_unknown": False, "skip_bad": False, "augment": {"flip": flip}}}
    (folder / "model.json").write_text(json.dumps(card))
    return weights


def validation_set(data: Path) -> FaceSet:
    """The faces the members were selected on: training's seeded carve-out of train."""
    return validation_split(load_splits(data), VALID_PCT, 42)


def validation_pixels(data: Path) -> np.ndarray:
    """The validation faces as the model's input [N, 1, 48, 48]."""
    return pixels_to_input(validation_set(data).pixels)


@pytest.fixture(scope="module")
def members(tmp_path_factory, face_folder) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [save_member(root / "alpha", face_folder, seed=1),
            save_member(root / "beta", face_folder, seed=2, temperature=1.7)]


def test_without_shifts_the_views_are_the_face_and_its_mirror_image(members, face_folder):
    probs, labels = view_probabilities(members[1], 0)
    pixels = validation_pixels(face_folder)
    predictor = load_predictor(members[1])
    assert sorted(probs) == [(0, 0, False), (0, 0, True)]
    assert np.allclose(probs[0, 0, False], predictor.predict_proba(pixels), atol=1e-6)
    assert np.allclose(probs[0, 0, True], predictor.predict_proba(np.ascontiguousarray(pixels[..., ::-1])), atol=1e-6)
    assert np.bincount(labels).tolist() == [4] * len(LABELS)  # half of train's 8 faces per class


def test_shifted_views_are_the_face_moved_within_its_reflect_padded_frame(members, face_folder):
    probs, _ = view_probabilities(members[0], 1, mirrors=False)
    pixels = validation_pixels(face_folder)
    padded = np.pad(pixels, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    predictor = load_predictor(members[0])
    assert len(probs) == 9 and not any(mirrored for _, _, mirrored in probs)
    for dy, dx in ((-1, -1), (0, 1), (1, 0)):
        moved = np.ascontiguousarray(padded[..., 1 + dy:49 + dy, 1 + dx:49 + dx])
        assert np.allclose(probs[dy, dx, False], predictor.predict_proba(moved), atol=1e-6)
    assert not np.allclose(probs[1, 0, False], probs[0, 0, False], atol=1e-4)  # the moves do change the answer


def test_view_sets_grow_from_the_plain_face_to_every_shift_with_mirrors():
    sets = view_sets(2)
    assert list(sets) == ["plain", "mirror", "shifts ≤ 1", "shifts ≤ 1 + mirrors", "shifts ≤ 2", "shifts ≤ 2 + mirrors"]
    assert [len(views) for views in sets.values()] == [1, 2, 9, 18, 25, 50]
    assert set(sets["shifts ≤ 1"]) < set(sets["shifts ≤ 2"]) and (0, 0, True) in sets["shifts ≤ 1 + mirrors"]


def confident(predicted: list[int], p: float) -> np.ndarray:
    """Probabilities putting `p` on each face's predicted class and the rest evenly on the others."""
    probs = np.full((len(predicted), len(LABELS)), (1 - p) / (len(LABELS) - 1))
    probs[np.arange(len(predicted)), predicted] = p
    return probs


def test_scores_average_probabilities_over_views_then_over_models():
    labels = np.array([0, 1, 2, 3])
    unsure = {(0, 0, False): confident([0, 1, 5, 5], 0.4),  # right on half of the faces, with little confidence
              (0, 0, True): confident([0, 1, 2, 3], 0.99)}  # the mirror images: all right
    stubborn = {view: confident([6, 6, 6, 6], 0.5) for view in unsure}
    scores = view_set_scores([unsure, stubborn], labels, 0)
    # per model, then the mean of both: alone the second model is never right, yet it lets the mean keep
    # the first model's mirrored answers, which it could not if accuracies were averaged instead
    assert scores == {"plain": [50.0, 0.0, 0.0], "mirror": [100.0, 0.0, 100.0]}
    assert accuracy_percent(confident([0, 1, 2, 2], 0.9), labels) == 75.0


def test_the_table_has_a_row_per_set_of_views_and_a_column_per_model():
    table = format_view_table(["runs/alpha/model.safetensors", "artifacts/fer_vgg.safetensors"],
                              {"plain": [50.0, 62.5, 75.0], "mirror": [100.0, 0.0, 87.5]}, 0).splitlines()
    assert table[0] == "validation accuracy, %"
    assert table[1].split() == ["views", "n", "alpha", "fer_vgg", "mean", "of", "all"]
    assert table[2].split() == ["plain", "1", "50.00", "62.50", "75.00"]
    assert table[3].split() == ["mirror", "2", "100.00", "0.00", "87.50"]
    assert short_name("runs/alpha/model.safetensors") == "alpha" and short_name("a/fer_seed.safetensors") == "fer_seed"


def test_cli_prints_each_models_accuracy_over_each_set_of_views(members, face_folder, capsys):
    main(*map(str, members), max_shift=1)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{members[0]}: 28 validation faces, 18 views")
    rows = {line[:24].strip(): line[24:].split() for line in out[out.index("validation accuracy, %") + 2:]}
    assert list(rows) == ["plain", "mirror", "shifts ≤ 1", "shifts ≤ 1 + mirrors"]
    assert [row[0] for row in rows.values()] == ["1", "2", "9", "18"]
    labels = validation_set(face_folder).labels
    plain = [accuracy_percent(load_predictor(path).predict_proba(validation_pixels(face_folder)), labels) for path in members]
    assert [float(score) for score in rows["plain"][1:3]] == pytest.approx(plain, abs=0.005)


@pytest.mark.parametrize("problem", ["none", "missing", "no-split", "other-split", "max-shift"])
def test_cli_refuses_bad_input_in_one_line(problem, members, seed_model_file, face_folder, tmp_path, capsys):
    models, max_shift, message = [str(members[0])], 1, None
    if problem == "none":
        models, message = [], "error: give at least one trained .safetensors model"
    elif problem == "missing":
        models.append(str(tmp_path / "nope.safetensors"))
        message = f"error: {tmp_path / 'nope.safetensors'}: no such model file"
    elif problem == "no-split":
        models.append(str(seed_model_file))
        message = f"error: {seed_model_file}: its model card does not record data, valid_pct, split_seed"
    elif problem == "other-split":
        models.append(str(save_member(tmp_path / "gamma", face_folder, seed=3, split_seed=7)))
        message = "ensemble members must share the validation split"
    else:
        max_shift, message = 24, "error: --max-shift must be a whole number of pixels from 0 to 23, got 24"
    with pytest.raises(SystemExit) as exit_info:
        main(*models, max_shift=max_shift)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and message in captured.err


def test_a_model_without_a_recorded_split_cannot_be_scored(seed_model_file):
    with pytest.raises(FerError, match="does not record the data it was trained on"):
        view_probabilities(seed_model_file, 0)
