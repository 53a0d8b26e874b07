"""fastai callbacks for this project: device-aware mixed precision, best-model and resumable
checkpoints, a CSV history that survives --resume, and a log-file-friendly progress printer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelEpochException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import TrackerCallback
from fastai.learner import Learner
from fastcore.foundation import L

from .atomic import atomic_path
from .preprocess import IMAGE_SIZE


class DeviceMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision with autocast and GradScaler on the learner's own device.

    fastai 2.8.12 hard-codes `autocast('cuda')`, so on CPU or MPS its MixedPrecision silently trains
    in fp32. bf16 needs no GradScaler; fp16 gets one for the device in use.
    """

    def before_fit(self) -> None:
        device_type = self.dls.device.type
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        self.kwargs["enabled"] = dtype == torch.float16
        self.autocast = torch.autocast(device_type, dtype=dtype)
        self.learn.scaler = torch.amp.GradScaler(device_type, **self.kwargs)
        self.scales = L()


class ChannelsLastInputs(Callback):
    """Model and every input batch in channels-last memory format (faster convolutions on CPU and CUDA)."""

    order = -1

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self) -> None:
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in self.xb)


def progressive_size(epoch: int, n_epoch: int, start_size: int, full_size_at: float,
                     full_size: int = IMAGE_SIZE, step: int = 8) -> int:
    """The face size for `epoch`: `start_size` at first, growing in `step`-pixel steps to
    `full_size`, which it reaches at the fraction `full_size_at` of the epochs and keeps."""
    progress = epoch / (full_size_at * n_epoch) if full_size_at > 0 else 1.0
    if progress >= 1:
        return full_size
    levels = -(-(full_size - start_size) // step)  # sizes below full: start_size, start_size + step, …
    return min(full_size, start_size + int(progress * levels) * step)


class ProgressiveResize(Callback):
    """Train on smaller faces first (cheaper epochs), finishing at full size: fastai's progressive resizing.

    Only training batches are resized (bilinear, after augmentation, as fastai's batch resizing
    does; area averaging would need adaptive pooling, which MPS refuses at 48 → 40); validation and
    every consumer see full-size faces. Conv cost scales with pixels: an epoch at 32x32 costs about 44%
    of one at 48x48. The networks pool any map size to their head's grid (`models.GridFlatten`).
    """

    order = -2  # before ChannelsLastInputs, so the resized batch is the one made channels-last

    def __init__(self, start_size: int, full_size_at: float):
        self.start_size, self.full_size_at = start_size, full_size_at

    def before_batch(self) -> None:
        if not self.training:
            return
        size = progressive_size(self.epoch, self.n_epoch, self.start_size, self.full_size_at, self.xb[0].shape[-1])
        if size < self.xb[0].shape[-1]:
            self.learn.xb = tuple(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) for x in self.xb)


class ResumableLearner(Learner):
    """A Learner whose `fit` can start at `first_epoch`, with the one-cycle schedule where it left off.

    fastai's own `start_epoch` (SkipToEpoch) cancels the skipped epochs, which still fires
    `after_epoch` in Recorder and the trackers with empty values; here they are simply not run.
    The schedule follows because TrainEvalCallback sets `pct_train = epoch / n_epoch` every epoch.
    """

    first_epoch = 0

    def _do_fit(self) -> None:
        for epoch in range(self.first_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)


class SaveChosenEpoch(TrackerCallback):
    """After every epoch that improves `monitor`, hand the model to `save` (atomic safetensors + card).

    With `keep_last` it hands over every epoch instead, so the run keeps its last epoch: the choice
    for a small validation split, whose best epoch is mostly the luck of a few hundred faces.
    """

    order = TrackerCallback.order + 1

    def __init__(self, save: Callable[[int, float], None], monitor: str = "accuracy", best: float | None = None,
                 keep_last: bool = False):
        super().__init__(monitor=monitor, comp=np.greater, reset_on_fit=best is None)
        self.save, self.best, self.keep_last = save, best, keep_last

    def after_epoch(self) -> None:
        super().after_epoch()
        if self.keep_last:
            self.save(self.epoch, float(self.recorder.values[-1][self.idx]))
        elif self.new_best:
            self.save(self.epoch, float(self.best))


class EpochCheckpoint(Callback):
    """After every epoch, save model + optimizer + progress atomically, so `--resume` can continue."""

    order = SaveChosenEpoch.order + 1

    def __init__(self, path: Path, extra: Callable[[], dict[str, Any]]):
        self.path, self.extra = Path(path), extra
        self.saved_next_epoch: int | None = None

    def after_epoch(self) -> None:
        save_checkpoint(self.learn, self.path, next_epoch=self.epoch + 1, **self.extra())
        self.saved_next_epoch = self.epoch + 1

    def save_interrupted(self, learn: Learner) -> None:
        """On Ctrl-C: keep the checkpoint of a just-finished epoch; otherwise save the unfinished
        epoch's weights, to be resumed from that epoch's start. (fastai has detached the callback
        from its learner by then, so the learner is passed in.)"""
        if self.saved_next_epoch != learn.epoch + 1:
            save_checkpoint(learn, self.path, next_epoch=learn.epoch, **self.extra())


def save_checkpoint(learn: Learner, path: Path, next_epoch: int, **extra: Any) -> None:
    state = _plain({"model": learn.model.state_dict(), "opt": learn.opt.state_dict() if learn.opt else None,
                    "next_epoch": next_epoch, **extra})
    with atomic_path(path) as temp:
        torch.save(state, temp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (tensors and plain values only: weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_optimizer_state(learn: Learner, state: dict[str, Any]) -> None:
    learn.opt.load_state_dict({key: L(value) for key, value in state.items()})


def _plain(value: Any) -> Any:
    """fastcore's L → list and numpy scalars → Python numbers, recursively: torch.load(weights_only=True)
    refuses classes it does not know."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (L, list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


class HistoryCSV(CSVLogger):
    """fastai's CSVLogger, but appending after --resume without writing the header a second time."""

    def before_fit(self) -> None:
        log_file = self.path / self.fname
        had_rows = self.append and log_file.is_file() and log_file.stat().st_size > 0
        super().before_fit()
        if had_rows:  # undo the repeated header that CSVLogger just wrote
            self.file.close()
            lines = log_file.read_text().splitlines(keepends=True)
            log_file.write_text("".join(lines[:-1]))
            self.file = log_file.open("a")


class PlainProgress(Callback):
    """One aligned line per epoch, for logs and pipes where fastprogress's bars turn into noise."""

    order = 60

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def before_fit(self) -> None:
        if not getattr(self.learn, "lr_finder", False):
            self.old_logger, self.learn.logger = self.learn.logger, self._print
            self._print(self.recorder.metric_names)

    def _print(self, row) -> None:
        cells = [f"{value:.4f}" if isinstance(value, float) else str(value) for value in row]
        print("  ".join(f"{cell:>10}" for cell in cells), file=self.stream, flush=True)

    def after_fit(self) -> None:
        if hasattr(self, "old_logger"):
            self.learn.logger = self.old_logger
