"""From a model's outputs to what reports and plots use: softmax, calibrated probabilities, FER2013 order.

numpy only, so evaluate, interpret, calibrate, training's finish and the ONNX predictor share one
softmax and one way to run a predictor over faces, without importing each other or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .data import FaceSet
from .errors import FerError
from .labels import LABELS, canonical_label
from .preprocess import pixels_to_input

if TYPE_CHECKING:  # annotations only: predict imports this module for its softmax
    from .predict import Predictor

BATCH_SIZE = 512  # faces per predictor call; the predictor splits further if its backend wants smaller passes


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature) per row, in float64 and stable for large logits."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) per row, in the logits' float type."""
    dtype = np.result_type(logits, np.float32)
    return np.exp(log_softmax(logits, temperature)).astype(dtype)


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


def to_fer_order(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Model outputs re-ordered into FER2013 id order (a class the model lacks gets probability 0)."""
    out = np.zeros((len(values), len(LABELS)), dtype=np.float64)
    out[:, columns] = values
    return out


def predict(predictor: Predictor, pixels: np.ndarray, flip: bool = False, batch_size: int = BATCH_SIZE,
            logits: bool = False) -> np.ndarray:
    """Probabilities (or raw logits) for uint8 faces [N, 48, 48], in batches; `flip` mirrors each face first."""
    if flip:
        pixels = pixels[:, :, ::-1]
    run = predictor.predict_logits if logits else predictor.predict_proba
    outputs = [run(pixels_to_input(pixels[start:start + batch_size])) for start in range(0, len(pixels), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, len(predictor.labels)), np.float32)


@dataclass(frozen=True)
class Predictions:
    """Everything computed once per evaluation, so reports, plots and CSV never re-run the model."""

    probs: np.ndarray  # [N, 7] FER order, what the model says (calibrated if its card has a temperature)
    probs_uncalibrated: np.ndarray | None  # softmax(logits), T = 1; None if the backend gives no logits
    probs_tta: np.ndarray | None  # mean of probs of the face and its mirror image, with --tta


def predictions_from_logits(logits: np.ndarray, temperature: float, columns: np.ndarray) -> Predictions:
    """Calibrated and uncalibrated probabilities from one pass of raw logits (no TTA)."""
    return Predictions(to_fer_order(softmax(logits, temperature), columns), to_fer_order(softmax(logits), columns), None)


def predict_faces(predictor: Predictor, faces: FaceSet, tta: bool = False) -> Predictions:
    """One pass over the faces (two with `tta`); a backend with logits gives both calibrated and raw probabilities."""
    columns = fer_columns(tuple(predictor.labels), faces.labels)
    if hasattr(predictor, "predict_logits"):
        predictions = predictions_from_logits(predict(predictor, faces.pixels, logits=True), predictor.temperature, columns)
    else:
        predictions = Predictions(to_fer_order(predict(predictor, faces.pixels), columns), None, None)
    if not tta:
        return predictions
    mirrored = to_fer_order(predict(predictor, faces.pixels, flip=True), columns)
    return replace(predictions, probs_tta=(predictions.probs + mirrored) / 2)
