"""Training over several processes, GPUs or machines with fastai's distributed path.

`torchrun --nproc_per_node N -m fer_fastai.train …` or `accelerate launch -m fer_fastai.train …` starts N
copies of the command; the launcher tells each its place through the environment (WORLD_SIZE, RANK,
LOCAL_RANK). `Learner.distrib_ctx()` then wraps the model in DistributedDataParallel (through accelerate)
and every DataLoader in fastai's `DistributedDL`, which gives each process its shard of every epoch and
gathers the validation predictions back. Without a launcher `processes()` yields `ONE_PROCESS`, whose
steps are plain calls, and training is exactly the single-process run.

The rules the processes keep (docs/training.md#several-processes-gpus-or-machines):
- `--bs` is the batch of one optimizer step over all processes: each process takes `bs / N` of it, so the
  recipe's learning rate and schedule stay what they were tuned for.
- Process 0 owns the run folder (lock, checkpoints, weights, history, plots) and prints; the others
  write nothing.
- Setup runs on process 0 first (it decodes the images and labels them with a teacher into the caches),
  then on each machine's first process, then on the rest, which find the caches filled. A setup step that
  fails stops every process: the first that failed says why, the others exit quietly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator, TypeVar

import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL
from fastai.learner import AvgMetric, Metric
from fastai.metrics import AccumMetric

from .callbacks import EpochCheckpoint, PlainProgress, rng_state
from .errors import FerError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Collectives wait this long for the slowest process. Setup is the long wait: the others wait while
# process 0 decodes a data set (hundreds of thousands of faces take minutes) or labels it with a teacher.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


class PeerFailed(Exception):
    """This process stops because another one failed (and said why); it has nothing of its own to report."""


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the model's state, in order: equal digests, equal weights and buffers."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Processes:
    """The processes training one model, and the steps in which they wait for each other.

    `rank` 0 is the main process; `local_rank` numbers the processes on one machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """Each process's random seed: its own augmentation and dropout draws; the initial weights are process
        0's (DistributedDataParallel copies them to the others) and so is the batch order (DistributedDL)."""
        return seed + self.rank

    def batch_share(self, bs: int) -> int:
        """The batch each process takes of one step's `bs` faces."""
        if bs % self.size:
            raise FerError(f"--bs {bs} does not split evenly over {self.size} processes; choose a multiple of {self.size}")
        return bs // self.size

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on: its own GPU (by local rank) when the run is on CUDA."""
        if self.size == 1 or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise FerError(f"process {self.rank} is process {self.local_rank + 1} on its machine, which has "
                           f"{torch.cuda.device_count()} GPU(s); start at most one process per GPU (--nproc_per_node)")
        return torch.device("cuda", self.local_rank)

    def from_main(self, step: Callable[[], T]) -> T:
        """Run `step` on the main process only and hand its result to all (it must pickle)."""
        if self.size == 1:
            return step()
        result, failure = _attempt(step) if self.main else (None, None)
        self._stop_if_failed(failure)
        shared = [result]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]

    def in_waves(self, step: Callable[[], T]) -> T:
        """Run `step` on every process: on the main one first, then on the first of every other machine, then on
        the rest, so what it caches on disk is built once per machine. A failure stops all processes."""
        if self.size == 1:
            return step()
        wave = 0 if self.main else 1 if self.local_rank == 0 else 2
        result = None
        for current in range(3):
            failure = None
            if wave == current:
                result, failure = _attempt(step)
            self._stop_if_failed(failure)
        return result

    def same_weights(self, model: torch.nn.Module) -> str:
        """The digest of the weights every process ended with; differing weights are an error, never a saved model."""
        mine = weights_digest(model)
        if self.size == 1:
            return mine
        digests: list[str | None] = [None] * self.size
        torch.distributed.all_gather_object(digests, mine)
        if len(set(digests)) > 1:
            raise FerError(f"the {self.size} processes ended with different weights ({', '.join(d[:12] for d in digests)}); "
                           "the run's training steps were not kept in step, so its model is not trustworthy")
        return mine

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, on every process."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        return values

    def random_state(self, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
        """This process's random-number state in a checkpoint: process 0's is "rng", the others' are in
        "rank_rng" when as many processes wrote it (`GatherRandomStates`); None when it holds none for this one."""
        if self.main:
            return checkpoint.get("rng")
        if checkpoint.get("processes", 1) == self.size:
            return checkpoint["rank_rng"][self.rank - 1]
        return None

    def fitting(self, learn, device: torch.device) -> ContextManager[None]:
        """The context `learn.fit` runs in: `distrib_ctx` over all processes, or nothing for one."""
        return nullcontext() if self.size == 1 else _distributed_fit(learn, device, self.main)

    def _stop_if_failed(self, failure: BaseException | None) -> None:
        """After a step: if any process failed, the first that did raises its error, every other one PeerFailed."""
        failed = self.gather(failure is not None)
        if not any(failed):
            return
        if failure is not None and failed.index(True) == self.rank:
            raise failure
        raise PeerFailed


ONE_PROCESS = Processes()


# How long a process that stops for another one's failure waits for the launcher to end it (torchrun checks its
# processes every 0.1 s), so that the launcher names the process that failed as the root cause, not this one.
LAUNCHER_GRACE_SECONDS = 5.0


@contextmanager
def exits_with_peers() -> Iterator[None]:
    """A process that stops because another one failed exits non-zero without a traceback: quietly where the
    other one said why (a failed setup step), with one line where it only lost contact (the other was killed,
    or failed in the middle of training)."""
    try:
        yield
    except PeerFailed:
        time.sleep(LAUNCHER_GRACE_SECONDS)
        sys.exit(1)
    except Exception as error:
        if not (launched() and lost_contact(error)):
            raise
        print(f"error: process {os.environ['RANK']} of {os.environ['WORLD_SIZE']} lost contact with another process "
              "of this run (it stopped, was killed, or the network failed); that process's message or the launcher's "
              "report says why", file=sys.stderr)
        time.sleep(LAUNCHER_GRACE_SECONDS)
        sys.exit(1)


def lost_contact(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process is gone: torch raises DistError for most,
    but gloo's transport errors inside DistributedDataParallel come as a plain RuntimeError."""
    return isinstance(error, torch.distributed.DistError) or (
        isinstance(error, RuntimeError) and "gloo/transport" in str(error))


