"""Knowledge distillation: a student network learns from a teacher model's calibrated probabilities as
well as from the labels (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network").

The teacher (any model file: the shipped ensemble's .onnx, or a .safetensors) labels every training face
once, before training, and its probabilities are cached by the teacher's and the faces' checksums,
because an 18-view ensemble costs ~80 times a student's forward pass. Each training batch then carries a
soft target per face: [one-hot label | teacher probabilities] (`SOFT_TARGET_WIDTH` columns), which
`DistillationLoss` turns into

    loss = weight · T² · KL(teacher_T ‖ softmax(student / T)) + (1 − weight) · CE_smoothed(student, label)

with teacher_T the teacher's probabilities softened by the temperature T. Augmentation and teacher
targets stay consistent this way: the teacher saw the plain face, and the student's augmentations
(shifts, mirrors, lighting, erasing) keep the expression the teacher judged; mixup blends two faces and
blends their soft targets with the same weight (mixup's target blending is linear, and both loss
terms are linear in the target). Validation rows carry no teacher (zeros), so the validation loss and
metrics are the plain labelled ones, comparable with runs trained without a teacher.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.metrics import AccumMetric
from sklearn.metrics import f1_score
from torch import nn

from .atomic import atomic_path
from .data import FaceSet, default_cache_dir
from .errors import FerError
from .labels import LABELS, NUM_CLASSES
from .predict import load_predictor
from .scoring import predict

log = logging.getLogger(__name__)

def teacher_probabilities(teacher: str | Path, faces: FaceSet, cache_dir: Path | None = None) -> np.ndarray:
    """The teacher's calibrated probabilities [N, 7] for `faces`, computed once and cached by checksums."""
    from .model_io import file_sha256

    teacher = Path(teacher)
    if not teacher.is_file():
        raise FerError(f"--teacher {teacher}: no such model file (a .onnx, or a .safetensors with its card)")
    key = hashlib.sha256(f"{file_sha256(teacher)}\0".encode() + faces.pixels.tobytes()).hexdigest()[:24]
    cache_file = (default_cache_dir() if cache_dir is None else cache_dir) / f"teacher-{key}.npy"
    if cache_file.is_file():
        try:
            return np.load(cache_file)
        except (OSError, ValueError):
            log.warning("warning: teacher cache %s is unreadable; labelling the faces again", cache_file)
    predictor = load_predictor(teacher)
    if tuple(predictor.labels) != LABELS:
        raise FerError(f"--teacher {teacher}: it predicts {', '.join(predictor.labels)}, not FER2013's classes in order")
    log.info("labelling %d faces with the teacher %s (cached for later runs)", len(faces), teacher)
    probs = predict(predictor, faces.pixels).astype(np.float32)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as temp:
            with open(temp, "wb") as handle:
                np.save(handle, probs)
    except (OSError, FerError) as error:
        log.warning("could not cache the teacher's probabilities in %s (%s)", cache_file, error)
    return probs


class DistillationLoss(nn.Module):
    """Hinton's loss over soft targets [label one-hot | teacher probs]; rows without a teacher get CE alone."""

    def __init__(self, weight: float, temperature: float, label_smoothing: float = 0.0):
        super().__init__()
        self.weight, self.temperature, self.label_smoothing = weight, temperature, label_smoothing
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        label, teacher = target[:, :NUM_CLASSES], target[:, NUM_CLASSES:]
        smoothed = label * (1 - self.label_smoothing) + self.label_smoothing / NUM_CLASSES
        log_probs = F.log_softmax(logits, dim=1)
        hard = -(smoothed * log_probs).sum(dim=1)
        has_teacher = teacher.sum(dim=1) > 0
        t = self.temperature
        teacher_t = F.softmax(torch.log(teacher.clamp_min(1e-8)) / t, dim=1)
        soft = (teacher_t * (torch.log(teacher_t.clamp_min(1e-8)) - F.log_softmax(logits / t, dim=1))).sum(dim=1) * t * t
        loss = torch.where(has_teacher, self.weight * soft + (1 - self.weight) * hard, hard)
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=-1)

    def decodes(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.argmax(dim=-1)


def labels_of(target: torch.Tensor) -> torch.Tensor:
    """The class ids in a batch of soft targets (validation rows hold exact one-hot labels)."""
    return target[:, :NUM_CLASSES].argmax(dim=1)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """fastai's accuracy, on soft targets; named so history.csv and the callbacks find it as usual."""
    return (logits.argmax(dim=1) == labels_of(target)).float().mean()


class MacroF1(AccumMetric):
    """fastai's F1Score(average="macro") on soft targets, under the same name (f1_score)."""

    def __init__(self):
        super().__init__(lambda preds, targets: f1_score(targets, preds, average="macro"), flatten=False)

    def accumulate(self, learn) -> None:
        self.accum_values(learn.pred.argmax(dim=1), labels_of(learn.y), learn)

    @property
    def name(self) -> str:
        return "f1_score"
