"""`python -m fer_fastai.train`: train a hand-built CNN on FER2013 with fastai.

`train(config)` is built from `load_splits` → `make_dataloaders` → `make_learner` → fit, each usable
alone. The run folder (DESIGN.md) gets the best model by validation accuracy as safetensors + card,
`history.csv`, `metrics.json`, and `checkpoint.pth` for `--resume`.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import minimum, steep, valley
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import F1Score, accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import set_seed
from fastcore.script import call_parse

from .allocator import keep_freed_memory
from .atomic import check_output_folder, ensure_folder, write_json
from .augment import AugmentConfig
from .calibrate import calibrate_logits, format_calibration
from .callbacks import (ChannelsLastInputs, DeviceMixedPrecision, EpochCheckpoint, HistoryCSV, PlainProgress,
                        ProgressiveResize, ResumableLearner, SaveBestModel, load_checkpoint, load_optimizer_state)
from .data import FaceSet, load_splits, make_dataloaders, recipe_split_seed, validation_split
from .device import pick_device
from .errors import FerError, cli_errors, require
from .evaluate import predictions_from_logits
from .interpret import plot_lr_find, write_run_plots
from .labels import LABELS
from .metrics import classification_report, format_report
from .model_io import load_into, load_model, new_card, save_model
from .models import ARCHS, count_macs, count_parameters, create_model
from .predict import TorchPredictor
from .preprocess import IMAGE_SIZE, pixels_to_input

log = logging.getLogger(__name__)

RECIPES = ("fastai", "seed")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEPS = ("best", "last")  # which epoch's weights a run saves: best valid accuracy, or the last one
MIN_START_SIZE = 16


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved in model.json and checkpoint.pth so it can be repeated."""

    data: str
    out: str
    arch: str = "seed"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: str = "fastai"  # "fastai": one-cycle + augmentation + label smoothing; "seed": the original
    epochs: int = 30
    bs: int = 64
    lr: float | None = 3e-3  # None = lr_find
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off
    start_size: int | None = None  # progressive resizing: train faces start this small (None = off) …
    full_size_at: float = 0.5  # … and grow to 48x48 by this fraction of the epochs
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    valid_pct: float = 0.1
    seed: int = 42  # initial weights, augmentation, batch order
    split_seed: int = 42  # which train faces are held out for validation: apart from seed, so that
    # runs differing only in seed validate on the same faces and can be ensembled
    device: str = "auto"
    precision: str = "auto"
    patience: int | None = None  # early stopping on valid accuracy, off by default with one-cycle
    keep: str = "best"  # "best": the epoch with the best valid accuracy; "last": the last epoch
    skip_unknown: bool = False
    skip_bad: bool = False

    def __post_init__(self) -> None:
        """Bad numbers fail here, before any data is decoded or a run folder made."""
        checks = [(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
                  (self.bs >= 1, f"--bs must be at least 1, got {self.bs}"),
                  (self.lr is None or self.lr > 0, f"--lr must be above 0, got {self.lr}"),
                  (self.weight_decay >= 0, f"--wd must be 0 or more, got {self.weight_decay}"),
                  (0 <= self.label_smoothing < 1, f"--label-smoothing must be from 0 to below 1, got {self.label_smoothing}"),
                  (self.mixup >= 0, f"--mixup is a Beta alpha, 0 (off) or more, got {self.mixup}"),
                  (0 < self.valid_pct < 1, f"--valid-pct must be between 0 and 1, got {self.valid_pct}"),
                  (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"),
                  (self.patience is None or self.patience >= 1, f"--patience must be at least 1, got {self.patience}"),
                  (self.keep in KEEPS, f"unknown --keep {self.keep!r}; choose one of {', '.join(KEEPS)}")]
        require(checks)
        if self.start_size is not None and not MIN_START_SIZE <= self.start_size < IMAGE_SIZE:
            raise FerError(f"--start-size must be from {MIN_START_SIZE} (four 2x poolings leave 1 pixel) "
                           f"to {IMAGE_SIZE - 1} pixels, got {self.start_size}")
        if not 0 < self.full_size_at <= 1:
            raise FerError(f"--full-size-at is a fraction of the epochs, above 0 and at most 1; got {self.full_size_at}")

    @classmethod
    def for_recipe(cls, recipe: str, **overrides: Any) -> "TrainConfig":
        """The recipe's defaults, then every override that is not None."""
        if recipe not in RECIPES:
            raise FerError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        defaults: dict[str, Any] = {"recipe": recipe}
        if recipe == "seed":  # the original project: Adam 1e-3 constant, plain CE, bs 32, 20 epochs, no augmentation
            defaults.update(epochs=20, bs=32, lr=1e-3, weight_decay=0.0, label_smoothing=0.0, augment=None)
        defaults.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**defaults)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto → bf16 on CPUs with native bf16 and on bf16-capable CUDA, fp16 on older CUDA, fp32 elsewhere.

    MPS stays fp32 under auto: autocast there has not been checked against accuracy by this project.
    """
    if precision != "auto":
        return precision
    if device.type == "cpu":
        return "bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def make_learner(dls, config: TrainConfig, run_dir: Path) -> Learner:
    """A fastai Learner for the config's architecture and recipe, writing into `run_dir`."""
    model = create_model(config.arch, **config.arch_kwargs)
    if config.recipe == "seed":
        loss_func = CrossEntropyLossFlat()
        opt_func = partial(OptimWrapper, opt=torch.optim.Adam)  # the original's torch Adam, no weight decay
    else:
        loss_func = LabelSmoothingCrossEntropyFlat(eps=config.label_smoothing) if config.label_smoothing else CrossEntropyLossFlat()
        from fastai.optimizer import Adam

        opt_func = Adam
    learn = ResumableLearner(dls, model, loss_func=loss_func, opt_func=opt_func, wd=config.weight_decay,
                             metrics=[accuracy, F1Score(average="macro")], path=run_dir, model_dir=".")
    precision = resolve_precision(config.precision, dls.device)
    if precision != "fp32":
        learn.add_cb(DeviceMixedPrecision(amp_mode=precision))
    if dls.device.type in ("cpu", "cuda"):
        learn.add_cb(ChannelsLastInputs())
    if not sys.stdout.isatty():
        learn.remove_cb(ProgressCallback)
        learn.add_cb(PlainProgress())
    return learn


def find_lr(learn: Learner, plot_path: Path) -> float:
    """Run lr_find, save its plot (every suggestion named, the one used marked), return 'valley'."""
    suggestions = learn.lr_find(suggest_funcs=(valley, minimum, steep), show_plot=False)
    plot_lr_find(learn.recorder.lrs, learn.recorder.losses, suggestions._asdict(), "valley", plot_path)
    return float(suggestions.valley)


def load_run_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint an interrupted run in `run_dir` left, or a one-line error if there is none."""
    checkpoint_path = run_dir / "checkpoint.pth"
    if not checkpoint_path.is_file():
        raise FerError(f"nothing to resume: {checkpoint_path} does not exist")
    return load_checkpoint(checkpoint_path)


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train per `config` into `config.out`; returns the run folder. Ctrl-C leaves a resumable checkpoint."""
    run_dir = check_output_folder(config.out)
    checkpoint_path = run_dir / "checkpoint.pth"
    checkpoint = None
    if resume:
        checkpoint = load_run_checkpoint(run_dir)
        saved = checkpoint["config"]
        if saved["arch"] != config.arch:
            raise FerError(f"{checkpoint_path} is a checkpoint of architecture {saved['arch']!r}, "
                           f"but --arch is {config.arch!r}; resume with --arch {saved['arch']} or start a new --out")
        augment = AugmentConfig(**saved["augment"]) if saved.get("augment") else None
        config = replace(TrainConfig(**{**saved, "split_seed": recipe_split_seed(saved), "augment": augment}),
                         device=config.device)
    elif (run_dir / "model.safetensors").exists():
        raise FerError(f"{run_dir} already holds a trained model; pass --resume to continue it or choose another --out")

    device = pick_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()  # else every CPU step page-faults its activations back in (allocator.py)
    set_seed(config.seed)  # Python's random too: fastai's DataLoader draws its shuffling from it
    splits = load_splits(config.data, skip_unknown=config.skip_unknown, skip_bad=config.skip_bad)
    ensure_folder(run_dir)
    dls = make_dataloaders(splits, bs=config.bs, valid_pct=config.valid_pct, seed=config.split_seed,
                           augment=config.augment, device=device)
    if len(dls.train_ds) < config.bs:
        raise FerError(f"the train split has {len(dls.train_ds)} images, fewer than one batch of {config.bs}; lower --bs")
    learn = make_learner(dls, config, run_dir)
    if learn.dls.device.type != device.type:
        raise FerError(f"fastai placed the data on {learn.dls.device}, not {device}")

    lr = config.lr
    lr_found = None
    if lr is None and checkpoint is None:
        lr = lr_found = find_lr(learn, run_dir / "plots" / "lr_find.png")
        log.info("lr_find suggests %.2e", lr)
    elif checkpoint is not None:
        lr = checkpoint["lr"]

    counts = {name: len(faces) for name, faces in splits.items()}
    counts.update(train=len(dls.train_ds), valid=len(dls.valid_ds))
    model_info = {"params": count_parameters(learn.model), "macs": count_macs(learn.model)}
    card = new_card(config.arch, config.arch_kwargs, recipe=_jsonable(asdict(config)), lr=lr, lr_found=lr_found,
                    data={"source": str(config.data), "counts": counts}, model=model_info,
                    device=str(device), precision=resolve_precision(config.precision, device))
    weights_path = run_dir / "model.safetensors"

    saved_epoch_key = "best_epoch" if config.keep == "best" else "last_epoch"

    def save_epoch(epoch: int, valid_accuracy: float) -> None:
        save_model(learn.model, weights_path, {**card, saved_epoch_key: epoch, "metrics": {"valid_accuracy": valid_accuracy}})

    best = SaveBestModel(save_epoch, best=checkpoint["best"] if checkpoint else None, keep_last=config.keep == "last")
    # Training time adds up over resumes: each checkpoint carries the seconds spent so far. A checkpoint
    # from before they did (no "train_seconds") leaves only the epochs this process trains timed.
    seconds_before = checkpoint.get("train_seconds", 0.0) if checkpoint else 0.0
    timed_from_epoch = 0 if checkpoint is None or "train_seconds" in checkpoint else checkpoint["next_epoch"]
    started = time.time()
    training_seconds = lambda: seconds_before + time.time() - started  # noqa: E731
    progress = lambda: {"config": _jsonable(asdict(config)), "lr": lr, "best": best.best,  # noqa: E731
                        "train_seconds": training_seconds()}
    epoch_checkpoint = EpochCheckpoint(checkpoint_path, progress)
    callbacks = [best, epoch_checkpoint, HistoryCSV("history.csv", append=checkpoint is not None)]
    if config.mixup:
        from fastai.callback.mixup import MixUp

        callbacks.append(MixUp(alpha=config.mixup))
    if config.start_size:
        callbacks.append(ProgressiveResize(config.start_size, config.full_size_at))
    if config.patience:
        from fastai.callback.tracker import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(monitor="accuracy", comp=np.greater, patience=config.patience))
    if checkpoint is not None:
        learn.create_opt()
        load_into(learn.model, checkpoint["model"], str(checkpoint_path), config.arch)
        load_optimizer_state(learn, checkpoint["opt"])
        learn.first_epoch = checkpoint["next_epoch"]
        log.info("resuming %s at epoch %d of %d", run_dir, learn.first_epoch, config.epochs)

    try:
        if config.recipe == "seed":
            learn.fit(config.epochs, lr, cbs=callbacks)
        else:
            learn.fit_one_cycle(config.epochs, lr, cbs=callbacks)
    except KeyboardInterrupt:
        epoch_checkpoint.save_interrupted(learn)
        raise FerError(f"interrupted in epoch {learn.epoch}; checkpoint saved, continue with: "
                       f"python -m fer_fastai.train --out {run_dir} --resume") from None
    train_seconds = training_seconds()

    model, final_card = _reload_best(weights_path, device)
    valid_faces, test_faces = validation_split(splits, config.valid_pct, config.split_seed), splits.get("test")
    timed_epochs = config.epochs - timed_from_epoch
    run_facts = {"train_seconds": round(train_seconds, 1), "epochs": config.epochs, "timed_epochs": timed_epochs,
                 "seconds_per_epoch": round(train_seconds / max(1, timed_epochs), 1),
                 "best_epoch": final_card.get("best_epoch"), "saved_epoch": final_card.get(saved_epoch_key)}
    finish_model(model, final_card, weights_path, valid_faces, test_faces, str(config.data), run_facts, learn=learn)
    return run_dir


