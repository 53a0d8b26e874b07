"""`python -m fer_fastai.train`: train a hand-built CNN on FER2013 with fastai.

`train(config)` is built from `load_splits` → `make_dataloaders` → `make_learner` → fit, each usable
alone. The run folder (docs/design.md) gets the chosen epoch's model as safetensors + card,
`history.csv`, `metrics.json`, and `checkpoint.pth` for `--resume`. A recipe file
(`--recipe recipes/NAME.toml`) gives the settings; flags on the command line override it. Started by
`torchrun` or `accelerate launch`, the same command trains one model over several processes (distributed.py).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import sys
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import minimum, steep, valley
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import F1Score, accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import get_model, set_seed
from fastcore.script import call_parse

from .allocator import keep_freed_memory
from .atomic import check_output_folder, ensure_folder
from .calibrate import format_calibration
from .callbacks import (ChannelsLastInputs, DeviceMixedPrecision, EpochCheckpoint, HistoryCSV, PlainProgress,
                        ProgressiveResize, ResumableLearner, SaveChosenEpoch, StopOnDivergence, diverged,
                        finite_weights, load_checkpoint, load_optimizer_state, restore_rng_state)
from .card import DataRecord, ModelSize, new_card
from . import distill
from .compute import Compute, training_macs
from .data import load_splits, make_dataloaders, validation_faces
from .distill import DistillationLoss, teacher_probabilities
from .distributed import ONE_PROCESS, GatherRandomStates, Processes, exits_with_peers, processes
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
    metrics = [accuracy, F1Score(average="macro")]
    if config.teacher:  # the batches carry soft targets (distill.py): the loss and metrics read them
        loss_func = DistillationLoss(config.distill_weight, config.distill_temperature, config.label_smoothing)
        metrics = [distill.accuracy, distill.MacroF1()]
    learn = ResumableLearner(dls, model, loss_func=loss_func, opt_func=opt_func, wd=config.weight_decay,
                             metrics=metrics, path=run_dir, model_dir=".")
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


LOCK_FILE = ".lock"


@contextmanager
def locked_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` while a run uses the folder, so that a second run or --resume into it is refused
    rather than both writing the same files. The lock (flock) belongs to the open file: the kernel lets go of it
    when the process ends, even by kill -9. Folders made here are removed again if the run wrote nothing into
    them (it stopped before any work), so a refused command leaves no empty run folder behind."""
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    lock_path = ensure_folder(run_dir) / LOCK_FILE
    try:
        lock = open(lock_path, "a")
    except OSError as error:
        raise FerError(f"cannot write into {run_dir}: {error.strerror or error}; choose another --out") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FerError(f"{run_dir} is in use by another training run (it holds {lock_path}); wait for that run "
                           "to end, or train into another --out") from None
        try:
            yield
        finally:
            if made and [path.name for path in run_dir.iterdir()] == [LOCK_FILE]:
                lock_path.unlink()
                for folder in made:
                    with suppress(OSError):
                        folder.rmdir()


def train(config: TrainConfig, resume: bool = False, recipe_file: RecipeFile | None = None,
          group: Processes | None = None) -> Path:
    """Train per `config` into `config.out`; returns the run folder, locked while training. Ctrl-C keeps the
    checkpoint of the last finished epoch, from which --resume continues as if never stopped.

    `recipe_file`, the file the config was read from, is recorded in the card (a resumed run keeps it).
    Under a launcher every process calls this with its `group` (default: the one the launcher set up); the
    main process owns the run folder (distributed.py)."""
    if group is None:
        with processes() as group:
            return train(config, resume, recipe_file, group)
    with ExitStack() as run_folder:
        def open_run() -> tuple[Path, TrainConfig, dict[str, Any] | None, dict[str, Any] | None]:
            run_dir = check_output_folder(config.out)
            run_folder.enter_context(locked_run_folder(run_dir))
            return run_dir, *start_or_resume(config, run_dir, resume, recipe_file, group)

        run_dir, run_config, checkpoint, recipe_file_record = group.from_main(open_run)
        return _train(run_config, run_dir, checkpoint, recipe_file_record, group)


