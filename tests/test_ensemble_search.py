"""`fer_fastai.ensemble_search`: every combination of trained models scored on valid, the best within a budget."""

import itertools
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fer_fastai import ensemble_search
from fer_fastai.ensemble_search import (Combination, format_combinations, main, model_and_minutes, rank_combinations,
                                        validation_probabilities, within_budget)
from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS
from fer_fastai.predict import load_predictor
from fer_fastai.view_search import accuracy_percent, view_probabilities

from test_view_search import confident, save_member, validation_pixels


@pytest.fixture(scope="module")
def members(tmp_path_factory, face_folder):
    """Three networks sharing a validation split; the last was trained without flips."""
    root = tmp_path_factory.mktemp("members")
    return [save_member(root / name, face_folder, seed=seed, flip=flip)
            for name, seed, flip in (("alpha", 1, True), ("beta", 2, True), ("gamma", 3, False))]


def answers(labels: np.ndarray, right_on: set[int]) -> np.ndarray:
    """A network's probabilities: sure (0.9) on the faces it gets right; elsewhere a hesitant wrong answer (0.3
    on the next class, 0.25 on the right one), so that an ensemble is right wherever one of its members is."""
    probs = confident([label if i in right_on else (label + 1) % len(LABELS) for i, label in enumerate(labels)], 0.9)
    for i in set(range(len(labels))) - right_on:
        probs[i] = 0.45 / (len(LABELS) - 2)
        probs[i, labels[i]], probs[i, (labels[i] + 1) % len(LABELS)] = 0.25, 0.3
    return probs


def test_the_best_within_the_budget_is_the_most_accurate_combination_that_fits():
    labels = np.arange(6)
    probabilities = [answers(labels, {0, 1, 2, 3, 4, 5}),  # big: always right, but over the budget alone
                     answers(labels, {0, 1, 2, 3}), answers(labels, {2, 3, 4}),  # mid and small: together right on 5 of 6
                     answers(labels, {0, 1, 2, 3, 4, 5})]  # unknown: always right, cost unknown
    names, minutes = ["big", "mid", "small", "unknown"], [100.0, 60.0, 20.0, None]
    ranked = rank_combinations(probabilities, labels, names, minutes)

    assert len(ranked) == 2 ** 4 - 1
    assert [combination.accuracy for combination in ranked] == sorted((c.accuracy for c in ranked), reverse=True)
    assert ranked[0] == Combination(("big",), 100.0, 100.0)  # ties keep the smaller combination first
    best = within_budget(ranked, 90)[0]
    assert best == Combination(("mid", "small"), pytest.approx(500 / 6), 80.0)
    fitting = [accuracy_percent(np.mean([probabilities[i] for i in members], axis=0), labels)
               for size in range(1, 5) for members in itertools.combinations(range(4), size)
               if None not in (costs := [minutes[i] for i in members]) and sum(costs) <= 90]
    assert best.accuracy == max(fitting) < ranked[0].accuracy
    assert not any(c.fits(1e9) for c in ranked if "unknown" in c.members)
    assert within_budget(ranked, 100)[0] == ranked[0]


def test_each_line_marks_whether_a_combination_fits_the_budget():
    lines = format_combinations([Combination(("a", "b"), 71.234, 80.0), Combination(("c",), 70.0, 121.3),
                                 Combination(("d",), 69.5, None)], 100).splitlines()
    assert lines == [" 71.23%    80.0 min *  a + b", " 70.00%   121.3 min    c", " 69.50%       ? min ?  d"]


def test_a_model_may_carry_its_cost_in_cpu_minutes():
    assert model_and_minutes("runs/a/model.safetensors=61") == ("runs/a/model.safetensors", 61.0)
    assert model_and_minutes("runs/a/model.safetensors") == ("runs/a/model.safetensors", None)
    assert model_and_minutes("a.safetensors=") == ("a.safetensors", None)
    for bad in ("abc", "-5", "nan", "inf"):
        with pytest.raises(FerError, match=rf"'a.safetensors={bad}': the cost after '=' must be CPU-minutes, e.g. a.safetensors=61"):
            model_and_minutes(f"a.safetensors={bad}")


