"""Evaluation CLI: every data layout, both backends, flip TTA beside the plain numbers, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_fastai.data import FaceSet
from fer_fastai.errors import FerError
from fer_fastai.eval_data import EvalData, load_eval_data
from fer_fastai.recipes import recipe_from_dict
from fer_fastai.evaluate import evaluation_report, main
from fer_fastai.scoring import predict, predict_faces
from fer_fastai.labels import LABELS
from fer_fastai.predict import load_predictor

from conftest import synthetic_faces


class FixedPredictor:
    """Reads the class it should predict from the pixel value (class id * 30) and gives it probability 0.7."""

    backend, labels, card, temperature = "fixed", LABELS, {}, 1.0

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        predicted = np.rint(batch[:, 0, 0, 0] * 255 / 30).astype(int)
        probs = np.full((len(batch), 7), 0.05)
        probs[np.arange(len(batch)), predicted] = 0.7
        return probs


def test_per_class_numbers_match_a_hand_computation():
    targets = np.array([0, 0, 0, 3, 3, 3, 3, 4, 4, 6])
    predicted = np.array([0, 0, 3, 3, 3, 3, 4, 4, 0, 6])
    faces = FaceSet(np.repeat(predicted * 30, 48 * 48).reshape(-1, 48, 48).astype(np.uint8), targets,
                    tuple(map(str, range(10))))
    predictor = FixedPredictor()
    result = evaluation_report(predictor, EvalData(faces, "hand example", True), predict_faces(predictor, faces), "fixed")
    report = result["report"]
    rows = report["per_class"]
    # angry: 2 of 3 right, 3 predicted; happy: 3 of 4, 4 predicted; sad: 1 of 2, 2 predicted; neutral: 1 of 1
    assert rows["angry"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert rows["happy"] == pytest.approx({"precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4, "support": 4})
    assert rows["sad"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert rows["neutral"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    assert rows["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["macro_f1"] == pytest.approx((2 / 3 + 3 / 4 + 1 / 2 + 1) / 4)  # classes present in the data
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4 + 1 / 2 + 1) / 4)
    assert report["loss"] == pytest.approx(-(7 * np.log(0.7) + 3 * np.log(0.05)) / 10)
    assert report["ece"] == pytest.approx(0.0)  # every confidence is 0.7 and 70% are right
    assert {(c["actual"], c["predicted"]) for c in report["most_confused"]} == {
        ("angry", "happy"), ("happy", "sad"), ("sad", "angry")}
    assert np.sum(report["confusion_matrix"]) == 10


@pytest.mark.parametrize("layout", ["folder root", "class folders", "csv"])
def test_every_labeled_layout_scores_all_test_images(layout, face_folder, face_csv, seed_model_file):
    data = {"folder root": face_folder, "class folders": face_folder / "test", "csv": face_csv}[layout]
    eval_data = load_eval_data(data, "test")
    assert eval_data.labeled and len(eval_data.faces) == 21
    predictor = load_predictor(seed_model_file)
    result = evaluation_report(predictor, eval_data, predict_faces(predictor, eval_data.faces), str(seed_model_file))
    assert result["n"] == 21
    assert np.sum(result["report"]["confusion_matrix"]) == 21
    assert sum(row["support"] for row in result["report"]["per_class"].values()) == 21


def test_csv_private_split_and_folder_train_split(face_csv, face_folder):
    assert len(load_eval_data(face_csv, "private").faces) == 21
    assert len(load_eval_data(face_folder, "train").faces) == 56


def test_tta_reports_both_and_averages_the_mirror_image(face_folder, seed_model_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    main(str(seed_model_file), data=str(face_folder), tta=True, json=str(out))
    printed = capsys.readouterr().out
    assert "plain" in printed and "flip TTA" in printed
    result = json.loads(out.read_text())
    main(str(seed_model_file), data=str(face_folder), json=str(out))
    plain_only = json.loads(out.read_text())
    assert "tta" not in plain_only
    assert result["report"] == plain_only["report"]  # TTA never replaces the plain numbers
    faces = load_eval_data(face_folder).faces
    predictor = load_predictor(seed_model_file)
    expected = (predict(predictor, faces.pixels) + predict(predictor, faces.pixels[:, :, ::-1])) / 2
    assert predict_faces(predictor, faces, tta=True).probs_tta == pytest.approx(expected)
    assert result["tta"]["report"]["accuracy"] == pytest.approx((expected.argmax(1) == faces.labels).mean())


def test_safetensors_and_onnx_give_the_same_numbers(face_folder, seed_model_file, tmp_path):
    from export.to_onnx import export_onnx

    onnx_path = tmp_path / "model.onnx"
    export_onnx(seed_model_file, onnx_path, data=face_folder / "test")
    eval_data = load_eval_data(face_folder, "test")
    results = {}
    for path in (seed_model_file, onnx_path):
        predictor = load_predictor(path)
        predictions = predict_faces(predictor, eval_data.faces)
        results[predictor.backend] = (predictions, evaluation_report(predictor, eval_data, predictions, str(path)))
    assert set(results) == {"torch", "onnx"}
    assert results["onnx"][1]["report"]["accuracy"] == results["torch"][1]["report"]["accuracy"]
    assert results["onnx"][0].probs == pytest.approx(results["torch"][0].probs, abs=1e-5)


def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pixels, _ = synthetic_faces(1)
    files = [folder / f"face_{i}.png" for i in range(n)]
    for i, file in enumerate(files):
        Image.fromarray(pixels[i % len(pixels)]).save(file)
    return files


def test_flat_folder_gives_one_csv_row_per_image(tmp_path, seed_model_file, capsys):
    files = write_images(tmp_path / "photos", 5)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    out = tmp_path / "predictions.csv"
    main(str(seed_model_file), data=str(tmp_path / "photos"), csv=str(out), tta=True)
    assert "wrote 5 predictions" in capsys.readouterr().out
    frame = pd.read_csv(out)
    assert list(frame.columns[:9]) == ["file", "label", *LABELS]
    assert [Path(f).name for f in frame["file"]] == [f.name for f in files]
    probs = frame[list(LABELS)].to_numpy()
    assert probs.sum(axis=1) == pytest.approx(np.ones(5), abs=1e-5)
    assert list(frame["label"]) == [LABELS[i] for i in probs.argmax(axis=1)]
    assert {"tta_label", "tta_happy"} <= set(frame.columns)


def test_flat_folder_csv_goes_to_stdout_without_csv(tmp_path, seed_model_file, capsys):
    write_images(tmp_path / "photos", 3)
    main(str(seed_model_file), data=str(tmp_path / "photos"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,label,angry") and len(lines) == 4


def write_linear_onnx(path: Path, labels: list[str], input_type: str = "FLOAT") -> Path:
    """A tiny ONNX classifier with the fer-fastai I/O and the given labels in its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(0, 0.05, (48 * 48, len(labels))).astype(np.float32)
    cast = [helper.make_node("Cast", ["image"], ["image_float"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        [*cast, helper.make_node("Flatten", ["image_float"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)], "linear",
        [helper.make_tensor_value_info("image", getattr(TensorProto, input_type), ["batch", 1, 48, 48])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", len(labels)]) for name in ("logits", "probs")],
        initializer=[numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"labels": json.dumps(labels)})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("layout", ["class folders", "unlabeled images"])
def test_a_split_that_a_single_folder_cannot_have_is_refused(layout, face_folder, tmp_path):
    if layout == "class folders":
        data, kind = face_folder / "test", "one folder of class folders"
    else:
        data, kind = tmp_path / "photos", "a folder of unlabeled images"
        data.mkdir()
        shutil.copy(next((face_folder / "test" / "happy").iterdir()), data / "face.png")
    with pytest.raises(FerError, match=f"--split valid does not apply to .*: it is {kind}, scored whole"):
        load_eval_data(data, "valid")


def test_a_model_without_a_class_scores_data_without_it(tmp_path, make_folder_dataset):
    labels = [label for label in LABELS if label != "disgust"]
    model = write_linear_onnx(tmp_path / "six.onnx", labels)
    data = make_folder_dataset({"test": 2})
    shutil.rmtree(data / "test" / "disgust")
    eval_data = load_eval_data(data, "test")
    predictions = predict_faces(load_predictor(model), eval_data.faces)
    assert predictions.probs.shape == (12, 7) and not predictions.probs[:, LABELS.index("disgust")].any()


def cli_error(capsys, *args, **kwargs) -> str:
    """Run the CLI, expect exit code 2 and one line on stderr; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(*args, **kwargs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.fixture
def model_copy(tmp_path, seed_model_file) -> Path:
    weights = tmp_path / "copy" / "model.safetensors"
    weights.parent.mkdir()
    shutil.copy(seed_model_file, weights)
    shutil.copy(seed_model_file.with_suffix(".json"), weights.with_suffix(".json"))
    return weights


def test_wrong_model_file_kind(tmp_path, face_folder, capsys):
    (tmp_path / "model.pt").write_bytes(b"pickle")
    assert "expected a .onnx or .safetensors model file" in cli_error(capsys, str(tmp_path / "model.pt"), data=str(face_folder))
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    assert "not a loadable ONNX model" in cli_error(capsys, str(tmp_path / "model.onnx"), data=str(face_folder))


def test_unreadable_weights_and_missing_card(model_copy, face_folder, capsys):
    model_copy.with_suffix(".json").unlink()
    assert "model card model.json is missing" in cli_error(capsys, str(model_copy), data=str(face_folder))
    model_copy.write_bytes(b"garbage")
    model_copy.with_suffix(".json").write_text(json.dumps({"arch": "seed", "labels": list(LABELS)}))
    assert "not a readable safetensors file" in cli_error(capsys, str(model_copy), data=str(face_folder))


def test_weights_of_another_architecture(model_copy, face_folder, capsys):
    card = json.loads(model_copy.with_suffix(".json").read_text())
    model_copy.with_suffix(".json").write_text(json.dumps({**card, "arch": "vgg"}))
    assert "weights do not fit architecture 'vgg'" in cli_error(capsys, str(model_copy), data=str(face_folder))


def test_data_with_a_class_the_model_does_not_know(tmp_path, make_folder_dataset, seed_model_file, capsys):
    data = make_folder_dataset({"test": 1})
    shutil.copytree(data / "test" / "happy", data / "test" / "bored")
    assert "unknown class folder(s) bored" in cli_error(capsys, str(seed_model_file), data=str(data))
    six = write_linear_onnx(tmp_path / "six.onnx", [label for label in LABELS if label != "disgust"])
    assert "the data has class(es) disgust that the model does not know" in cli_error(
        capsys, str(six), data=str(data), skip_unknown=True)
    foreign = write_linear_onnx(tmp_path / "foreign.onnx", [*LABELS[:6], "bored"])
    assert "predicts class(es) bored that FER2013 does not have" in cli_error(
        capsys, str(foreign), data=str(data), skip_unknown=True)


def test_unreadable_images(tmp_path, make_folder_dataset, seed_model_file, capsys):
    write_images(tmp_path / "photos", 3)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG truncated")
    err = cli_error(capsys, str(seed_model_file), data=str(tmp_path / "photos"))
    assert "1 unreadable image(s)" in err and "broken.png" in err and "--skip-bad" in err
    main(str(seed_model_file), data=str(tmp_path / "photos"), skip_bad=True)
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3
    data = make_folder_dataset({"test": 1})
    (data / "test" / "sad" / "broken.jpg").write_bytes(b"nope")
    assert "broken.jpg" in cli_error(capsys, str(seed_model_file), data=str(data))


def test_missing_split_data_or_labels(tmp_path, face_folder, seed_model_file, capsys):
    assert "--data is required" in cli_error(capsys, str(seed_model_file))
    assert "has no private/ folder" in cli_error(capsys, str(seed_model_file), data=str(face_folder), split="private")
    assert "unknown split 'dev'" in cli_error(capsys, str(seed_model_file), data=str(face_folder), split="dev")
    assert "card does not record how training carved" in cli_error(
        capsys, str(seed_model_file), data=str(face_folder), split="valid")
    (tmp_path / "empty").mkdir()
    assert "found no split folders" in cli_error(capsys, str(seed_model_file), data=str(tmp_path / "empty"))


def test_command_line_exit_code_and_one_line_error(tmp_path, face_folder):
    (tmp_path / "model.pt").write_bytes(b"x")
    done = subprocess.run([sys.executable, "-m", "fer_fastai.evaluate", str(tmp_path / "model.pt"), "--data",
                           str(face_folder)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'model.pt'}: expected a .onnx or .safetensors model file"


def test_every_image_unreadable_is_an_error_even_with_skip_bad(tmp_path, seed_model_file, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG truncated")
    assert "none of the 1 image(s) could be read" in cli_error(
        capsys, str(seed_model_file), data=str(tmp_path / "photos"), skip_bad=True)


def test_bad_device_and_missing_model_are_one_line_errors(tmp_path, face_folder, seed_model_file, capsys):
    assert "unknown device 'tpu'" in cli_error(capsys, str(seed_model_file), data=str(face_folder), device="tpu")
    assert f"{tmp_path / 'nothing'} does not exist" in cli_error(capsys, str(tmp_path / "nothing"), data=str(face_folder))


def test_outputs_go_into_new_folders_and_a_file_in_the_way_is_caught_first(tmp_path, face_folder, seed_model_file,
                                                                           capsys):
    report = tmp_path / "new" / "deeper" / "report.json"
    main(str(seed_model_file), data=str(face_folder), json=str(report))
    assert json.loads(report.read_text())["report"]["n"] == 21
    (tmp_path / "blocker").write_text("a file")
    for option in ("json", "plots"):
        target = tmp_path / "blocker" / "out"
        err = cli_error(capsys, str(seed_model_file), data=str(face_folder), **{option: str(target)})
        assert f"{tmp_path / 'blocker'} is a file; choose another path" in err


@pytest.mark.parametrize("card_text, message", [
    ("[1, 2]", "not a model card"),
    ('{"arch": "seed", "arch_kwargs": {"bogus": 1}, "labels": %s}', "arch_kwargs do not fit architecture 'seed'"),
])
def test_malformed_model_card_is_one_line(model_copy, face_folder, capsys, card_text, message):
    model_copy.with_suffix(".json").write_text(card_text.replace("%s", json.dumps(list(LABELS))))
    assert message in cli_error(capsys, str(model_copy), data=str(face_folder))


def test_onnx_with_a_uint8_input_is_refused_on_loading(tmp_path, face_folder, capsys):
    model = write_linear_onnx(tmp_path / "uint8.onnx", list(LABELS), input_type="UINT8")
    assert "expected one float input 'image'" in cli_error(capsys, str(model), data=str(face_folder))


def test_options_for_the_other_kind_of_data_are_refused(tmp_path, face_folder, seed_model_file, capsys):
    assert "--csv is for a folder of unlabeled images" in cli_error(
        capsys, str(seed_model_file), data=str(face_folder), csv=str(tmp_path / "p.csv"))
    write_images(tmp_path / "photos", 2)
    assert "--json and --plots need labeled data" in cli_error(
        capsys, str(seed_model_file), data=str(tmp_path / "photos"), json=str(tmp_path / "r.json"))


def test_valid_pct_scores_a_smaller_held_out_split_inside_the_models_own(face_folder, make_folder_dataset,
                                                                          model_copy, capsys):
    card = {"recipe": {"data": str(face_folder), "out": "", "valid_pct": 0.5, "split_seed": 42}}
    recipe = recipe_from_dict(card["recipe"], "a card")
    own = load_eval_data(face_folder, "valid", recipe).faces
    smaller = load_eval_data(face_folder, "valid", recipe, valid_pct=0.25).faces
    assert (len(own), len(smaller)) == (28, 14) and set(smaller.sources) < set(own.sources)
    with pytest.raises(FerError, match="at most the 0.5 the model held out in training .* got 0.6"):
        load_eval_data(face_folder, "valid", recipe, valid_pct=0.6)
    with pytest.raises(FerError, match="it needs --split valid, not test"):
        load_eval_data(face_folder, "test", recipe, valid_pct=0.25)
    with pytest.raises(FerError, match="does not record the valid_pct it was trained with"):
        load_eval_data(face_folder, "valid", None, valid_pct=0.25)
    with pytest.raises(FerError, match="has a valid/ folder of its own"):
        load_eval_data(make_folder_dataset({"train": 2, "valid": 2}), "valid", recipe, valid_pct=0.25)

    card_file = model_copy.with_suffix(".json")
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), **card}))
    main(str(model_copy), data=str(face_folder), split="valid", valid_pct=0.25)
    assert "(n=14)" in capsys.readouterr().out


def test_an_onnx_file_is_scored_on_the_validation_split_of_the_card_beside_it(seed_onnx_file, face_folder, tmp_path,
                                                                              capsys):
    """ONNX metadata leaves the recipe out; the card beside the file records the split."""
    onnx_copy = tmp_path / "model.onnx"
    shutil.copy(seed_onnx_file, onnx_copy)
    card = json.loads(seed_onnx_file.with_suffix(".json").read_text())
    card["recipe"] = {**(card.get("recipe") or {}), "data": str(face_folder), "out": "", "valid_pct": 0.5,
                      "split_seed": 42}
    onnx_copy.with_suffix(".json").write_text(json.dumps(card))
    main(str(onnx_copy), data=str(face_folder), split="valid", valid_pct=0.25)
    assert "(n=14)" in capsys.readouterr().out