def start_or_resume(config: TrainConfig, run_dir: Path, resume: bool, recipe_file: RecipeFile | None,
                    group: Processes) -> tuple[TrainConfig, dict[str, Any] | None, dict[str, Any] | None]:
    """(the config to train, the checkpoint to continue or None, the recipe file's record for the card); refuses
    a folder that holds another run's model or an unfinished run, unless resuming it."""
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
    elif checkpoint_path.exists():
        raise FerError(f"{run_dir} holds the checkpoint of an unfinished run; pass --resume to continue it or choose "
                       "another --out")
    else:
        recipe_file_record = recipe_file.provenance() if recipe_file else None
    if group.size > 1:
        group.batch_share(config.bs)
        if config.lr is None and checkpoint is None:
            raise FerError(f"--lr auto runs lr_find, which takes one process: run it without {group.size} processes "
                           "(python -m fer_fastai.train --lr auto …), then pass the rate it chose with --lr")
    return config, checkpoint, recipe_file_record


def _train(config: TrainConfig, run_dir: Path, checkpoint: dict[str, Any] | None,
           recipe_file_record: dict[str, Any] | None, group: Processes) -> Path:
    checkpoint_path = run_dir / "checkpoint.pth"

    def prepare() -> tuple[torch.device, dict[str, Any], Learner]:
        device = group.place(pick_device(config.device))
        if device.type == "cpu":
            keep_freed_memory()  # else every CPU step page-faults its activations back in (allocator.py)
        set_seed(group.seed(config.seed))  # Python's random too: fastai's DataLoader draws its shuffling from it
        splits = load_splits(config.data, skip_unknown=config.skip_unknown, skip_bad=config.skip_bad)
        teacher = teacher_probabilities(config.teacher, splits["train"]) if config.teacher else None
        dls = make_dataloaders(splits, bs=group.batch_share(config.bs), valid_pct=config.valid_pct,
                               seed=config.split_seed, augment=config.augment, device=device, teacher=teacher)
        check_split_sizes(dls, config)
        learn = make_learner(dls, config, run_dir)
        if learn.dls.device.type != device.type:
            raise FerError(f"fastai placed the data on {learn.dls.device}, not {device}")
        return device, splits, learn

    # the main process decodes the images (and labels them with a teacher) into the caches, the others read them
    device, splits, learn = group.in_waves(prepare)
    dls = learn.dls

    lr = config.lr
    lr_found = None
    if lr is None and checkpoint is None:
        lr = lr_found = find_lr(learn, run_dir / "plots" / "lr_find.png")
        log.info("lr_find suggests %.2e", lr)
    elif checkpoint is not None:
        lr = checkpoint["lr"]

    counts = {name: len(faces) for name, faces in splits.items()}
    counts.update(train=len(dls.train_ds), valid=len(dls.valid_ds))
    teacher_record = teacher_card(config.teacher, len(splits["train"])) if config.teacher else None
    compute = Compute(training_macs(lambda size: count_macs(learn.model, (1, 1, size, size)), config.epochs,
                                    counts["train"], config.start_size, config.full_size_at),
                      teacher_record["labelling_macs"] if teacher_record else 0)
    card = new_card(config.arch, config.arch_kwargs, recipe=config, recipe_file=recipe_file_record, lr=lr, lr_found=lr_found,
                    data=DataRecord(str(config.data), counts),
                    model=ModelSize(count_parameters(learn.model), count_macs(learn.model)),
                    training_compute=compute.as_dict(), teacher=teacher_record,
                    device=str(device), precision=resolve_precision(config.precision, device))
    weights_path = run_dir / "model.safetensors"

    saved_epoch_key = "best_epoch" if config.keep == "best" else "last_epoch"

    def save_epoch(epoch: int, valid_accuracy: float) -> None:
        model = get_model(learn.model)  # during a run of several processes, the model inside DistributedDataParallel
        if not finite_weights(model):  # StopOnDivergence stops before this; never save NaN weights
            raise FerError(diverged(learn, f"in epoch {epoch}",
                                    f"the model holds NaN or inf, so it was not saved to {weights_path}"))
        save_model(model, weights_path, card.replace(**{saved_epoch_key: epoch}, metrics={"valid_accuracy": valid_accuracy}))

    best = SaveChosenEpoch(save_epoch, best=checkpoint["best"] if checkpoint else None, keep_last=config.keep == "last")
    # Training time adds up over resumes: each checkpoint carries the seconds spent so far. A checkpoint
    # from before they did (no "train_seconds") leaves only the epochs this process trains timed.
    seconds_before = checkpoint.get("train_seconds", 0.0) if checkpoint else 0.0
    timed_from_epoch = 0 if checkpoint is None or "train_seconds" in checkpoint else checkpoint["next_epoch"]
    started = time.time()
    training_seconds = lambda: seconds_before + time.time() - started  # noqa: E731
    random_states = GatherRandomStates(group) if group.size > 1 else None
    progress = lambda: {"config": recipe_to_dict(config), "recipe_file": recipe_file_record,  # noqa: E731
                        "lr": lr, "best": best.best, "train_seconds": training_seconds(),
                        **(random_states.checkpoint_extra() if random_states else {})}
    epoch_checkpoint = EpochCheckpoint(checkpoint_path, progress)
    callbacks = [StopOnDivergence()]  # every process stops alike (divergence, patience); only the main one writes
    if group.main:
        callbacks += [best, epoch_checkpoint, HistoryCSV("history.csv", append=checkpoint is not None)]
    if random_states:
        callbacks.append(random_states)
    if config.mixup:
        from fastai.callback.mixup import MixUp

        callbacks.append(MixUp(alpha=config.mixup))
    if config.start_size:
        callbacks.append(ProgressiveResize(config.start_size, config.full_size_at))
    if config.patience:
        from fastai.callback.tracker import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(monitor="accuracy", comp=np.greater, patience=config.patience))
    if checkpoint is not None:
        continue_from(learn, checkpoint, checkpoint_path, config, group)

    try:
        with group.fitting(learn, device):
            if config.recipe == "seed":
                learn.fit(config.epochs, lr, cbs=callbacks)
            else:
                learn.fit_one_cycle(config.epochs, lr, cbs=callbacks)
    except KeyboardInterrupt:
        on_disk = epoch_checkpoint.saved_next_epoch or (checkpoint["next_epoch"] if checkpoint else None)
        raise FerError(interrupt_message(learn.epoch, on_disk, run_dir)) from None
    train_seconds = training_seconds()
    if group.size > 1:
        digest = group.same_weights(learn.model)
        log.info("all %d processes ended with the same weights (sha256 %s)", group.size, digest)
    if not group.main:
        return run_dir

    model, final_card = _reload_best(weights_path, device)
    valid_faces, test_faces = validation_faces(splits, config), splits.get("test")
    timed_epochs = config.epochs - timed_from_epoch
    run_facts = {"train_seconds": round(train_seconds, 1), "epochs": config.epochs, "timed_epochs": timed_epochs,
                 "seconds_per_epoch": round(train_seconds / max(1, timed_epochs), 1),
                 "best_epoch": final_card.best_epoch, "saved_epoch": final_card.saved_epoch,
                 **({"processes": group.size} if group.size > 1 else {})}
    finish_model(model, final_card, weights_path, valid_faces, test_faces, str(config.data), run_facts, learn=learn)
    return run_dir


