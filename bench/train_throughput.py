"""Training throughput: the fastai Learner path (data pipeline + augmentation included) vs a plain
PyTorch loop, same model, batch size, data and device, in one run.

    python bench/train_throughput.py [--data ../shared/fer2013] [--arch seed] [--width N] [--bs 64] [--steps 80] [--compile]

The plain loop trains on ready-made float batches (no augmentation): the best case a hand-written
loop reaches. Precisions: fp32, and channels-last + autocast (bf16 on CPU) as `train` uses.
`--compile` adds that loop with the model under `torch.compile` (compiled during the warm-up steps),
to check whether compiling would pay for `train` on this machine.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException

from fer_fastai.allocator import keep_freed_memory
from fer_fastai.augment import AugmentConfig
from fer_fastai.data import FaceSet, load_splits, make_dataloaders
from fer_fastai.device import pick_device
from fer_fastai.labels import LABELS
from fer_fastai.models import create_model
from fer_fastai.train import TrainConfig, make_learner, resolve_precision, width_kwargs

WARMUP_STEPS = 5


def plain_loop(faces: FaceSet, arch: str, arch_kwargs: dict, bs: int, steps: int, device: torch.device,
               fast: bool, compiled: bool = False) -> float:
    """Images/s of bare forward/backward/step on pre-made batches; `fast` = channels-last + autocast,
    `compiled` = the model under torch.compile."""
    torch.manual_seed(0)
    model = create_model(arch, **arch_kwargs).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_func = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    precision = resolve_precision("auto", device) if fast else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    pixels = torch.from_numpy(faces.pixels)
    labels = torch.from_numpy(faces.labels)
    order = torch.randperm(len(labels))
    timed_images, started = 0, 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        index = order[(step * bs) % (len(order) - bs):][:bs]
        xb = (pixels[index].float() / 255.0).unsqueeze(1).to(device)
        yb = labels[index].to(device)
        if fast:
            xb = xb.contiguous(memory_format=torch.channels_last)
        context = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        with context:
            loss = loss_func(forward(xb).float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= WARMUP_STEPS:
            timed_images += bs
    _sync(device)
    return timed_images / (time.perf_counter() - started)


class StepTimer(Callback):
    """Times `steps` training batches after a warm-up, then stops the fit."""

    order = 100

    def __init__(self, steps: int):
        self.steps, self.images, self.started = steps, 0, None

    def before_batch(self) -> None:
        if self.training and self.iter == WARMUP_STEPS:
            _sync(self.dls.device)
            self.started = time.perf_counter()

    def after_batch(self) -> None:
        if self.training and self.iter >= WARMUP_STEPS:
            self.images += len(self.yb[0])
            if self.iter + 1 == WARMUP_STEPS + self.steps:
                _sync(self.dls.device)
                self.seconds = time.perf_counter() - self.started
                raise CancelFitException()


def fastai_loop(faces: dict[str, FaceSet], arch: str, arch_kwargs: dict, bs: int, steps: int, device: torch.device,
                augment: AugmentConfig | None) -> float:
    """Images/s of `learn.fit` with the project's Learner: item pipeline, batch transforms, callbacks."""
    config = TrainConfig(data="bench", out="/tmp/fer-bench", arch=arch, arch_kwargs=arch_kwargs, bs=bs, augment=augment)
    dls = make_dataloaders(faces, bs=bs, valid_pct=0.1, augment=augment, device=device)
    learn = make_learner(dls, config, config.out)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ in ("ProgressCallback", "PlainProgress")])
    timer = StepTimer(steps)
    learn.fit(1, 1e-3, cbs=[timer])
    return timer.images / timer.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/fer2013", help="data set (synthetic noise if missing)")
    parser.add_argument("--arch", default="seed")
    parser.add_argument("--width", type=int, help="vgg or resnet: first-stage channels, as train's --width")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time the fast plain loop under torch.compile")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (train raises them on CPU: fer_fastai.allocator)")
    args = parser.parse_args()
    device = pick_device(args.device)
    kept = device.type == "cpu" and not args.default_malloc and keep_freed_memory()
    arch_kwargs = width_kwargs(args.arch, args.width) or {}
    try:
        splits = {"train": load_splits(args.data)["train"]}
        source = args.data
    except Exception:
        rng = np.random.default_rng(0)
        n = args.bs * (args.steps + WARMUP_STEPS + 2) * 2
        splits = {"train": FaceSet(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
                                   rng.integers(0, len(LABELS), n), tuple(map(str, range(n))))}
        source = "synthetic noise"
    print(f"arch {args.arch} {arch_kwargs or ''}, batch {args.bs}, {args.steps} timed steps, device {device}, "
          f"threads {torch.get_num_threads()}, data {source} ({len(splits['train'])} images), "
          f"malloc {'keeps freed memory' if kept else 'defaults'}")
    plain = partial(plain_loop, splits["train"], args.arch, arch_kwargs, args.bs, args.steps, device)
    fastai = partial(fastai_loop, splits, args.arch, arch_kwargs, args.bs, args.steps, device)
    runs = {
        "plain fp32": lambda: plain(fast=False),
        "plain channels-last + autocast": lambda: plain(fast=True),
        **({"plain, the same + torch.compile": lambda: plain(fast=True, compiled=True)} if args.compile else {}),
        "fastai, no augmentation": lambda: fastai(None),
        "fastai, default augmentation": lambda: fastai(AugmentConfig()),
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved, so a slow spell of the machine hits every variant alike
        for name, run in runs.items():
            samples[name].append(run())
    results = {name: float(np.median(values)) for name, values in samples.items()}
    best_plain = max(v for k, v in results.items() if k.startswith("plain"))
    for name, images_per_second in results.items():
        spread = f"{min(samples[name]):.0f}-{max(samples[name]):.0f}"
        print(f"{name:<34} {images_per_second:8.0f} img/s (range {spread:>9})  {images_per_second / best_plain:5.2f}x best plain loop")


if __name__ == "__main__":
    main()
