"""`python -m fer_fastai.evaluate MODEL --data PATH`: score a .safetensors or .onnx model on any data.

Both backends go through the same path: decoded uint8 faces → `preprocess.pixels_to_input` →
`predictor.predict_proba` → `metrics.classification_report`, so their numbers are comparable.
PATH is a folder layout (`--split` picks train/valid/test), a fer2013.csv (`--split` picks the Usage),
a folder of class folders (one labeled split), or a flat folder of unlabeled images (→ predictions CSV).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from fastcore.script import call_parse

from .atomic import atomic_path, check_output_folder, write_json
from .calibrate import log_softmax, validation_faces
from .data import (CSV_USAGE_SPLITS, IMAGE_SUFFIXES, SPLIT_FOLDERS, FaceSet, decode_files, list_images, load_csv,
                   load_labeled_folder, load_splits)
from .errors import FerError, cli_errors
from .labels import LABELS, canonical_label
from .metrics import classification_report, expected_calibration_error, format_report
from .predict import Predictor, load_predictor
from .preprocess import pixels_to_input
from .spreadsheet import spreadsheet_safe

SPLITS = ("train", "valid", "test", "private")


@dataclass(frozen=True)
class EvalData:
    """Faces to score, and words for them in reports and plot titles. Unlabeled faces have label -1."""

    faces: FaceSet
    description: str
    labeled: bool

    @property
    def subject(self) -> str:
        """For plot titles: which data, how many faces."""
        return f"{self.description}, {len(self.faces):,} faces"


def load_eval_data(data: str | Path, split: str = "test", card: dict[str, Any] | None = None,
                   skip_unknown: bool = False, skip_bad: bool = False, valid_pct: float | None = None) -> EvalData:
    """One split of a folder layout or fer2013.csv, a folder of class folders, or a flat folder of images.

    `valid_pct` (split "valid" only) carves a smaller share of train than the card's, with its split seed.
    """
    path = Path(data)
    if split not in SPLITS:
        raise FerError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if valid_pct is not None:
        if split != "valid":
            raise FerError(f"--valid-pct carves a validation split out of train; it needs --split valid, not {split}")
        card = with_smaller_validation_split(card, valid_pct)
    if not path.exists():
        raise FerError(f"data path {path} does not exist")
    if path.is_file():
        return _pick_split(load_splits(path), split, f"{path} ({_usage_name(split)} rows)", card)
    subfolders = _subfolders(path)
    if any(name.lower() in SPLIT_FOLDERS for name in subfolders):
        layout = {SPLIT_FOLDERS[name.lower()]: path / name for name in subfolders if name.lower() in SPLIT_FOLDERS}
        if split in layout:
            if split == "valid" and valid_pct is not None:
                raise FerError(f"{path} has a valid/ folder of its own; --valid-pct carves a split out of train only")
            faces = load_labeled_folder(layout[split], skip_unknown, skip_bad)
            return EvalData(faces, f"{path} {split} split", True)
        if split == "valid" and "train" in layout:  # the carve-out of train that training used
            splits = {"train": load_labeled_folder(layout["train"], skip_unknown, skip_bad)}
            return _pick_split(splits, split, f"{path} valid split (carved out of train)", card)
        raise FerError(f"{path} has no {split}/ folder (it has {', '.join(sorted(layout))})")
    if any(canonical_label(name) is not None for name in subfolders):
        _check_whole_folder(path, split, "one folder of class folders")
        return EvalData(load_labeled_folder(path, skip_unknown, skip_bad), str(path), True)
    images = [file for file in path.iterdir() if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        _check_whole_folder(path, split, "a folder of unlabeled images")
        files = list_images(path)
        pixels, good = decode_files(files, skip_bad)
        sources = tuple(str(files[i]) for i in np.flatnonzero(good))
        return EvalData(FaceSet(pixels, np.full(len(sources), -1, dtype=np.int64), sources), f"{path} (unlabeled)", False)
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1:
        return _pick_split(load_csv(csvs[0]), split, f"{csvs[0]} ({_usage_name(split)} rows)", card)
    raise FerError(f"{path}: found no split folders (train/, test/), class folders ({', '.join(LABELS)}), "
                   f"fer2013.csv or images to evaluate on")


def with_smaller_validation_split(card: dict[str, Any] | None, valid_pct: float) -> dict[str, Any]:
    """The card with its recipe's valid_pct lowered to `valid_pct`.

    With the same split seed a smaller split lies inside the larger one (data.stratified_split), so the
    model never trained on its faces; a larger one would hold faces it trained on, and is refused.
    """
    trained_with = ((card or {}).get("recipe") or {}).get("valid_pct")
    if trained_with is None:
        raise FerError("--valid-pct: the model's card does not record the valid_pct it was trained with, "
                       "so a smaller held-out split cannot be carved from it")
    if not 0 < valid_pct <= trained_with:
        raise FerError(f"--valid-pct must be above 0 and at most the {trained_with} the model held out in training "
                       f"(a larger share of train would include faces it trained on), got {valid_pct}")
    return {**card, "recipe": {**card["recipe"], "valid_pct": valid_pct}}


def _check_whole_folder(path: Path, split: str, kind: str) -> None:
    """A folder without split folders is scored whole; asking it for another split than the default is a mistake."""
    if split != "test":
        raise FerError(f"--split {split} does not apply to {path}: it is {kind}, scored whole; "
                       "pass a folder with train/ and test/ (or a fer2013.csv) to pick a split")


def _subfolders(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _usage_name(split: str) -> str:
    return {value: key for key, value in CSV_USAGE_SPLITS.items()}.get(split, split)


def _pick_split(splits: dict[str, FaceSet], split: str, description: str, card: dict[str, Any] | None) -> EvalData:
    if split in splits:
        return EvalData(splits[split], description, True)
    if split == "valid":
        if card is None or "recipe" not in card:
            raise FerError("this data has no valid split and the model's card does not record how training carved "
                           "one out of train (valid_pct, seed); evaluate on --split test instead")
        return EvalData(validation_faces(splits, card["recipe"]), description, True)
    raise FerError(f"this data has no {split!r} split (it has {', '.join(sorted(splits))})")


def fer_columns(labels: tuple[str, ...], data_labels: np.ndarray) -> np.ndarray:
    """For each model output, its FER2013 id; an error if the data has classes the model does not predict."""
    ids = [canonical_label(label) for label in labels]
    foreign = [label for label, canonical in zip(labels, ids) if canonical is None]
    if foreign:
        raise FerError(f"the model predicts class(es) {', '.join(foreign)} that FER2013 does not have, "
                       "so it cannot be scored on FER2013 labels")
    columns = np.array([LABELS.index(canonical) for canonical in ids])
    present = np.unique(data_labels[data_labels >= 0])
    unknown = [LABELS[i] for i in present if i not in columns]
    if unknown:
        raise FerError(f"the data has class(es) {', '.join(unknown)} that the model does not know "
                       f"(it predicts {', '.join(labels)})")
    return columns


def predict(predictor: Predictor, pixels: np.ndarray, flip: bool = False, batch_size: int = 512,
            logits: bool = False) -> np.ndarray:
    """Probabilities (or raw logits) for uint8 faces [N, 48, 48], in batches; `flip` mirrors each face first."""
    if flip:
        pixels = pixels[:, :, ::-1]
    run = predictor.predict_logits if logits else predictor.predict_proba
    outputs = [run(pixels_to_input(pixels[start:start + batch_size])) for start in range(0, len(pixels), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, len(predictor.labels)), np.float32)


def to_fer_order(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Model outputs re-ordered into FER2013 id order (a class the model lacks gets probability 0)."""
    out = np.zeros((len(values), len(LABELS)), dtype=np.float64)
    out[:, columns] = values
    return out


