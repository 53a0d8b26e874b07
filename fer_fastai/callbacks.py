"""fastai callbacks for this project: device-aware mixed precision, best-model and resumable
checkpoints, a stop on divergence, a CSV history that survives --resume, and a log-file-friendly
progress printer."""

from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelEpochException, CancelFitException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import TrackerCallback
from fastai.learner import Learner
from fastai.torch_core import get_model
from fastcore.foundation import L

from .atomic import atomic_path
from .compute import progressive_size
from .errors import FerError


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
    A callback that ends the fit with `stop_fit` makes `fit` raise its reason as a FerError.
    """

    first_epoch = 0
    stop_reason: str | None = None

    def fit(self, *args, **kwargs) -> None:
        self.epoch, self.stop_reason = self.first_epoch, None
        super().fit(*args, **kwargs)
        if self.stop_reason is not None:
            raise FerError(self.stop_reason)

    def _do_fit(self) -> None:
        for epoch in range(self.first_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)


def stop_fit(learn: Learner, reason: str) -> NoReturn:
    """End fastai's fit now (it still runs `after_fit`, closing history.csv); `ResumableLearner.fit` then raises
    `reason`. Any other exception raised in a callback fastai rewrites into a two-line 'Exception occured in …'."""
    learn.stop_reason = reason
    raise CancelFitException


@contextmanager
def fit_stops_on_error(learn: Learner) -> Iterator[None]:
    """A FerError raised in the block (a failed or refused save) stops the fit with its own one-line message."""
    try:
        yield
    except FerError as error:
        stop_fit(learn, str(error))


def current_lr(learn: Learner) -> float:
    """The learning rate the optimizer steps with now (the one-cycle schedule moves it every batch)."""
    return learn.opt.hypers[-1]["lr"]


def diverged(learn: Learner, where: str, what: str) -> str:
    """The one-line message for a run whose loss or weights went NaN or inf: where, at which rate, what to do."""
    return (f"training diverged {where} at learning rate {current_lr(learn):.3g}: {what}; train again with a lower "
            "--lr, or with --lr auto (lr_find picks one)")


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every floating-point tensor of the model is finite, BatchNorm statistics included (a huge step
    can overflow a running variance to inf while the loss stays finite)."""
    tensors = [tensor for tensor in model.state_dict().values() if tensor.is_floating_point()]
    return bool(torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all())  # one host sync


class StopOnDivergence(Callback):
    """Stop a diverged run at once: at the first training batch whose loss is NaN or inf (before its step),
    or at the end of a training phase that left NaN or inf in the model, before anything of that epoch is
    validated or saved. A diverged run must fail, not save NaN weights and score them as a model.
    (The check waits for each batch's loss; fastai's Recorder copies every loss to the CPU anyway.)"""

    order = MixedPrecision.order + 1  # after MixedPrecision has left autocast, which a stop before it would leak

    def after_loss(self) -> None:
        if self.training and not torch.isfinite(self.loss).all():
            stop_fit(self.learn, diverged(self.learn, f"in epoch {self.epoch}, batch {self.iter + 1} of {self.n_iter},",
                                          f"the training loss is {self.loss.float().mean().item()}"))

    def after_train(self) -> None:
        if not finite_weights(self.model):
            stop_fit(self.learn, diverged(self.learn, f"in epoch {self.epoch}, batch {self.n_iter} of {self.n_iter},",
                                          "the model holds NaN or inf after it; nothing of this epoch was saved"))


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
        with fit_stops_on_error(self.learn):  # `save` refuses non-finite weights; a full disk fails it too
            if self.keep_last:
                self.save(self.epoch, float(self.recorder.values[-1][self.idx]))
            elif self.new_best:
                self.save(self.epoch, float(self.best))


class EpochCheckpoint(Callback):
    """After every epoch, save model + optimizer + progress + random-number state atomically, so `--resume`
    continues as if never stopped. Only finished epochs are saved: after an interrupt in the middle of an
    epoch the previous epoch's checkpoint stays, and --resume redoes the cut-off epoch from its start."""

    order = SaveChosenEpoch.order + 1

    def __init__(self, path: Path, extra: Callable[[], dict[str, Any]]):
        self.path, self.extra = Path(path), extra
        self.saved_next_epoch: int | None = None

    def after_epoch(self) -> None:
        with fit_stops_on_error(self.learn):
            save_checkpoint(self.learn, self.path, next_epoch=self.epoch + 1, **self.extra())
        self.saved_next_epoch = self.epoch + 1


