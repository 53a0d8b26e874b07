import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export.to_onnx import export_onnx
from fer_fastai.card import card_from_dict, read_card
from fer_fastai.ensemble import build_ensemble, main, shared_recipe
from fer_fastai.errors import FerError
from fer_fastai.labels import LABELS
from fer_fastai.model_io import load_model
from fer_fastai.predict import CPU_ROWS_PER_PASS, OnnxPredictor, TorchPredictor
from fer_fastai.scoring import softmax
from fer_fastai.train import TrainConfig, train

from conftest import synthetic_faces


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory, face_folder):
    """A second tiny trained network on the same data and validation split as `trained_run`."""
    out = tmp_path_factory.mktemp("runs") / "tiny-vgg"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_FASTAI_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return train(TrainConfig(data=str(face_folder), out=str(out), arch="vgg", arch_kwargs={"widths": [8, 8, 16, 16]},
                                 epochs=1, bs=8, lr=1e-3, device="cpu"))


@pytest.fixture(scope="module")
def ensemble_run(trained_run, vgg_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ensemble"
    build_ensemble([trained_run / "model.safetensors", vgg_run / "model.safetensors"], out)
    return out


def test_ensemble_answers_with_the_mean_of_its_members_calibrated_probabilities(trained_run, vgg_run, ensemble_run):
    images = synthetic_faces(2)[0][:, None].astype(np.float32) / 255
    members = [TorchPredictor(*load_model(run / "model.safetensors")) for run in (trained_run, vgg_run)]
    expected = np.mean([member.predict_proba(images) for member in members], axis=0)
    model, card = load_model(ensemble_run / "model.safetensors")
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    assert np.allclose(softmax(logits), expected, atol=1e-5)
    assert card.arch == "ensemble" and [m["arch"] for m in card.arch_kwargs["members"]] == ["seed", "vgg"]
    assert card.members[0].weights.endswith("model.safetensors") and card.members[0].weights_sha256


def test_ensemble_run_folder_is_complete_and_calibrated(ensemble_run):
    metrics = json.loads((ensemble_run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 21 and "accuracy" in metrics["valid"]
    card = json.loads((ensemble_run / "model.json").read_text())
    assert card["temperature"] == metrics["calibration"]["temperature"] > 0
    assert card["model"]["params"] > 1_572_551 and card["recipe"]["recipe"] == "ensemble"
    assert (ensemble_run / "plots" / "confusion_matrix.png").is_file()
    assert not (ensemble_run / "plots" / "learning_curves.png").exists()  # no training history of its own


def assert_exports_with_parity(run, face_folder, out) -> None:
    """Export passes its parity check, and the file answers like PyTorch on a batch and on a part of it."""
    report = export_onnx(run / "model.safetensors", out, data=face_folder)
    assert report["passed"] and report["argmax_differ"] == 0
    images = synthetic_faces(1)[0][:, None].astype(np.float32) / 255
    torch_probs = TorchPredictor(*load_model(run / "model.safetensors")).predict_proba(images)
    assert np.allclose(OnnxPredictor(out).predict_proba(images), torch_probs, atol=1e-5)
    assert np.allclose(OnnxPredictor(out).predict_proba(images[:3]), torch_probs[:3], atol=1e-5)


def test_ensemble_exports_to_onnx_with_parity(ensemble_run, face_folder, tmp_path):
    assert_exports_with_parity(ensemble_run, face_folder, tmp_path / "ensemble.onnx")


def test_members_must_share_the_validation_split(trained_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    card_file = other / "model.json"
    card = json.loads(card_file.read_text())
    card["recipe"]["split_seed"] = 7
    card_file.write_text(json.dumps(card))
    with pytest.raises(FerError, match=r"trained with split_seed=7, .* with split_seed=42: ensemble members must share the validation split"):
        build_ensemble([trained_run / "model.safetensors", other / "model.safetensors"], tmp_path / "ensemble")


def test_runs_that_differ_only_in_seed_share_the_split_and_old_cards_split_by_seed():
    """--seed varies a run's weights and batches, --split-seed its validation faces; cards from before
    split_seed existed carved their split with seed."""
    def card(**recipe):
        return card_from_dict({"arch": "seed", "labels": list(LABELS), "recipe": {"data": "faces", "out": "", "valid_pct": 0.1, **recipe}}, "a card")

    assert shared_recipe([card(seed=1, split_seed=42), card(seed=2, split_seed=42)], ["a", "b"]).split_seed == 42
    assert shared_recipe([card(seed=42), card(seed=7, split_seed=42)], ["old", "new"]).split_seed == 42
    with pytest.raises(FerError, match=r"new was trained with split_seed=42, old with split_seed=7"):
        shared_recipe([card(seed=7), card(seed=7, split_seed=42)], ["old", "new"])
    with pytest.raises(FerError, match=r"b: its model card does not record data, valid_pct, split_seed"):
        shared_recipe([card(seed=1), card_from_dict({"arch": "seed", "labels": list(LABELS)}, "a card without a recipe")], ["a", "b"])


def test_an_ensemble_cannot_be_a_member(trained_run, ensemble_run, tmp_path):
    with pytest.raises(FerError, match="list the networks of the inner ensemble instead"):
        build_ensemble([trained_run / "model.safetensors", ensemble_run / "model.safetensors"], tmp_path / "nested")
    assert not (tmp_path / "nested").exists()


def test_an_onnx_export_cannot_be_a_member(trained_run, tmp_path):
    with pytest.raises(FerError, match="model.onnx: ensemble members are trained .safetensors models"):
        build_ensemble([trained_run / "model.safetensors", tmp_path / "model.onnx"], tmp_path / "ensemble")


def test_ensemble_cli_refuses_one_member_in_one_line(trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(str(trained_run / "model.safetensors"), out=str(tmp_path / "ensemble"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: an ensemble needs at least two trained models (or one with --shifts or --mirrors), got 1"


def shifted_copies(pixels: np.ndarray, shifts: int) -> list[np.ndarray]:
    """Each face moved by every whole-pixel offset up to `shifts`, reflect-padded, written independently of the model."""
    padded = np.pad(pixels, ((0, 0), (shifts, shifts), (shifts, shifts)), mode="reflect")
    size = pixels.shape[-1]
    return [padded[:, shifts + dy:shifts + dy + size, shifts + dx:shifts + dx + size]
            for dy in range(-shifts, shifts + 1) for dx in range(-shifts, shifts + 1)]


@pytest.fixture(scope="module")
def shifted_run(trained_run, vgg_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "shifted"
    build_ensemble([trained_run / "model.safetensors", vgg_run / "model.safetensors"], out, shifts=1)
    return out


def test_shifted_ensemble_averages_its_members_over_nine_moved_copies_of_each_face(trained_run, vgg_run, shifted_run):
    pixels = synthetic_faces(2)[0]
    members = [TorchPredictor(*load_model(run / "model.safetensors")) for run in (trained_run, vgg_run)]
    copies = shifted_copies(pixels, 1)
    expected = np.mean([member.predict_proba(copy[:, None].astype(np.float32) / 255)
                        for member in members for copy in copies], axis=0)
    model, card = load_model(shifted_run / "model.safetensors")
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels[:, None].astype(np.float32) / 255)).numpy()
    assert np.allclose(softmax(logits), expected, atol=1e-5)
    plain = np.mean([member.predict_proba(pixels[:, None].astype(np.float32) / 255) for member in members], axis=0)
    assert not np.allclose(expected, plain, atol=1e-4)  # the copies do change the answer
    assert card.arch_kwargs["shifts"] == 1
    assert card.model.macs == 9 * json.loads((trained_run / "model.json").read_text())["model"]["macs"] + 9 * (
        json.loads((vgg_run / "model.json").read_text())["model"]["macs"])


def test_shifted_ensemble_exports_to_onnx_with_parity_at_any_batch_size(shifted_run, face_folder, tmp_path):
    assert_exports_with_parity(shifted_run, face_folder, tmp_path / "shifted.onnx")


def test_one_model_over_shifted_views_is_an_ensemble_of_one(trained_run, tmp_path):
    from demo.app import architecture_name

    build_ensemble([trained_run / "model.safetensors"], tmp_path / "one", shifts=2)
    assert architecture_name(read_card(tmp_path / "one" / "model.safetensors")) == "seed, 25 shifted views per face"


@pytest.fixture(scope="module")
def mirrored_run(trained_run, vgg_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mirrored"
    build_ensemble([trained_run / "model.safetensors", vgg_run / "model.safetensors"], out, shifts=1, mirrors=True)
    return out


def test_mirrored_ensemble_also_averages_the_mirror_image_of_every_moved_copy(trained_run, vgg_run, mirrored_run):
    pixels = synthetic_faces(2)[0]
    members = [TorchPredictor(*load_model(run / "model.safetensors")) for run in (trained_run, vgg_run)]
    copies = shifted_copies(pixels, 1)
    copies += [copy[:, :, ::-1] for copy in copies]
    expected = np.mean([member.predict_proba(np.ascontiguousarray(copy[:, None]).astype(np.float32) / 255)
                        for member in members for copy in copies], axis=0)
    model, card = load_model(mirrored_run / "model.safetensors")
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels[:, None].astype(np.float32) / 255)).numpy()
    assert np.allclose(softmax(logits), expected, atol=1e-5)
    assert [member["mirrors"] for member in card.arch_kwargs["members"]] == [True, True]
    assert card.model.macs == 18 * json.loads((trained_run / "model.json").read_text())["model"]["macs"] + 18 * (
        json.loads((vgg_run / "model.json").read_text())["model"]["macs"])


def test_mirrored_ensemble_exports_to_onnx_with_parity_at_any_batch_size(mirrored_run, face_folder, tmp_path):
    assert_exports_with_parity(mirrored_run, face_folder, tmp_path / "mirrored.onnx")


def test_one_model_over_its_mirror_image_is_an_ensemble_of_one(trained_run, tmp_path):
    from demo.app import architecture_name

    build_ensemble([trained_run / "model.safetensors"], tmp_path / "one", mirrors=True)
    assert architecture_name(read_card(tmp_path / "one" / "model.safetensors")) == "seed, 2 mirrored views per face"


def without_flips(run, folder, version: str | None = None):
    """A copy of `run`'s model whose card says it trained without flips (or with them, in `version`)."""
    folder.mkdir()
    shutil.copy(run / "model.safetensors", folder / "model.safetensors")
    card = json.loads((run / "model.json").read_text())
    if version:
        card["versions"]["fer_fastai"] = version
    else:
        card["recipe"]["augment"]["flip"] = False
    (folder / "model.json").write_text(json.dumps(card))
    return folder / "model.safetensors"


def test_flips_count_only_from_versions_where_they_ran(trained_run, tmp_path):
    assert read_card(trained_run / "model.safetensors").trained_with_flips
    for name, version in (("unflipped", None), ("flipless-version", "0.1.0")):
        assert not read_card(without_flips(trained_run, tmp_path / name, version)).trained_with_flips


@pytest.fixture(scope="module")
def mixed_run(trained_run, vgg_run, tmp_path_factory):
    """`--shifts 1 --mirrors` over a member trained with flips (the seed net) and one without (the vgg net)."""
    unflipped = without_flips(vgg_run, tmp_path_factory.mktemp("runs") / "unflipped")
    out = tmp_path_factory.mktemp("runs") / "mixed"
    build_ensemble([trained_run / "model.safetensors", unflipped], out, shifts=1, mirrors=True)
    return out


def test_mirrors_reach_only_the_members_trained_with_flips(trained_run, vgg_run, mixed_run):
    unflipped = Path(json.loads((mixed_run / "model.json").read_text())["members"][1]["weights"])
    pixels = synthetic_faces(2)[0]
    copies = shifted_copies(pixels, 1)
    as_input = lambda copy: np.ascontiguousarray(copy[:, None]).astype(np.float32) / 255  # noqa: E731
    flipped_member, plain_member = (TorchPredictor(*load_model(path)) for path in (trained_run / "model.safetensors", unflipped))
    expected = (np.mean([flipped_member.predict_proba(as_input(copy)) for copy in copies + [c[:, :, ::-1] for c in copies]], axis=0)
                + np.mean([plain_member.predict_proba(as_input(copy)) for copy in copies], axis=0)) / 2
    model, card = load_model(mixed_run / "model.safetensors")
    with torch.no_grad():
        logits = model(torch.from_numpy(as_input(pixels))).numpy()
    assert np.allclose(softmax(logits), expected, atol=1e-5)
    assert [member["mirrors"] for member in card.arch_kwargs["members"]] == [True, False]
    one_network_macs = lambda run: json.loads((run / "model.json").read_text())["model"]["macs"]  # noqa: E731
    assert card.model.macs == 18 * one_network_macs(trained_run) + 9 * one_network_macs(vgg_run)

    from demo.app import architecture_name
    assert architecture_name(card) == ("ensemble of seed (18 shifted and mirrored views per face) + "
                                       "vgg (9 shifted views per face)")


def test_mixed_mirrors_export_to_onnx_with_parity(mixed_run, face_folder, tmp_path):
    assert_exports_with_parity(mixed_run, face_folder, tmp_path / "mixed.onnx")


def test_ensemble_cli_says_which_members_see_mirrored_views(trained_run, vgg_run, tmp_path, capsys):
    unflipped = without_flips(vgg_run, tmp_path / "unflipped")
    main(str(trained_run / "model.safetensors"), str(unflipped), out=str(tmp_path / "mixed"), mirrors=True)
    assert (f"mirrored views for {trained_run / 'model.safetensors'} (yes), {unflipped} (no: trained without flips)"
            in capsys.readouterr().out)


def test_mirrors_for_members_that_never_saw_a_mirror_are_refused_in_one_line(trained_run, tmp_path, capsys):
    unflipped = without_flips(trained_run, tmp_path / "unflipped")
    with pytest.raises(SystemExit) as exit_info:
        main(str(unflipped), out=str(tmp_path / "ensemble"), mirrors=True)
    assert exit_info.value.code == 2
    assert "--mirrors: no member was trained with flips" in capsys.readouterr().err
    assert not (tmp_path / "ensemble" / "model.safetensors").exists()


def test_torch_passes_count_every_view_of_a_face_as_a_row(trained_run, shifted_run, mirrored_run, mixed_run):
    for run, rows in ((trained_run, 1), (shifted_run, 9), (mirrored_run, 18), (mixed_run, 18)):
        assert read_card(run / "model.safetensors").rows_per_face == rows
        assert TorchPredictor.from_file(run / "model.safetensors").batch_size == CPU_ROWS_PER_PASS // rows


def test_cards_that_mirror_the_whole_ensemble_still_load_so(mirrored_run):
    from fer_fastai.models import create_model

    card = json.loads((mirrored_run / "model.json").read_text())
    older = [{key: value for key, value in member.items() if key != "mirrors"} for member in card["arch_kwargs"]["members"]]
    assert create_model("ensemble", members=older, shifts=1, mirrors=True).mirrors == [True, True]
    assert create_model("ensemble", members=older, shifts=1).mirrors == [False, False]


@pytest.mark.parametrize("shifts", [-1, 24, 1.5])
def test_impossible_shifts_are_refused_in_one_line(trained_run, tmp_path, capsys, shifts):
    with pytest.raises(SystemExit) as exit_info:
        main(str(trained_run / "model.safetensors"), out=str(tmp_path / "ensemble"), shifts=shifts)
    assert exit_info.value.code == 2
    assert "shifts must be a whole number of pixels from 0 to 23" in capsys.readouterr().err


def test_demo_names_the_ensembles_members_and_their_training(ensemble_run):
    from demo.app import architecture_name, training_text

    card = read_card(ensemble_run / "model.safetensors")
    assert architecture_name(card) == "ensemble of seed + vgg"
    shifted = card.replace(arch_kwargs={**card.arch_kwargs, "shifts": 1})
    assert architecture_name(shifted) == "ensemble of seed + vgg, 9 shifted views per face"
    mirrored = card.replace(arch_kwargs={**card.arch_kwargs, "shifts": 1, "mirrors": True})
    assert architecture_name(mirrored) == "ensemble of seed + vgg, 18 shifted and mirrored views per face"
    assert training_text(card) == ("mean of the calibrated probabilities of seed (fastai recipe, 2 epochs), "
                                   "vgg (fastai recipe, 1 epochs)")