@dataclass(frozen=True)
class Predictions:
    """Everything computed once per evaluation, so reports, plots and CSV never re-run the model."""

    probs: np.ndarray  # [N, 7] FER order, what the model says (calibrated if its card has a temperature)
    probs_uncalibrated: np.ndarray | None  # softmax(logits), T = 1; None if the backend gives no logits
    probs_tta: np.ndarray | None  # mean of probs of the face and its mirror image, with --tta


def predictions_from_logits(logits: np.ndarray, temperature: float, columns: np.ndarray) -> Predictions:
    """Calibrated and uncalibrated probabilities from one pass of raw logits (no TTA)."""
    return Predictions(to_fer_order(np.exp(log_softmax(logits, temperature)), columns),
                       to_fer_order(np.exp(log_softmax(logits)), columns), None)


def predict_faces(predictor: Predictor, faces: FaceSet, tta: bool = False) -> Predictions:
    """One pass over the faces (two with `tta`); a backend with logits gives both calibrated and raw probabilities."""
    columns = fer_columns(tuple(predictor.labels), faces.labels)
    if hasattr(predictor, "predict_logits"):
        predictions = predictions_from_logits(predict(predictor, faces.pixels, logits=True), temperature_of(predictor), columns)
    else:
        predictions = Predictions(to_fer_order(predict(predictor, faces.pixels), columns), None, None)
    if not tta:
        return predictions
    mirrored = to_fer_order(predict(predictor, faces.pixels, flip=True), columns)
    return replace(predictions, probs_tta=(predictions.probs + mirrored) / 2)


