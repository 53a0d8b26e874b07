"""When to call an answer uncertain: a confidence threshold chosen on the validation split.

A weak answer ("sad 31%") should not look like a sure one. Sorting the validation faces by the model's
confidence (its calibrated top probability) gives the risk–coverage curve: answering only the most
confident share of faces, how often is it right? The threshold is the lowest confidence at which the
answers at or above it reach TARGET_ACCURACY; answers below it are shown as uncertain. It is chosen on
valid, stored in the card (`uncertainty`) and the ONNX metadata, and its test numbers are the honest ones.
numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TARGET_ACCURACY = 0.80  # the selective accuracy the threshold is chosen for (FER2013's human agreement is ~65%)


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """For each number of answered faces k (most confident first): the confidence of the k-th face, the share
    of faces answered (coverage) and the accuracy of those k answers."""
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (probs.argmax(axis=1) == labels)[order]
    answered = np.arange(1, len(labels) + 1)
    return {"confidence": confidence[order], "coverage": answered / max(1, len(labels)),
            "accuracy": np.cumsum(correct) / answered}


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY) -> float:
    """The lowest confidence whose answers at or above it are right at least `target` of the time (the largest
    coverage that meets the target); 1.0 (everything uncertain) if no share of faces reaches it."""
    curve = risk_coverage(probs, labels)
    confidence, accuracy = curve["confidence"], curve["accuracy"]
    # Only cut between distinct confidences: ties are all answered or all uncertain.
    last_of_tie = np.r_[confidence[1:] != confidence[:-1], True]
    meets = np.flatnonzero((accuracy >= target) & last_of_tie)
    return float(confidence[meets[-1]]) if len(meets) else 1.0


def selective_scores(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Coverage (share of faces answered with confidence ≥ threshold) and the accuracy of those answers."""
    sure = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == labels
    return {"n": int(len(labels)), "coverage": round(float(sure.mean()), 4) if len(labels) else 0.0,
            "accuracy": round(float(correct[sure].mean()), 4) if sure.any() else 0.0}


def fit_uncertainty(valid_probs: np.ndarray, valid_labels: np.ndarray, test_probs: np.ndarray | None = None,
                    test_labels: np.ndarray | None = None, target: float = TARGET_ACCURACY) -> dict[str, Any]:
    """The card's `uncertainty`: the threshold chosen on valid for `target`, and what it gives on valid and test."""
    threshold = round(choose_threshold(valid_probs, valid_labels, target), 4)
    result = {"threshold": threshold, "target_accuracy": target,
              "method": "lowest calibrated confidence whose answers reach the target accuracy on the valid split",
              "valid": selective_scores(valid_probs, valid_labels, threshold)}
    if test_probs is not None and len(test_probs):
        result["test"] = selective_scores(test_probs, test_labels, threshold)
    return result


def is_uncertain(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which answers fall below the threshold (none without one)."""
    probs = np.asarray(probs)
    if threshold is None:
        return np.zeros(len(probs), dtype=bool)
    return probs.max(axis=-1) < threshold