class GatherRandomStates(Callback):
    """After every epoch, every process's random-number state, so that process 0's checkpoint holds them all and
    a resumed run of as many processes draws what an uninterrupted one would (`Processes.random_state`)."""

    order = EpochCheckpoint.order - 0.5  # gathered before the checkpoint is written

    def __init__(self, group: Processes):
        self.group, self.states = group, []

    def after_epoch(self) -> None:
        self.states = self.group.gather(rng_state(self.dls))

    def checkpoint_extra(self) -> dict[str, Any]:
        """What the checkpoint adds: how many processes wrote it, and the random states of processes 1…N-1."""
        return {"processes": self.group.size, "rank_rng": self.states[1:]}


def _attempt(step: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return step(), None
    except Exception as error:  # re-raised by `_stop_if_failed` once the others know
        return None, error


def backend() -> str:
    """gloo, which carries CPU tensors (and setup's messages); where there are GPUs, nccl besides it for CUDA
    tensors. torch picks by the tensor's device, so `--device cpu` on a GPU machine trains over gloo."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def processes() -> Iterator[Processes]:
    """This run's processes: `ONE_PROCESS` without a launcher, else the process group the launcher set up
    (joined here, left at the end)."""
    if not launched():
        yield ONE_PROCESS
        return
    group = Processes(rank=int(os.environ["RANK"]), size=int(os.environ["WORLD_SIZE"]),
                      local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if group.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(group.local_rank)  # nccl sends from the current GPU
    torch.distributed.init_process_group(backend=backend(), timeout=COLLECTIVE_TIMEOUT)
    yield group
    # Left only after a run that succeeded: a failed process exits without it, as nccl's goodbye waits for
    # processes that may be gone.
    torch.distributed.destroy_process_group()


@contextmanager
def _distributed_fit(learn, device: torch.device, main: bool) -> Iterator[None]:
    """fastai's `distrib_ctx`, with the loaders, metrics and printing fitted to this project (`ShardedDL`,
    `whole_split_metrics`, `WholeSplitLoss`); the learner is as it was afterwards."""
    # Mixed precision stays the project's own (--precision, DeviceMixedPrecision), never accelerate's config.
    # SyncBatchNorm computes batch statistics over all processes, but only on GPUs.
    with learn.distrib_ctx(sync_bn=device.type == "cuda", cpu=device.type == "cpu", mixed_precision="no"):
        loaders, metrics, loss = learn.dls.loaders, learn.metrics, learn.recorder.loss
        printers = [cb for cb in learn.cbs if isinstance(cb, (PlainProgress, ProgressCallback))]
        learn.dls.loaders = [ShardedDL(loader, device=loader.device) for loader in loaders]
        learn.metrics = whole_split_metrics(metrics)
        _set_recorder_loss(learn.recorder, WholeSplitLoss())
        if not main:
            learn.remove_cbs(printers)
        try:
            yield
        finally:
            learn.dls.loaders, learn.metrics = loaders, metrics
            _set_recorder_loss(learn.recorder, loss)
            if not main:
                learn.add_cbs(printers)


def _set_recorder_loss(recorder, loss) -> None:
    """Give the Recorder another validation-loss metric. Plain assignment works too, but fastai's Callback warns
    that `loss` shadows the learner's own (the loss of the batch), which is not what is meant here."""
    recorder.__dict__["loss"] = loss


class ShardedDL(DistributedDL):
    """fastai's DistributedDL (each process takes its shard of the epoch; predictions are gathered back and
    the padding that evens the shards out is cut off), with two fixes:

    - the batch order is broadcast from the CPU, through gloo: fastai moves it to CUDA, which gloo, the CPU
      backend, cannot send;
    - `rng` is the wrapped loader's, so a checkpoint saves the generator that really shuffles.
    """

    def _broadcast(self, values: list[int], rank: int) -> list[int]:
        tensor = torch.tensor(values, dtype=torch.long)
        torch.distributed.broadcast(tensor, rank)
        return tensor.tolist()

    @property
    def rng(self):
        return self.dl.rng


def whole_split_metrics(metrics) -> list:
    """Metrics over the whole validation split. fastai's averaged metrics (accuracy) average each process's
    per-batch means, padding included; as AccumMetrics they are computed once over the gathered predictions,
    from which DistributedDL has cut the padding, so they equal a one-process evaluation."""
    return [AccumMetric(metric.func, flatten=False) if isinstance(metric, AvgMetric) else metric for metric in metrics]


class WholeSplitLoss(Metric):
    """The validation loss over the gathered predictions of all processes (see `whole_split_metrics`)."""

    def reset(self) -> None:
        self.preds, self.targets, self.loss_func = [], [], None

    def accumulate(self, learn) -> None:
        self.loss_func = learn.loss_func
        self.preds.append(learn.to_detach(learn.pred).float())
        self.targets.append(learn.to_detach(learn.yb[0]))

    @property
    def value(self) -> torch.Tensor | None:
        if not self.preds:
            return None
        return self.loss_func(torch.cat(self.preds), torch.cat(self.targets)).mean()

    @property
    def name(self) -> str:
        return "loss"
