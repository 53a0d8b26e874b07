"""Classification scores from labels and probabilities (numpy only, so both backends share them)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .labels import LABELS


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, n_classes: int = len(LABELS)) -> np.ndarray:
    """counts[actual, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(targets), np.asarray(predictions)), 1)
    return counts


ECE_BINS = 15


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy, number of faces (empty bins dropped)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    used = [b for b in range(n_bins) if (bins == b).any()]
    return {"bin": np.array(used, dtype=int),
            "confidence": np.array([confidence[bins == b].mean() for b in used]),
            "accuracy": np.array([correct[bins == b].mean() for b in used]),
            "count": np.array([(bins == b).sum() for b in used])}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    bins = reliability_bins(probs, targets, n_bins)
    if not len(bins["count"]):
        return 0.0
    weights = bins["count"] / bins["count"].sum()
    return float((weights * np.abs(bins["accuracy"] - bins["confidence"])).sum())


def cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0)).mean())


def classification_report(probs: np.ndarray, targets: np.ndarray,
                          labels: Sequence[str] = LABELS, top_confusions: int = 5) -> dict[str, Any]:
    """Accuracy, macro-F1, balanced accuracy, ECE, loss, per-class P/R/F1/support, most-confused pairs."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    predictions = probs.argmax(axis=1)
    counts = confusion_matrix(targets, predictions, len(labels))
    true_positive = np.diag(counts).astype(float)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    present = support > 0
    off_diagonal = [(int(counts[a, p]), labels[a], labels[p])
                    for a in range(len(labels)) for p in range(len(labels)) if a != p and counts[a, p] > 0]
    off_diagonal.sort(reverse=True)
    return {
        "n": int(len(targets)),
        "accuracy": float((predictions == targets).mean()) if len(targets) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "loss": cross_entropy(probs, targets),
        "ece": expected_calibration_error(probs, targets),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                              "f1": float(f1[i]), "support": int(support[i])}
                      for i, label in enumerate(labels)},
        "most_confused": [{"actual": a, "predicted": p, "count": n} for n, a, p in off_diagonal[:top_confusions]],
        "confusion_matrix": counts.tolist(),
    }


def format_report(report: dict[str, Any], title: str = "") -> str:
    """The report as a plain-text table for the terminal."""
    lines = [title] if title else []
    lines.append(f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for label, row in report["per_class"].items():
        lines.append(f"{label:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} {row['support']:>8d}")
    lines.append(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
                 f"balanced acc {report['balanced_accuracy']:.4f}  ECE {report['ece']:.4f}  "
                 f"loss {report['loss']:.4f}  (n={report['n']})")
    if report["most_confused"]:
        pairs = ", ".join(f"{c['actual']}→{c['predicted']} ({c['count']})" for c in report["most_confused"])
        lines.append(f"most confused: {pairs}")
    return "\n".join(lines)
