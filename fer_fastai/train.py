"""`python -m fer_fastai.train`: train a hand-built CNN on FER2013 with fastai.

`train(config)` is built from `load_splits` → `make_dataloaders` → `make_learner` → fit, each usable
alone. The run folder (docs/design.md) gets the chosen epoch's model as safetensors + card,
`history.csv`, `metrics.json`, and `checkpoint.pth` for `--resume`. A recipe file
(`--recipe recipes/NAME.toml`) gives the settings; flags on the command line override it.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from dataclasses import replace
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
from .atomic import check_output_folder, ensure_folder
from .calibrate import format_calibration
from .callbacks import (ChannelsLastInputs, DeviceMixedPrecision, EpochCheckpoint, HistoryCSV, PlainProgress,
                        ProgressiveResize, ResumableLearner, SaveChosenEpoch, load_checkpoint, load_optimizer_state)
from .card import DataRecord, ModelSize, new_card
from .data import load_splits, make_dataloaders, validation_faces
from .device import pick_device
from .errors import FerError, cli_errors
from .finish import finish_model
from .interpret import plot_lr_find
from .metrics import format_report
from .model_io import load_into, load_model, save_model
from .models import ARCHS, count_macs, count_parameters, create_model
from .paths import DEFAULT_DATA
from .recipes import (AugmentConfig, RecipeFile, TrainConfig, is_recipe_file, read_recipe_file,
                      recipe_from_dict, recipe_to_dict)

log = logging.getLogger(__name__)

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


def train(config: TrainConfig, resume: bool = False, recipe_file: RecipeFile | None = None) -> Path:
    """Train per `config` into `config.out`; returns the run folder. Ctrl-C leaves a resumable checkpoint.

    `recipe_file`, the file the config was read from, is recorded in the card (a resumed run keeps it)."""
    run_dir = check_output_folder(config.out)
    checkpoint_path = run_dir / "checkpoint.pth"
    checkpoint = None
    if resume:
        checkpoint = load_run_checkpoint(run_dir)
        saved = recipe_from_dict(checkpoint["config"], str(checkpoint_path))
        if saved.arch != config.arch:
            raise FerError(f"{checkpoint_path} is a checkpoint of architecture {saved.arch!r}, "
                           f"but --arch is {config.arch!r}; resume with --arch {saved.arch} or start a new --out")
        config = replace(saved, device=config.device)
        recipe_file_record = checkpoint.get("recipe_file")
    elif (run_dir / "model.safetensors").exists():
        raise FerError(f"{run_dir} already holds a trained model; pass --resume to continue it or choose another --out")
    else:
        recipe_file_record = recipe_file.provenance() if recipe_file else None

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
    card = new_card(config.arch, config.arch_kwargs, recipe=config, recipe_file=recipe_file_record, lr=lr, lr_found=lr_found,
                    data=DataRecord(str(config.data), counts),
                    model=ModelSize(count_parameters(learn.model), count_macs(learn.model)),
                    device=str(device), precision=resolve_precision(config.precision, device))
    weights_path = run_dir / "model.safetensors"

    saved_epoch_key = "best_epoch" if config.keep == "best" else "last_epoch"

    def save_epoch(epoch: int, valid_accuracy: float) -> None:
        save_model(learn.model, weights_path, card.replace(**{saved_epoch_key: epoch}, metrics={"valid_accuracy": valid_accuracy}))

    best = SaveChosenEpoch(save_epoch, best=checkpoint["best"] if checkpoint else None, keep_last=config.keep == "last")
    # Training time adds up over resumes: each checkpoint carries the seconds spent so far. A checkpoint
    # from before they did (no "train_seconds") leaves only the epochs this process trains timed.
    seconds_before = checkpoint.get("train_seconds", 0.0) if checkpoint else 0.0
    timed_from_epoch = 0 if checkpoint is None or "train_seconds" in checkpoint else checkpoint["next_epoch"]
    started = time.time()
    training_seconds = lambda: seconds_before + time.time() - started  # noqa: E731
    progress = lambda: {"config": recipe_to_dict(config), "recipe_file": recipe_file_record,  # noqa: E731
                        "lr": lr, "best": best.best, "train_seconds": training_seconds()}
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
    valid_faces, test_faces = validation_faces(splits, config), splits.get("test")
    timed_epochs = config.epochs - timed_from_epoch
    run_facts = {"train_seconds": round(train_seconds, 1), "epochs": config.epochs, "timed_epochs": timed_epochs,
                 "seconds_per_epoch": round(train_seconds / max(1, timed_epochs), 1),
                 "best_epoch": final_card.best_epoch, "saved_epoch": final_card.saved_epoch}
    finish_model(model, final_card, weights_path, valid_faces, test_faces, str(config.data), run_facts, learn=learn)
    return run_dir


def _reload_best(weights_path: Path, device: torch.device):
    if not weights_path.is_file():
        raise FerError(f"training ended without a saved model in {weights_path}")
    return load_model(weights_path, device)


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


def config_from_settings(settings: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from the command's settings (flag names with underscores, as a recipe file holds them);
    a setting that is None or absent takes the recipe's default."""
    settings = {name: value for name, value in settings.items() if value is not None}
    recipe, arch = settings.get("recipe", "fastai"), settings.get("arch", "seed")
    if arch not in ARCHS:
        raise FerError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    config = TrainConfig.for_recipe(
        recipe, data=settings.get("data", DEFAULT_DATA), out=settings["out"], arch=arch,
        arch_kwargs=width_kwargs(arch, settings.get("width")), lr=parse_lr(settings.get("lr")),
        weight_decay=settings.get("wd"), **{name: settings.get(name) for name in PLAIN_SETTINGS})
    if settings.get("lr") == "auto":  # for_recipe treats None as "recipe default", so lr_find is asked for here
        config = replace(config, lr=None)
    augment_overrides = {name: settings[name] for name in AUGMENT_SETTINGS if name in settings}
    if settings.get("no_flip"):
        augment_overrides["flip"] = False
    if settings.get("no_augment"):
        return replace(config, augment=None)
    if augment_overrides:
        return replace(config, augment=replace(config.augment or AugmentConfig(), **augment_overrides))
    return config