def temperature_of(predictor: Predictor) -> float:
    return float(getattr(predictor, "temperature", predictor.card.get("temperature", 1.0)))


def evaluation_report(predictor: Predictor, data: EvalData, predictions: Predictions, model: str) -> dict[str, Any]:
    """The JSON-ready result: the classification report, and with --tta the flip-averaged one beside it."""
    result: dict[str, Any] = {"model": str(model), "backend": predictor.backend, "data": data.description,
                              "n": len(data.faces), "temperature": temperature_of(predictor)}
    targets = data.faces.labels
    result["report"] = classification_report(predictions.probs, targets)
    if predictions.probs_uncalibrated is not None:
        result["ece_uncalibrated"] = expected_calibration_error(predictions.probs_uncalibrated, targets)
    if predictions.probs_tta is not None:
        result["tta"] = {"method": "mean of the probabilities of each face and its horizontal mirror",
                         "report": classification_report(predictions.probs_tta, targets)}
    return result


def format_tta(plain: dict[str, Any], tta: dict[str, Any]) -> str:
    """Plain and flip-TTA numbers side by side, so neither silently replaces the other."""
    lines = [f"{'':<18} {'plain':>8} {'flip TTA':>9} {'change':>8}"]
    rows = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("balanced accuracy", "balanced_accuracy"),
            ("ECE", "ece"), ("loss (NLL)", "loss")]
    for name, key in rows:
        lines.append(f"{name:<18} {plain[key]:>8.4f} {tta[key]:>9.4f} {tta[key] - plain[key]:>+8.4f}")
    for label in plain["per_class"]:
        a, b = plain["per_class"][label]["f1"], tta["per_class"][label]["f1"]
        lines.append(f"{'F1 ' + label:<18} {a:>8.4f} {b:>9.4f} {b - a:>+8.4f}")
    return "\n".join(lines)


def format_evaluation(result: dict[str, Any]) -> str:
    title = f"{result['model']} ({result['backend']}) on {result['data']}"
    text = format_report(result["report"], title=title)
    if "ece_uncalibrated" in result and result["temperature"] != 1.0:
        text += (f"\ncalibration: temperature {result['temperature']:.4f}; ECE {result['ece_uncalibrated']:.4f} at T=1 "
                 f"→ {result['report']['ece']:.4f}")
    if "tta" in result:
        text += "\n\nflip test-time augmentation, side by side:\n" + format_tta(result["report"], result["tta"]["report"])
    return text