def teacher_card(teacher: str, faces_labelled: int) -> dict[str, Any]:
    """What the card records of a distillation teacher: which file (and its checksum), and what labelling cost."""
    from .model_io import file_sha256

    macs = teacher_macs_per_face(teacher)
    return {"path": str(teacher), "sha256": file_sha256(teacher), "macs_per_face": macs,
            "faces_labelled": faces_labelled, "labelling_macs": macs * faces_labelled}


def teacher_macs_per_face(teacher: str) -> int:
    """A teacher's forward MACs per face, from its card (the .json beside a .onnx or .safetensors)."""
    from .card import read_card

    card = read_card(teacher)
    if card.model is None:
        raise FerError(f"--teacher {teacher}: its card does not record the model's MACs per face")
    return card.model.macs


def check_split_sizes(dls, config: TrainConfig) -> None:
    """Before the run folder fills: a train split of at least one batch, and faces to validate on (without
    them every epoch's accuracy is None and no epoch can be chosen)."""
    if len(dls.train_ds) < config.bs:
        raise FerError(f"the train split has {len(dls.train_ds)} images, fewer than one batch of {config.bs}; lower --bs")
    if len(dls.valid_ds) == 0:
        raise FerError(f"no faces are left to validate on: --valid-pct {config.valid_pct} of {len(dls.train_ds)} train "
                       "faces holds out none (every class keeps one face for training, so only a class with 2 or more "
                       "gives one to validation); add faces, or a valid/ folder")