def save_checkpoint(learn: Learner, path: Path, next_epoch: int, **extra: Any) -> None:
    """Write the checkpoint atomically; non-finite weights are refused, and a failed write (a full disk, a folder
    that is not writable) is a one-line FerError that leaves the previous checkpoint in place."""
    if not finite_weights(learn.model):
        raise FerError(diverged(learn, f"in epoch {learn.epoch}",
                                f"the model holds NaN or inf, so it was not saved to {path}"))
    # get_model: in a run of several processes the model inside DistributedDataParallel, whose keys have no "module."
    state = _plain({"model": get_model(learn.model).state_dict(), "opt": learn.opt.state_dict() if learn.opt else None,
                    "next_epoch": next_epoch, "rng": rng_state(learn.dls), **extra})
    try:
        with atomic_path(path) as temp:
            torch.save(state, temp)
    except (OSError, RuntimeError) as error:  # torch reports a short write as RuntimeError (inline_container.cc)
        kept, then = (("the previous epoch's checkpoint is kept", "continue with --resume") if path.exists() else
                      ("no epoch has a checkpoint yet", "start the run again"))
        raise FerError(f"cannot write the checkpoint {path}: {_write_failure(error, path.parent)}; {kept}. Free some "
                       f"disk space or make the folder writable, then {then}") from None


def _write_failure(error: Exception, folder: Path) -> str:
    """The system's reason for a failed write. torch's RuntimeError names none worth relaying ('unexpected pos',
    'cannot be opened'): a folder it may not write to, or else a full disk."""
    number = getattr(error, "errno", None)
    if number:
        return os.strerror(number)
    return "the write stopped part-way, as on a full disk" if os.access(folder, os.W_OK) else f"{folder} is not writable"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (tensors and plain values only: weights_only=True).

    A damaged file is one line that never relays torch's message, which suggests weights_only=False: that
    would let the file run code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise FerError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception:  # a truncated, empty or foreign file: RuntimeError, EOFError, UnpicklingError, … alike
        checkpoint = None
    if not isinstance(checkpoint, dict) or not {"model", "opt", "next_epoch", "config"} <= set(checkpoint):
        raise FerError(f"{path} is not a readable checkpoint (truncated, empty or not written by fer_fastai); "
                       "delete it and start without --resume")
    return checkpoint


def rng_state(dls) -> dict[str, Any]:
    """Every random-number state the next epoch may draw from: torch's (and the GPU's), numpy's, Python's, and
    each DataLoader's own `random.Random`, which fastai shuffles the batches with. Tensors and plain lists only,
    so that torch.load(weights_only=True) reads them back."""
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
             "python": random.getstate(), "loaders": [loader.rng.getstate() for loader in dls.loaders]}
    if dls.device is not None and dls.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dls.device)
    elif dls.device is not None and dls.device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], dls) -> None:
    """Undo `rng_state`: the resumed epochs draw the same numbers (data order, augmentation, dropout) as an
    uninterrupted run would. A GPU state is restored only on the same kind of device."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_python_random_state(state["python"]))
    for loader, loader_state in zip(dls.loaders, state["loaders"]):
        loader.rng.setstate(_python_random_state(loader_state))
    if "cuda" in state and dls.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], dls.device)
    elif "mps" in state and dls.device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def _python_random_state(saved: list) -> tuple:
    """random.getstate()'s (version, 625 ints, gauss_next), from the lists a checkpoint stores it as."""
    version, internal, gauss_next = saved
    return version, tuple(internal), gauss_next


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
    """fastai's CSVLogger, but after --resume it keeps one header and the rows of the epochs the checkpoint
    holds: an epoch that is redone (cut off after its row was written) is not listed twice."""

    def before_fit(self) -> None:
        log_file = self.path / self.fname
        lines = log_file.read_text().splitlines(keepends=True) if self.append and log_file.is_file() else []
        super().before_fit()
        if lines:  # CSVLogger has just appended a second header: write the file again without it
            first_epoch = getattr(self.learn, "first_epoch", 0)
            kept = [line for line in lines[1:] if line.split(",")[0].isdigit() and int(line.split(",")[0]) < first_epoch]
            self.file.close()
            log_file.write_text("".join([lines[0], *kept]))
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