def write_predictions_csv(path: str | Path | None, sources: tuple[str, ...], probs: np.ndarray,
                          labels: tuple[str, ...], probs_tta: np.ndarray | None = None) -> None:
    """file, label, one probability column per class (and tta_ columns with --tta); stdout if path is None."""
    import pandas as pd

    frame = pd.DataFrame({"file": [spreadsheet_safe(source) for source in sources],
                          "label": [labels[i] for i in probs.argmax(axis=1)]})
    for i, label in enumerate(labels):
        frame[label] = probs[:, i].round(6)
    if probs_tta is not None:
        frame["tta_label"] = [labels[i] for i in probs_tta.argmax(axis=1)]
        for i, label in enumerate(labels):
            frame[f"tta_{label}"] = probs_tta[:, i].round(6)
    if path is None:
        frame.to_csv(sys.stdout, index=False)
        return
    with atomic_path(path) as temp:
        frame.to_csv(temp, index=False)


def predict_unlabeled(predictor: Predictor, faces: FaceSet, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities in the model's own class order, for the predictions CSV."""
    probs = predict(predictor, faces.pixels)
    probs_tta = (probs + predict(predictor, faces.pixels, flip=True)) / 2 if tta else None
    return probs, probs_tta


@call_parse
def main(model: str,  # a .safetensors (with its .json card beside it) or an .onnx file
         data: str = None,  # folder layout, fer2013.csv, folder of class folders, or flat folder of unlabeled images
         split: str = "test",  # train, valid, test or private (fer2013.csv: test = PublicTest, private = PrivateTest)
         json: str = None,  # write the full result as JSON here
         plots: str = None,  # write confusion matrix, per-class scores, top losses, samples and reliability plots here
         tta: bool = False,  # also score the mean prediction of each face and its mirror image (both reported)
         csv: str = None,  # unlabeled images: write predictions here (default: stdout)
         device: str = "cpu",  # torch backend: cpu, cuda or mps
         skip_unknown: bool = False,  # leave out class folders with unknown names instead of stopping
         skip_bad: bool = False,  # leave out unreadable images instead of stopping
         valid_pct: float = None,  # with --split valid: a smaller share of train than training held out (same seed), e.g. 0.02
         ):
    "Score a trained model (.safetensors or .onnx) on labeled data, or predict a folder of unlabeled images."
    with cli_errors():
        if data is None:
            raise FerError("--data is required: a folder layout, a fer2013.csv, or a folder of images")
        for destination in (json, csv):
            if destination:
                check_output_folder(Path(destination).parent)
        if plots:
            check_output_folder(plots)
        predictor = load_predictor(model, device=device)
        eval_data = load_eval_data(data, split, predictor.card, skip_unknown, skip_bad, valid_pct)
        faces = eval_data.faces
        if eval_data.labeled and csv:
            raise FerError(f"{data} is labeled, so it is scored, not predicted: --csv is for a folder of unlabeled "
                           "images; use --json for the scores")
        if not eval_data.labeled and (json or plots):
            raise FerError(f"{data} has no labels, so there is nothing to score or plot: --json and --plots need "
                           "labeled data; use --csv for the predictions")
        if not eval_data.labeled:
            probs, probs_tta = predict_unlabeled(predictor, faces, tta)
            write_predictions_csv(csv, faces.sources, probs, tuple(predictor.labels), probs_tta)
            if csv:
                print(f"wrote {len(faces)} predictions to {csv}")
            return
        predictions = predict_faces(predictor, faces, tta)
        result = evaluation_report(predictor, eval_data, predictions, model)
        print(format_evaluation(result))
        if json:
            write_json(json, result)
            print(f"wrote {json}")
        if plots:
            from .interpret import write_data_plots

            written = write_data_plots(faces, predictions, plots, eval_data.subject, temperature_of(predictor))
            print(f"wrote {len(written)} plots to {plots}")