def continue_from(learn: Learner, checkpoint: dict[str, Any], checkpoint_path: Path, config: TrainConfig,
                  group: Processes = ONE_PROCESS) -> None:
    """Load weights, optimizer and random-number state, so the next epoch trains as in an uninterrupted run."""
    learn.create_opt()
    load_into(learn.model, checkpoint["model"], str(checkpoint_path), config.arch)
    load_optimizer_state(learn, checkpoint["opt"])
    learn.first_epoch = checkpoint["next_epoch"]
    if learn.first_epoch >= config.epochs:
        log.info("all epochs of %s are done (%d of %d); finishing the run again (calibration, scores, plots)",
                 learn.path, config.epochs, config.epochs)
        return
    log.info("resuming %s at epoch %d of %d", learn.path, learn.first_epoch, config.epochs)
    random_state = group.random_state(checkpoint)
    if random_state is not None:
        restore_rng_state(random_state, learn.dls)
    if "rng" not in checkpoint:
        log.info("%s holds no random-number state (an older version wrote it): the resumed epochs see another data "
                 "order and augmentation than an uninterrupted run would", checkpoint_path)
    elif checkpoint.get("processes", 1) != group.size:
        log.info("%s was written by a run of %d process(es), this one has %d: the resumed epochs draw other random "
                 "numbers (augmentation, dropout) than an uninterrupted run would", checkpoint_path,
                 checkpoint.get("processes", 1), group.size)


def interrupt_message(epoch: int, checkpoint_next_epoch: int | None, run_dir: Path) -> str:
    """What Ctrl-C in `epoch` leaves: the checkpoint on disk continues at `checkpoint_next_epoch` (None: none)."""
    resume = f"continue with: python -m fer_fastai.train --out {run_dir} --resume"
    if checkpoint_next_epoch is None:
        return f"interrupted in epoch {epoch}, before any epoch finished: there is nothing to resume; start the run again"
    if checkpoint_next_epoch == epoch + 1:
        return f"interrupted in epoch {epoch}; checkpoint saved, {resume}"
    return (f"interrupted in epoch {epoch}; the checkpoint of epoch {checkpoint_next_epoch - 1} is kept and --resume "
            f"redoes epoch {checkpoint_next_epoch} from its start; {resume}")


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
        print("\ncalibration: " + format_calibration({**metrics["calibration"], "uncertainty": metrics["uncertainty"]}))
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
                  "precision", "patience", "keep", "seed", "split_seed", "skip_unknown", "skip_bad", "teacher",
                  "distill_weight", "distill_temperature")
AUGMENT_SETTINGS = ("max_rotate", "max_zoom", "max_warp", "max_lighting", "max_shift", "erase_p")
NOT_IN_RECIPE_FILES = ("out", "resume")  # where and whether to continue: a run's, not a recipe's
RESUME_FLAGS = ("out", "resume", "device")  # all that --resume takes: the recipe is the checkpoint's