def test_a_members_probabilities_are_the_mean_over_its_views_and_are_kept(members, tmp_path, monkeypatch):
    probabilities, labels = validation_probabilities(members[0], 1, True, tmp_path / "cache")
    views, view_labels = view_probabilities(members[0], 1, mirrors=True)
    assert len(views) == 18 and np.array_equal(labels, view_labels)
    assert np.allclose(probabilities, np.mean(list(views.values()), axis=0))
    assert len(list((tmp_path / "cache").glob("*-shifts1-mirrors.npz"))) == 1

    with monkeypatch.context() as patch:
        patch.setattr(ensemble_search, "view_probabilities", lambda *args, **kwargs: pytest.fail("scored again"))
        cached, cached_labels = validation_probabilities(members[0], 1, True, tmp_path / "cache")
    assert np.array_equal(cached, probabilities) and np.array_equal(cached_labels, labels)

    copy = tmp_path / "copy" / "model.safetensors"  # recalibrated in place: the same weights, another temperature
    copy.parent.mkdir()
    shutil.copy(members[0], copy)
    card = json.loads(members[0].with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps({**card, "temperature": card["temperature"] * 2}))
    recalibrated, _ = validation_probabilities(copy, 1, True, tmp_path / "cache")
    assert not np.allclose(recalibrated, probabilities)
    assert len(list((tmp_path / "cache").glob("*-shifts1-mirrors.npz"))) == 2


def test_cli_lists_every_combination_as_its_members_would_score_and_the_best_within_budget(members, face_folder, tmp_path,
                                                                                           capsys):
    minutes = [50.0, 40.0, 30.0]
    main(*(f"{path}={cost}" for path, cost in zip(members, minutes)), budget=75, shifts=0, cache=str(tmp_path))
    out = capsys.readouterr().out
    assert f"{members[0]}: 28 validation faces, 1 view," in out
    assert "validation accuracy over 1 view per face; * = within 75 CPU-minutes" in out

    # every listed combination scores as the mean of its members' own answers on the validation faces
    _, labels = view_probabilities(members[0], 0)
    own = [load_predictor(path).predict_proba(validation_pixels(face_folder)) for path in members]
    expected = {}
    for size in range(1, 4):
        for chosen in itertools.combinations(range(3), size):
            names = " + ".join(members[i].parent.name for i in chosen)
            expected[names] = (accuracy_percent(np.mean([own[i] for i in chosen], axis=0), labels), sum(minutes[i] for i in chosen))
    table = out.split("* = within 75 CPU-minutes\n")[1].split("\n\n")[0].splitlines()
    listed = {}
    for line in table:
        accuracy, cost, mark, names = re.fullmatch(r" *([\d.]+)% +([\d.]+) min ([* ])  (.+)", line).groups()
        listed[names] = (float(accuracy), float(cost))
        assert mark == ("*" if float(cost) <= 75 else " ")
    assert listed == {names: (pytest.approx(accuracy, abs=0.005), cost) for names, (accuracy, cost) in expected.items()}

    best_accuracy = max(accuracy for accuracy, cost in expected.values() if cost <= 75)
    best = re.search(r"best within 75 CPU-minutes: (.+) \(([\d.]+)%, ([\d.]+) min\)", out)
    assert float(best[2]) == pytest.approx(best_accuracy, abs=0.005) and float(best[3]) <= 75
    assert expected[best[1]][1] == float(best[3])


def test_cli_mirrors_only_the_networks_trained_with_flips(members, tmp_path, capsys):
    main(*map(str, members), shifts=1, mirrors=True, cache=str(tmp_path))
    out = capsys.readouterr().out
    assert [re.search(rf"{path}: 28 validation faces, (\d+) views", out)[1] for path in members] == ["18", "18", "9"]
    assert "over 9 views per face (twice that for the networks trained with flips)" in out
    assert "best within" not in out  # no model has a known cost


@pytest.mark.parametrize("models, options, message", [
    ((), {}, "error: give at least one trained .safetensors model"),
    (("{tmp}/nope.safetensors=10",), {}, "error: {tmp}/nope.safetensors: no such model file"),
    (("{alpha}=ten",), {}, "error: '{alpha}=ten': the cost after '=' must be CPU-minutes, e.g. {alpha}=61"),
    (("{alpha}=10", "{untrained}=5"), {}, "error: {untrained}: its model card does not record data, valid_pct, split_seed"),
    (("{alpha}=10",), {"shifts": 24}, "error: --shifts must be a whole number of pixels from 0 to 23, got 24"),
    (("{alpha}=10",), {"budget": -1.0}, "error: --budget is CPU-minutes, at least 0, got -1"),
])
def test_cli_refuses_bad_input_in_one_line(models, options, message, members, seed_model_file, tmp_path, capsys):
    fill = lambda text: text.format(tmp=tmp_path, alpha=members[0], untrained=seed_model_file)  # noqa: E731
    with pytest.raises(SystemExit) as exit_info:
        main(*map(fill, models), cache=str(tmp_path / "cache"), **options)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith(fill(message))
    assert not (tmp_path / "cache").exists()  # refused before any scoring


def test_command_line_parses_minutes_and_refuses_bad_ones_with_status_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fer_fastai.ensemble_search", "a.safetensors=ten", "--cache", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["error: 'a.safetensors=ten': the cost after '=' must be CPU-minutes, e.g. a.safetensors=61"]