def finish_model(model: torch.nn.Module, card: dict[str, Any], weights_path: Path, valid_faces: FaceSet,
                 test_faces: FaceSet | None, data_name: str, run_facts: dict[str, Any], learn: Learner | None = None,
                 ) -> dict[str, Any]:
    """Calibrate on valid, score valid and test, save the model and metrics.json, draw the run's plots.

    Shared by training and `fer_fastai.ensemble`, so every model in a run folder is finished alike.
    Returns the metrics (also in `weights_path`'s folder as metrics.json).
    """
    # The model runs once per split (a shifted ensemble costs 9 passes of its networks per face);
    # calibration, scores and plots all come from these logits.
    device = str(next(model.parameters()).device)
    faces_of = {split: faces for split, faces in (("valid", valid_faces), ("test", test_faces)) if faces is not None}
    uncalibrated = TorchPredictor(model, card, device)
    logits = {split: uncalibrated.predict_logits(pixels_to_input(faces.pixels)) for split, faces in faces_of.items()}
    # One temperature fitted on valid; the card carries it, so the reports below and every consumer use it.
    calibration = calibrate_logits(logits["valid"], valid_faces.labels, logits.get("test"),
                                   None if test_faces is None else test_faces.labels)
    card = {**card, "temperature": calibration["temperature"], "calibration": calibration}
    predictions = {split: predictions_from_logits(logits[split], calibration["temperature"], np.arange(len(LABELS)))
                   for split in faces_of}
    metrics = {**run_facts, "calibration": calibration}
    for split, faces in faces_of.items():
        metrics[split] = classification_report(predictions[split].probs, faces.labels)
    save_model(model, weights_path, {**card, "metrics": _headline(metrics)})
    run_dir = Path(weights_path).parent
    write_json(run_dir / "metrics.json", metrics)
    plot_split = "test" if test_faces is not None else "valid"
    plot_faces = faces_of[plot_split]
    write_run_plots(run_dir, TorchPredictor(model, card, device), plot_faces,
                    f"{data_name} {plot_split} split, {len(plot_faces):,} faces", learn=learn,
                    predictions=predictions[plot_split])
    return metrics