# Settings that go to TrainConfig under their own name, and those that go to its AugmentConfig.
PLAIN_SETTINGS = ("epochs", "bs", "label_smoothing", "mixup", "start_size", "full_size_at", "valid_pct", "device",
                  "precision", "patience", "keep", "seed", "split_seed", "skip_unknown", "skip_bad")
AUGMENT_SETTINGS = ("max_rotate", "max_zoom", "max_warp", "max_lighting", "max_shift", "erase_p")
NOT_IN_RECIPE_FILES = ("out", "resume")  # where and whether to continue: a run's, not a recipe's


@call_parse
def main(data: str = None,  # folder layout (train/<class>/…) or a fer2013.csv (default ../shared/fer2013)
         arch: str = None,  # architecture: seed, vgg or resnet (default seed; --resume keeps the run's own)
         recipe: str = None,  # fastai (one-cycle + augmentation + label smoothing, the default), seed (the original), or a recipe file recipes/NAME.toml
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
         full_size_at: float = None,  # progressive resizing: fraction of the epochs by which faces are back at 48x48 (default 0.5)
         valid_pct: float = None,  # share of train held out for validation when there is no valid/ folder (default 0.1)
         device: str = None,  # auto (mps, else cuda, else cpu; the default), mps, cuda or cpu
         precision: str = None,  # auto (the default), fp32, bf16 or fp16 (autocast on the chosen device)
         patience: int = None,  # stop after this many epochs without a better valid accuracy
         keep: str = None,  # which epoch to save: best (valid accuracy, the default) or last (for a small --valid-pct)
         out: str = None,  # run folder (default: runs/<arch>-<recipe>-<time>)
         seed: int = None,  # random seed: initial weights, augmentation, batch order (default 42)
         split_seed: int = None,  # random seed of the validation split carved from train; ensemble members share it (default 42)
         resume: bool = False,  # continue the run in --out from its checkpoint
         skip_unknown: bool = False,  # leave out class folders with unknown names instead of stopping
         skip_bad: bool = False,  # leave out unreadable images instead of stopping
         ):
    "Train a hand-built CNN on FER2013 with fastai and write a run folder."
    given = {name: value for name, value in locals().items() if value is not None and value is not False}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with cli_errors():
        recipe_file = None
        if is_recipe_file(recipe):
            allowed = set(inspect.signature(main.__wrapped__).parameters) - set(NOT_IN_RECIPE_FILES)
            recipe_file = read_recipe_file(recipe, allowed)
            given = {**recipe_file.settings, **{name: value for name, value in given.items() if name != "recipe"}}
        if resume:
            if out is None:
                raise FerError("--resume needs --out, the run folder to continue")
            given.setdefault("arch", load_run_checkpoint(Path(out)).get("config", {}).get("arch"))
        given.setdefault("out", f"runs/{given.get('arch', 'seed')}-{Path(given.get('recipe', 'fastai')).stem}-"
                                f"{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir = train(config_from_settings(given), resume=resume, recipe_file=recipe_file)
        _print_summary(run_dir)