def recipe_value(config: TrainConfig, flag: str) -> Any:
    """The part of a recipe that the command-line flag `flag` (underscored) sets."""
    if flag in AUGMENT_SETTINGS or flag == "no_flip":
        if config.augment is None:
            return None
        return not config.augment.flip if flag == "no_flip" else getattr(config.augment, flag)
    if flag == "no_augment":
        return config.augment is None
    if flag == "data":
        return Path(config.data)
    return getattr(config, {"wd": "weight_decay", "width": "arch_kwargs"}.get(flag, flag))


def refuse_recipe_changes(given: dict[str, Any], checkpoint: dict[str, Any], checkpoint_path: Path) -> None:
    """--resume continues the recipe its checkpoint holds: a flag that would change it is refused, not ignored.
    Flags that repeat the recipe (the original command line with --resume added) are fine."""
    flags = {name: value for name, value in given.items() if name not in RESUME_FLAGS}
    if not flags:
        return
    saved = recipe_from_dict(checkpoint["config"], str(checkpoint_path))
    asked = config_from_settings({"arch": saved.arch, "recipe": saved.recipe, **flags, "out": saved.out})
    changed = [name for name in flags if name != "recipe" and recipe_value(asked, name) != recipe_value(saved, name)]
    if "recipe" in flags and asked.recipe != saved.recipe:
        changed.insert(0, "recipe")
    if not changed:
        return
    names = ", ".join("--" + name.replace("_", "-") for name in changed)
    schedule = "the one-cycle schedule" if saved.recipe != "seed" else "the learning-rate schedule"
    if "epochs" not in changed:
        why = f"{schedule} and the data order were laid out for the original recipe"
    else:
        why = f"{schedule} was laid out for {saved.epochs} epoch{'s' if saved.epochs != 1 else ''}"
        why += " and the data order for the original recipe" if len(changed) > 1 else ""
    raise FerError(f"--resume continues the recipe in {checkpoint_path}, and {names} would change it: {why}; "
                   "start a new --out to change them (--resume takes only --out and --device)")


def config_from_command(given: dict[str, Any], recipe: str | None, out: str | None,
                        resume: bool) -> tuple[TrainConfig, RecipeFile | None]:
    """The command's flags, over a recipe file's settings, as a TrainConfig; with --resume, checked against the
    checkpoint's recipe."""
    recipe_file = None
    if is_recipe_file(recipe):
        allowed = set(inspect.signature(main.__wrapped__).parameters) - set(NOT_IN_RECIPE_FILES)
        recipe_file = read_recipe_file(recipe, allowed)
        given = {**recipe_file.settings, **{name: value for name, value in given.items() if name != "recipe"}}
    if resume:
        if out is None:
            raise FerError("--resume needs --out, the run folder to continue")
        checkpoint = load_run_checkpoint(Path(out))
        refuse_recipe_changes(given, checkpoint, Path(out) / "checkpoint.pth")
        given["arch"] = checkpoint["config"].get("arch")
    given.setdefault("out", f"runs/{given.get('arch', 'seed')}-{Path(given.get('recipe', 'fastai')).stem}-"
                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    return config_from_settings(given), recipe_file


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
         teacher: str = None,  # distillation: a model (.onnx or .safetensors) whose calibrated probabilities it also learns
         distill_weight: float = None,  # distillation: the teacher's share of the loss, 0-1 (default 0.5)
         distill_temperature: float = None,  # distillation: softens teacher and student in the teacher's term (default 2)
         skip_unknown: bool = False,  # leave out class folders with unknown names instead of stopping
         skip_bad: bool = False,  # leave out unreadable images instead of stopping
         ):
    "Train a hand-built CNN on FER2013 with fastai and write a run folder."
    given = {name: value for name, value in locals().items() if value is not None and value is not False}
    with cli_errors(), exits_with_peers(), processes() as group:
        # Under a launcher only the main process speaks; the others log errors alone.
        logging.basicConfig(level=logging.INFO if group.main else logging.ERROR, format="%(message)s")
        config, recipe_file = group.from_main(lambda: config_from_command(given, recipe, out, resume))
        run_dir = train(config, resume=resume, recipe_file=recipe_file, group=group)
        if group.main:
            _print_summary(run_dir)