def _reload_best(weights_path: Path, device: torch.device):
    if not weights_path.is_file():
        raise FerError(f"training ended without a saved model in {weights_path}")
    return load_model(weights_path, device)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that go in the model card (the full report stays in metrics.json)."""
    headline = {}
    for split in ("valid", "test"):
        if split in metrics:
            for key in ("accuracy", "macro_f1", "loss", "ece"):
                headline[f"{split}_{key}"] = round(metrics[split][key], 4)
            headline[f"{split}_n"] = metrics[split]["n"]
    return headline


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def parse_lr(text: str | None) -> float | None:
    """'auto' → None (run lr_find); a number → that learning rate."""
    if text is None or text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise FerError(f"--lr must be a number or 'auto', got {text!r}") from None
    if value <= 0:
        raise FerError(f"--lr must be positive, got {value}")
    return value


def _print_summary(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("valid", "test"):
        if split in metrics:
            print(format_report(metrics[split], title=f"\n{split}:"))
    if "calibration" in metrics:
        print("\ncalibration: " + format_calibration(metrics["calibration"]))
    print(f"plots: {run_dir / 'plots'}")
    timed = metrics.get("timed_epochs", metrics["epochs"])
    which = "" if timed == metrics["epochs"] else f" over the last {timed} of {metrics['epochs']} epochs, the ones timed"
    print(f"\n{metrics['train_seconds']:.0f} s training{which} ({metrics['seconds_per_epoch']:.1f} s/epoch); "
          f"run folder: {run_dir}")


def default_widths(arch: str) -> tuple[int, ...] | None:
    """The stage widths an architecture takes by default, or None if it has no `widths` argument."""
    parameter = inspect.signature(ARCHS[arch]).parameters.get("widths")
    return None if parameter is None else tuple(parameter.default)


def width_kwargs(arch: str, width: int | None) -> dict[str, Any] | None:
    """--width N → stage widths N, 2N, 4N, … for an architecture with a `widths` argument (one per
    stage, as many as its default has); None keeps the architecture's default."""
    if width is None:
        return None
    stages = default_widths(arch)
    if stages is None:
        widened = [name for name in ARCHS if default_widths(name) is not None]
        raise FerError(f"--width applies to --arch {' or '.join(widened)} only, not {arch!r}")
    if width < 1:
        raise FerError(f"--width must be a positive number of channels, got {width}")
    return {"widths": [width * 2 ** stage for stage in range(len(stages))]}


