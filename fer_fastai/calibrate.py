"""Temperature scaling: one scalar T, fitted on the validation split, so that softmax(logits / T) means what it says.

Guo et al. 2017, "On Calibration of Modern Neural Networks". T > 0 only rescales confidence, so the argmax
(and accuracy) never changes. The fit uses raw logits, so refitting a calibrated model gives the same T.
`python -m fer_fastai.calibrate MODEL.safetensors` calibrates a model trained before this step existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastcore.script import call_parse

from .atomic import check_output_file
from .card import card_path, write_card
from .data import FaceSet, load_splits, recipe_splits, validation_faces
from .errors import FerError, cli_errors
from .metrics import expected_calibration_error
from .preprocess import pixels_to_input
from .scoring import log_softmax
from .selective import fit_uncertainty

# T is searched in this range; a fit at either end means the logits are degenerate (e.g. a perfectly
# separable validation set pushes T towards 0), which the report then shows.
TEMPERATURE_RANGE = (0.05, 20.0)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    return float(-log_softmax(logits, temperature)[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE with the lowest NLL.

    NLL is convex in beta = 1/T, with derivative mean(E_softmax(beta*z)[z] - z_target), which rises with beta;
    bisection on its sign (in log beta) finds the minimum without an optimiser library.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if len(targets) == 0:
        raise FerError("cannot fit a temperature on an empty validation split")

    def slope(beta: float) -> float:
        probs = np.exp(log_softmax(logits, 1.0 / beta))
        return float(((probs * logits).sum(axis=1) - logits[np.arange(len(targets)), targets]).mean())

    low, high = np.log(1.0 / TEMPERATURE_RANGE[1]), np.log(1.0 / TEMPERATURE_RANGE[0])
    if slope(np.exp(low)) >= 0:
        return TEMPERATURE_RANGE[1]
    if slope(np.exp(high)) <= 0:
        return TEMPERATURE_RANGE[0]
    for _ in range(60):  # 60 halvings of a ~6-wide log interval: far below float32 logit precision
        middle = (low + high) / 2
        if slope(np.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(1.0 / np.exp((low + high) / 2))


def calibration_scores(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE and NLL before (T = 1) and after (T = temperature) on one split."""
    before = np.exp(log_softmax(logits, 1.0))
    after = np.exp(log_softmax(logits, temperature))
    return {"n": int(len(targets)),
            "ece_before": round(expected_calibration_error(before, targets), 4),
            "ece_after": round(expected_calibration_error(after, targets), 4),
            "nll_before": round(nll(logits, targets, 1.0), 4),
            "nll_after": round(nll(logits, targets, temperature), 4)}


def calibrate_logits(valid_logits: np.ndarray, valid_labels: np.ndarray,
                     test_logits: np.ndarray | None = None, test_labels: np.ndarray | None = None) -> dict[str, Any]:
    """Fit T on the valid logits; scores on valid (fitted, so optimistic) and on test if given (honest)."""
    temperature = round(fit_temperature(valid_logits, valid_labels), 4)
    calibration = {"temperature": temperature, "method": "temperature scaling, minimum NLL on the valid split",
                   "valid": calibration_scores(valid_logits, valid_labels, temperature)}
    if test_logits is not None and len(test_logits):
        calibration["test"] = calibration_scores(test_logits, test_labels, temperature)
    return calibration


def fit_calibration(predictor, valid: FaceSet, test: FaceSet | None = None) -> dict[str, Any]:
    """`calibrate_logits` on what `predictor.predict_logits` says about the valid (and test) faces."""
    test_logits = predictor.predict_logits(pixels_to_input(test.pixels)) if test is not None and len(test) else None
    return calibrate_logits(predictor.predict_logits(pixels_to_input(valid.pixels)), valid.labels,
                            test_logits, None if test is None else test.labels)


def calibrate_model_file(weights_path: str | Path, data: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Fit T for a saved .safetensors model on its training data's validation split, then the confidence
    threshold for uncertain answers (selective.py) with it, and store both in its card."""
    from .predict import TorchPredictor

    weights_path = Path(weights_path)
    if weights_path.suffix.lower() != ".safetensors":
        raise FerError(f"{weights_path}: calibrate the .safetensors model (its card holds the temperature), "
                       "then export it to ONNX again")
    predictor = TorchPredictor.from_file(weights_path, device)
    card = predictor.card
    data = data or card.data_source
    if not data:
        raise FerError(f"{weights_path}: the card does not say which data trained it; pass --data")
    splits = recipe_splits(card.recipe, data) if card.recipe else load_splits(data)
    valid, test = validation_faces(splits, card.recipe), splits.get("test")
    calibration = fit_calibration(predictor, valid, test)
    card = card.replace(temperature=calibration["temperature"], calibration=calibration)
    calibrated = TorchPredictor(predictor.model, card, device)
    card = card.replace(uncertainty=fit_uncertainty(
        calibrated.predict_proba(pixels_to_input(valid.pixels)), valid.labels,
        calibrated.predict_proba(pixels_to_input(test.pixels)) if test is not None else None,
        None if test is None else test.labels))
    write_card(weights_path, card)
    return {**calibration, "uncertainty": card.uncertainty}


def format_calibration(calibration: dict[str, Any]) -> str:
    """One line per split: ECE and NLL before → after."""
    lines = [f"temperature {calibration['temperature']:.4f} ({calibration['method']})"]
    for split in ("valid", "test"):
        if split in calibration:
            s = calibration[split]
            note = " (the split T was fitted on)" if split == "valid" else ""
            lines.append(f"  {split:<5} n={s['n']:<6} ECE {s['ece_before']:.4f} → {s['ece_after']:.4f}   "
                         f"NLL {s['nll_before']:.4f} → {s['nll_after']:.4f}{note}")
    if "uncertainty" in calibration:
        lines.append(format_uncertainty(calibration["uncertainty"]))
    return "\n".join(lines)


def format_uncertainty(uncertainty: dict[str, Any]) -> str:
    """The threshold and what it gives: the share of faces answered with confidence, and their accuracy."""
    lines = [f"uncertain below confidence {uncertainty['threshold']:.4f} (chosen on valid for "
             f"{uncertainty['target_accuracy']:.0%} accuracy of the sure answers)"]
    for split in ("valid", "test"):
        if split in uncertainty:
            s = uncertainty[split]
            lines.append(f"  {split:<5} sure answers {s['coverage']:.1%} of the faces, {s['accuracy']:.1%} right")
    return "\n".join(lines)


@call_parse
def main(model: str,  # a .safetensors model (its .json card is updated in place)
         data: str = None,  # data the model was trained on (default: the path in its card)
         device: str = "cpu",  # cpu, cuda or mps
         ):
    "Fit the softmax temperature of a trained model on its validation split and store it in the model card."
    with cli_errors():
        check_output_file(card_path(model))  # the card is rewritten at the end: fail before the work, not after
        print(format_calibration(calibrate_model_file(model, data, device)))
        print(f"stored in {card_path(model)}")