@call_parse
def main(data: str = "../shared/fer2013",  # folder layout (train/<class>/…) or a fer2013.csv
         arch: str = None,  # architecture: seed, vgg or resnet (default seed; --resume keeps the run's own)
         recipe: str = "fastai",  # fastai (one-cycle + augmentation + label smoothing) or seed (the original)
         epochs: int = None,  # epochs (default: 30 fastai, 20 seed)
         bs: int = None,  # batch size (default: 64 fastai, 32 seed)
         lr: str = None,  # learning rate, or 'auto' to run lr_find (default: 3e-3 fastai, 1e-3 seed)
         wd: float = None,  # weight decay (default: 0.01 fastai, 0 seed)
         label_smoothing: float = None,  # label-smoothing epsilon (default: 0.1 fastai, 0 seed)
         mixup: float = None,  # MixUp alpha, e.g. 0.4 (default: off)
         width: int = None,  # vgg and resnet: channels of the first stage, doubled per stage (default 32)
         no_augment: bool = False,  # train without augmentation
         no_flip: bool = False,  # augmentation: never mirror faces (default: half of them, at random)
         max_rotate: float = None,  # augmentation: max rotation in degrees (default 10)
         max_zoom: float = None,  # augmentation: max zoom factor (default 1.1)
         max_warp: float = None,  # augmentation: perspective warp (default 0: costly on CPU)
         max_lighting: float = None,  # augmentation: brightness/contrast change (default 0.2)
         max_shift: int = None,  # augmentation: max shift in pixels, per face (default 0)
         erase_p: float = None,  # augmentation: chance of one random erased rectangle per face (default 0.25)
         start_size: int = None,  # progressive resizing: first epochs train on faces this small, e.g. 32 (default: off)
         full_size_at: float = 0.5,  # progressive resizing: fraction of the epochs by which faces are back at 48x48
         valid_pct: float = 0.1,  # share of train held out for validation when there is no valid/ folder
         device: str = "auto",  # auto (mps, else cuda, else cpu), mps, cuda or cpu
         precision: str = "auto",  # auto, fp32, bf16 or fp16 (autocast on the chosen device)
         patience: int = None,  # stop after this many epochs without a better valid accuracy
         keep: str = "best",  # which epoch to save: best (valid accuracy) or last (for a small --valid-pct)
         out: str = None,  # run folder (default: runs/<arch>-<recipe>-<time>)
         seed: int = 42,  # random seed (initial weights, augmentation, batch order)
         split_seed: int = 42,  # random seed of the validation split carved from train (ensemble members share it)
         resume: bool = False,  # continue the run in --out from its checkpoint
         skip_unknown: bool = False,  # leave out class folders with unknown names instead of stopping
         skip_bad: bool = False,  # leave out unreadable images instead of stopping
         ):
    "Train a hand-built CNN on FER2013 with fastai and write a run folder."
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with cli_errors():
        if resume and out is None:
            raise FerError("--resume needs --out, the run folder to continue")
        if arch is None:
            arch = load_run_checkpoint(Path(out))["config"]["arch"] if resume else "seed"
        if arch not in ARCHS:
            raise FerError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        arch_kwargs = width_kwargs(arch, width)
        out = out or f"runs/{arch}-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        lr_value = parse_lr(lr)
        config = TrainConfig.for_recipe(
            recipe, data=data, out=out, arch=arch, arch_kwargs=arch_kwargs, mixup=mixup,
            start_size=start_size, full_size_at=full_size_at, epochs=epochs, bs=bs, weight_decay=wd,
            label_smoothing=label_smoothing, valid_pct=valid_pct, device=device, precision=precision,
            patience=patience, keep=keep, seed=seed, split_seed=split_seed, skip_unknown=skip_unknown, skip_bad=skip_bad, lr=lr_value)
        if lr == "auto":  # for_recipe treats None as "recipe default", so lr_find is asked for here
            config = replace(config, lr=None)
        augment_overrides = {key: value for key, value in dict(
            max_rotate=max_rotate, max_zoom=max_zoom, max_warp=max_warp, max_lighting=max_lighting,
            erase_p=erase_p, max_shift=max_shift, flip=False if no_flip else None).items() if value is not None}
        if no_augment:
            config = replace(config, augment=None)
        elif augment_overrides:
            config = replace(config, augment=replace(config.augment or AugmentConfig(), **augment_overrides))
        run_dir = train(config, resume=resume)
        _print_summary(run_dir)
