"""Plots that show what a trained model gets right and wrong, for people rather than for logs.

`python -m fer_fastai.interpret runs/NAME` writes every plot into runs/NAME/plots/ (training does the same
at its end); `python -m fer_fastai.interpret MODEL --data PATH` writes the data plots for any model.
Each plot answers one question, stated in its title. Colours are the Okabe-Ito palette (colour-blind safe),
and right/wrong is also marked by a symbol, never by colour alone. Figures are built without pyplot, so
importing or plotting never touches global matplotlib state.
"""

from __future__ import annotations

import inspect
from functools import wraps
from pathlib import Path
from typing import Sequence

import numpy as np
from fastcore.script import call_parse
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .atomic import atomic_path, check_output_folder
from .card import ModelCard
from .data import FaceSet
from .errors import FerError, cli_errors
from .eval_data import load_eval_data
from .explain import MIN_SCALE, OCCLUSION, legend_colours, occlusion_maps, overlay_heatmap
from .labels import LABELS
from .metrics import ECE_BINS, classification_report, confusion_matrix, expected_calibration_error, reliability_bins
from .predict import load_predictor
from .recipes import TrainConfig
from .scoring import Predictions, predict_faces
from .selective import TARGET_ACCURACY, risk_coverage, selective_scores

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency.
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, BLACK = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000")
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "figure.titlesize": 14,
         "legend.fontsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10}
DPI = 120
RIGHT, WRONG = "\u2713", "\u2717"  # check mark and ballot x (DejaVu Sans has both)
SPARSE_BIN = 10  # reliability bins with fewer faces are drawn hollow


def styled(plot):
    """Run a plot function under STYLE: rcParams are read as artists are made, and restored afterwards."""

    @wraps(plot)
    def run(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return run


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Figure, path: str | Path) -> Path:
    """PNG, written atomically (the temp file's suffix is .tmp, so the format is named)."""
    path = Path(path)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=DPI)
    return path


def _percent(value: float) -> str:
    """Whole percent; one decimal below 10%, and never a flat 0% or 100% for a probability that is neither."""
    if value >= 0.995:
        return "100%" if value == 1.0 else ">99%"
    if value < 0.001:
        return "0%" if value == 0.0 else "<0.1%"
    return f"{100 * value:.1f}%" if value < 0.095 else f"{100 * value:.0f}%"


@styled
def plot_confusion_matrix(targets: np.ndarray, probs: np.ndarray, path: str | Path, subject: str,
                          labels: Sequence[str] = LABELS) -> Path:
    """Counts and row-normalised shares side by side, class names on both axes."""
    counts = confusion_matrix(targets, probs.argmax(axis=1), len(labels))
    support = counts.sum(axis=1)
    shares = np.divide(counts, support[:, None], out=np.zeros(counts.shape), where=support[:, None] > 0)
    accuracy = np.trace(counts) / max(1, counts.sum())
    figure = _figure(15, 6.8)
    panels = figure.subplots(1, 2)
    row_names = [f"{label} ({n:,})" for label, n in zip(labels, support)]
    for axis, values, text, title, bar_label in (
            (panels[0], counts, lambda v: f"{v:,}", "How many faces (count)", "faces"),
            (panels[1], shares * 100, lambda v: f"{v:.0f}%", "Share of each actual class (%; diagonal = recall)",
             "% of the actual class")):
        image = axis.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1))
        figure.colorbar(image, ax=axis, shrink=0.8, label=bar_label)
        threshold = values.max() / 2
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, text(value), ha="center", va="center", fontsize=10,
                      color="white" if value > threshold else BLACK)
        for i in range(len(labels)):  # outline the diagonal: the correct predictions
            axis.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=BLACK, linewidth=1.5))
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.set_yticks(range(len(labels)), row_names)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("actual class (number of faces)")
        axis.set_title(title)
    figure.suptitle(f"Which expressions does the model confuse? {subject}, accuracy {accuracy:.1%}")
    return save_figure(figure, path)


@styled
def plot_class_scores(targets: np.ndarray, probs: np.ndarray, path: str | Path, subject: str,
                      labels: Sequence[str] = LABELS) -> Path:
    """Precision, recall and F1 per class as grouped bars (value on each), macro-F1 as a reference line."""
    report = classification_report(probs, targets, labels)
    scores = (("precision", BLUE, "//"), ("recall", ORANGE, ""), ("f1", GREEN, ".."))
    figure = _figure(12, 6)
    axis = figure.subplots()
    positions = np.arange(len(labels))
    width = 0.27
    for offset, (score, color, hatch) in zip((-width, 0, width), scores):
        values = [report["per_class"][label][score] for label in labels]
        bars = axis.bar(positions + offset, values, width, color=color, hatch=hatch, edgecolor="white",
                        label="F1" if score == "f1" else score)
        axis.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=8, padding=2)
    axis.axhline(report["macro_f1"], color=BLACK, linestyle="--", linewidth=1.2,
                 label=f"macro-F1 {report['macro_f1']:.3f}")
    axis.set_xticks(positions, [f"{label}\n({report['per_class'][label]['support']:,} faces)" for label in labels])
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("score (0 to 1)")
    axis.set_xlabel("actual class (number of faces)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="upper left", ncols=4)
    figure.suptitle(f"How well is each expression recognised? {subject}, accuracy {report['accuracy']:.1%}")
    return save_figure(figure, path)


def _face_tile(axis, pixels: np.ndarray, title: str, color: str, frame: str | None = None, source: str = "") -> None:
    axis.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    axis.set_xticks([])
    axis.set_yticks([])
    if source:  # the file (or CSV row), so a mislabeled face can be found and fixed
        axis.set_xlabel(Path(source).name, fontsize=8, color="#555555", labelpad=2)
    axis.set_title(title, fontsize=10, color=color, linespacing=1.3)
    for spine in axis.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_color(frame)
            spine.set_linewidth(4)


def _grid(n: int, columns: int, row_height: float = 2.75) -> tuple[Figure, np.ndarray]:
    rows = max(1, -(-n // columns))
    figure = _figure(2.3 * columns, row_height * rows + 0.7)
    return figure, np.atleast_1d(figure.subplots(rows, columns)).ravel()


def top_loss_indices(probs: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """The k wrong predictions with the lowest probability for the actual class (= highest loss), worst first."""
    p_actual = probs[np.arange(len(targets)), targets]
    wrong = np.flatnonzero(probs.argmax(axis=1) != targets)
    return wrong[np.argsort(p_actual[wrong], kind="stable")][:k]


@styled
def plot_top_losses(faces: FaceSet, probs: np.ndarray, path: str | Path, subject: str, k: int = 16,
                    labels: Sequence[str] = LABELS) -> Path:
    """The k wrong predictions with the highest loss (-log p(actual)): the model was sure, and wrong."""
    targets = faces.labels
    predicted = probs.argmax(axis=1)
    p_actual = probs[np.arange(len(targets)), targets]
    n_wrong = int((predicted != targets).sum())
    order = top_loss_indices(probs, targets, k)
    figure, axes = _grid(max(len(order), 1), 4, row_height=2.95)  # room for the file name under each face
    for axis, index in zip(axes, order):
        title = (f"predicted {labels[predicted[index]]} {_percent(probs[index, predicted[index]])}\n"
                 f"actual {labels[targets[index]]} {_percent(p_actual[index])}")
        _face_tile(axis, faces.pixels[index], title, BLACK, source=faces.sources[index])
    for axis in axes[len(order):]:
        axis.set_axis_off()
    if not len(order):
        axes[0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center", transform=axes[0].transAxes)
    figure.suptitle(f"Where is the model most confidently wrong?\n{len(order)} highest-loss mistakes of "
                    f"{n_wrong:,}, {subject}")
    return save_figure(figure, path)


@styled
def plot_top_losses_explained(faces: FaceSet, probs: np.ndarray, predictor, path: str | Path, subject: str,
                              k: int = 12, labels: Sequence[str] = LABELS) -> Path:
    """The k highest-loss mistakes, each beside its occlusion heat map (explain.py): what drove the wrong answer.
    `predictor` is the model that gave `probs`."""
    targets = faces.labels
    order = top_loss_indices(probs, targets, k)
    predicted = probs.argmax(axis=1)
    maps = occlusion_maps(faces.pixels[order], predictor, predicted[order]).maps
    figure, axes = _grid(max(len(order), 1) * 2, 8, row_height=3.2)  # four mistakes per row: face, heat map
    for slot, (index, heat) in enumerate(zip(order, maps)):
        face_axis, heat_axis = axes[2 * slot:2 * slot + 2]
        title = (f"predicted {labels[predicted[index]]} {_percent(probs[index, predicted[index]])}\n"
                 f"actual {labels[targets[index]]} {_percent(probs[index, targets[index]])}")
        _face_tile(face_axis, faces.pixels[index], title, BLACK, source=faces.sources[index])
        why = f"why {labels[predicted[index]]}?\n(largest drop {100 * max(float(heat.max()), 0.0):.0f} pts)"
        _face_tile(heat_axis, np.asarray(overlay_heatmap(faces.pixels[index], heat)), why, VERMILLION)
    for axis in axes[2 * len(order):]:
        axis.set_axis_off()
    if not len(order):
        axes[0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center", transform=axes[0].transAxes)
    figure.colorbar(_heat_scale(), ax=list(axes), orientation="horizontal", shrink=0.5, aspect=40, pad=0.02,
                    label=f"colour: drop in p(predicted class) when a {OCCLUSION.patch}-pixel square there is hidden, "
                          f"as % of the face's largest drop (or of {MIN_SCALE:.0%} if that is smaller)")
    figure.suptitle(f"Why was the model wrong? The {len(order)} highest-loss mistakes and what drove each answer\n"
                    f"{subject}")
    return save_figure(figure, path)


def _heat_scale():
    """A colour bar's mappable for explain's overlay, 0 to 100%, in its colours as drawn on a mid-grey face."""
    import matplotlib.colors as colors
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=colors.Normalize(0, 100), cmap=colors.ListedColormap(legend_colours() / 255))


@styled
def plot_prediction_samples(faces: FaceSet, probs: np.ndarray, path: str | Path, subject: str, n: int = 25,
                            seed: int = 0, labels: Sequence[str] = LABELS) -> Path:
    """Random faces with the prediction: green frame and a check mark if right, vermillion and a cross if wrong."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(faces), size=min(n, len(faces)), replace=False))
    predicted = probs.argmax(axis=1)
    figure, axes = _grid(len(chosen), 5)
    n_right = 0
    for axis, index in zip(axes, chosen):
        right = predicted[index] == faces.labels[index]
        n_right += int(right)
        confidence = _percent(probs[index, predicted[index]])
        if right:
            title = f"{RIGHT} {labels[predicted[index]]} {confidence}\n"
        else:
            title = f"{WRONG} {labels[predicted[index]]} {confidence}\nactual {labels[faces.labels[index]]}"
        _face_tile(axis, faces.pixels[index], title, GREEN if right else VERMILLION, GREEN if right else VERMILLION)
    for axis in axes[len(chosen):]:
        axis.set_axis_off()
    figure.suptitle(f"What does the model say about random faces? {n_right} of {len(chosen)} right\n"
                    f"{RIGHT} green frame = right, {WRONG} vermillion frame = wrong (predicted class, its probability); "
                    f"{subject}", fontsize=12)
    return save_figure(figure, path)


@styled
def plot_reliability(targets: np.ndarray, probs: np.ndarray, path: str | Path, subject: str,
                     probs_uncalibrated: np.ndarray | None = None, temperature: float = 1.0) -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling, with ECE; faces per bin below."""
    figure = _figure(8, 8.5)
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1.2], sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color=BLACK, linewidth=1, label="perfect calibration")
    series = [(probs, BLUE, "o", f"model output (T = {temperature:.2f})" if temperature != 1.0 else "model output")]
    if probs_uncalibrated is not None and temperature != 1.0:
        series = [(probs_uncalibrated, ORANGE, "s", "before calibration (T = 1)"),
                  (probs, BLUE, "o", f"after temperature scaling (T = {temperature:.2f}, fitted on valid)")]
    sparse_shown = False
    for values, color, marker, name in series:
        bins = reliability_bins(values, targets)
        ece = expected_calibration_error(values, targets, ECE_BINS)
        sparse = bins["count"] < SPARSE_BIN
        top.plot(bins["confidence"][~sparse], bins["accuracy"][~sparse], marker=marker, color=color, linewidth=2,
                 markersize=7, label=f"{name}: ECE {ece:.3f}")
        if sparse.any():  # a bin of 2 faces can only be 0%, 50% or 100% right: shown, but apart from the curve
            sparse_shown = True
            top.plot(bins["confidence"][sparse], bins["accuracy"][sparse], linestyle="none", marker=marker,
                     markersize=7, markerfacecolor="white", markeredgecolor=color, markeredgewidth=2)
        share = np.zeros(ECE_BINS)
        share[bins["bin"]] = bins["count"] / len(targets) * 100
        bottom.stairs(share, np.linspace(0, 1, ECE_BINS + 1), color=color, linewidth=2, label=name)
    top.set_ylabel("accuracy in the bin (%)")
    top.set_ylim(-0.03, 1.03)
    top.set_xlim(0, 1)
    top.yaxis.set_major_formatter(_percent_formatter())
    top.grid(alpha=0.3)
    if sparse_shown:
        top.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor=BLACK,
                 label=f"hollow: fewer than {SPARSE_BIN} faces in the bin (not joined)")
    top.legend(loc="upper left")
    top.text(0.98, 0.03, "above the diagonal: right more often than it claims (under-confident)\n"
             "below the diagonal: right less often than it claims (over-confident)",
             transform=top.transAxes, ha="right", va="bottom", fontsize=9, color="#333333")
    top.set_title(f"{subject}; {ECE_BINS} equal-width confidence bins", fontsize=11)
    bottom.set_xlabel("confidence = probability of the predicted class (%)")
    bottom.set_ylabel("% of faces")
    bottom.xaxis.set_major_formatter(_percent_formatter())
    bottom.grid(alpha=0.3)
    figure.suptitle("When the model says p, is it right p of the time?")
    return save_figure(figure, path)


@styled
def plot_risk_coverage(targets: np.ndarray, probs: np.ndarray, path: str | Path, subject: str,
                       threshold: float | None = None, target: float = TARGET_ACCURACY) -> Path:
    """Accuracy of the answers kept against the share of faces answered, most confident first; the model's
    threshold for uncertain answers marked, with the coverage and accuracy it gives here."""
    curve = risk_coverage(probs, targets)
    figure = _figure(9, 6.5)
    axis = figure.subplots()
    axis.plot(curve["coverage"], curve["accuracy"], color=BLUE, linewidth=2,
              label="answering the most confident faces first")
    axis.axhline(target, color=ORANGE, linestyle="--", linewidth=1.2, label=f"target accuracy of sure answers ({target:.0%})")
    axis.axhline(curve["accuracy"][-1], color=BLACK, linestyle=":", linewidth=1.2,
                 label=f"answering every face ({curve['accuracy'][-1]:.1%})")
    if threshold is not None:
        scores = selective_scores(probs, targets, threshold)
        axis.plot([scores["coverage"]], [scores["accuracy"]], marker="D", markersize=10, color=VERMILLION, linestyle="none",
                  label=f"the model's threshold, confidence ≥ {threshold:.0%}: {scores['coverage']:.0%} of the faces "
                        f"answered, {scores['accuracy']:.1%} right")
    axis.set_xlim(0, 1)
    axis.set_ylim(max(0.0, min(curve["accuracy"].min(), target) - 0.05), 1.01)
    axis.xaxis.set_major_formatter(_percent_formatter())
    axis.yaxis.set_major_formatter(_percent_formatter())
    axis.set_xlabel("coverage: share of faces answered (the rest marked uncertain)")
    axis.set_ylabel("accuracy of the answered faces")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    axis.set_title(subject, fontsize=11)
    figure.suptitle("How right is it when it is sure? Accuracy against coverage")
    return save_figure(figure, path)


def _percent_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{100 * value:.0f}")


def recorded_schedule(learn) -> dict[str, np.ndarray] | None:
    """Learning rate and momentum per training batch, as fastai's recorder saw them; None after a --resume."""
    recorder = getattr(learn, "recorder", None)
    if recorder is None or not recorder.lrs or getattr(learn, "first_epoch", 0):
        return None
    lrs = np.asarray(recorder.lrs, dtype=float)
    hps = getattr(recorder, "hps", None) or {}
    if "mom" in hps and len(hps["mom"]) == len(lrs):
        moms = np.asarray(hps["mom"], dtype=float)
    else:
        moms = np.full(len(lrs), float(learn.opt.hypers[-1].get("mom", np.nan)))
    return {"epoch": np.arange(len(lrs)) / len(learn.dls.train), "lr": lrs, "mom": moms, "source": "recorded"}


def recipe_schedule(card: ModelCard, at: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
    """The schedule that the card's recipe gives, at epochs `at` (default: 100 points per epoch).

    fastai's fit_one_cycle defaults, or the seed recipe's constants; for runs plotted after training, when
    the recorder is gone. A test checks it against what a real recorder saw.
    """
    recipe, lr = card.recipe, card.lr
    if not (lr and isinstance(recipe, TrainConfig)):
        return None
    epochs = recipe.epochs
    pct = np.asarray(at, dtype=float) / epochs if at is not None else np.linspace(0, 1, epochs * 100, endpoint=False)
    if recipe.recipe == "seed":  # learn.fit with torch Adam: constant lr, beta1 from torch's defaults
        import torch

        beta1 = inspect.signature(torch.optim.Adam).parameters["betas"].default[0]
        lrs, moms = np.full(len(pct), float(lr)), np.full(len(pct), float(beta1))
    else:
        from fastai.callback.schedule import combined_cos
        from fastai.learner import Learner

        defaults = inspect.signature(Learner.fit_one_cycle).parameters
        div, div_final = defaults["div"].default, defaults["div_final"].default
        pct_start = defaults["pct_start"].default
        moms_default = inspect.signature(Learner).parameters["moms"].default
        lr_curve = combined_cos(pct_start, lr / div, lr, lr / div_final)
        mom_curve = combined_cos(pct_start, *moms_default)
        lrs = np.array([float(lr_curve(p)) for p in pct])
        moms = np.array([float(mom_curve(p)) for p in pct])
    return {"epoch": pct * epochs, "lr": lrs, "mom": moms, "source": "from the recipe"}


@styled
def train_loss_label(recipe: TrainConfig | None) -> str:
    """What the train-loss curve measured: it is only comparable in level with valid loss without mixup."""
    parts = ["batch-smoothed"]
    if recipe is None:
        return f"train ({parts[0]})"
    if recipe.augment:
        parts.append("augmented")
    if recipe.start_size:
        parts.append(f"faces {recipe.start_size}→48 px")
    if recipe.mixup:
        parts.append(f"mixup α {recipe.mixup}")
    label = f"train ({', '.join(parts)})"
    return label + "\n(mixed targets: higher than valid by design)" if recipe.mixup else label


def plot_learning_curves(history_csv: str | Path, path: str | Path, card: ModelCard,
                         schedule: dict[str, np.ndarray] | None = None, run_name: str = "") -> Path:
    """Loss, accuracy and macro-F1 per epoch (history.csv), and the learning-rate and momentum schedule."""
    import pandas as pd

    history = pd.read_csv(history_csv)
    if history.empty:
        raise FerError(f"{history_csv} has no epochs to plot")
    done = history["epoch"].to_numpy() + 1  # history rows are written at the end of each epoch
    recipe = card.recipe if isinstance(card.recipe, TrainConfig) else None
    figure = _figure(13, 9)
    (loss_axis, score_axis), (lr_axis, mom_axis) = figure.subplots(2, 2, sharex=True)
    smoothing = recipe.label_smoothing if recipe else 0
    loss_name = f"cross-entropy, label smoothing {smoothing}" if smoothing else "cross-entropy"
    loss_axis.plot(done, history["train_loss"], marker="o", color=ORANGE, linewidth=2, label=train_loss_label(recipe))
    loss_axis.plot(done, history["valid_loss"], marker="s", color=BLUE, linewidth=2, label="valid")
    loss_axis.set_ylabel(f"loss ({loss_name})")
    loss_axis.set_title("Is it still learning, or over-fitting? Loss per epoch")
    score_axis.plot(done, history["accuracy"] * 100, marker="s", color=BLUE, linewidth=2, label="valid accuracy")
    if "f1_score" in history:
        score_axis.plot(done, history["f1_score"] * 100, marker="^", color=GREEN, linewidth=2, label="valid macro-F1")
    saved = card.saved_epoch
    if saved is not None:
        why = "best valid accuracy" if card.best_epoch is not None else "the last epoch (--keep last)"
        for axis in (loss_axis, score_axis):
            axis.axvline(saved + 1, color=BLACK, linestyle=":", linewidth=1.5,
                         label=f"the saved model: epoch {saved + 1}, {why}")
    loss_axis.legend()
    score_axis.set_ylabel("valid score (%)")
    score_axis.set_title("How good is it on held-out faces? Valid scores per epoch")
    score_axis.legend(loc="best")
    if schedule is not None:
        source = schedule["source"]
        lr_axis.plot(schedule["epoch"], schedule["lr"], color=PURPLE, linewidth=2)
        mom_axis.plot(schedule["epoch"], schedule["mom"], color=PURPLE, linewidth=2)
        lr_axis.set_title(f"Learning-rate schedule ({source})")
        mom_axis.set_title(f"Momentum schedule (Adam beta1, {source})")
        from matplotlib.ticker import FuncFormatter

        lr_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.1e}" if value else "0"))
        lr_axis.set_ylim(0, 1.1 * float(np.max(schedule["lr"])))  # from 0, so a constant rate reads as constant
    else:
        for axis in (lr_axis, mom_axis):
            axis.text(0.5, 0.5, "schedule unknown (no recipe in the model card)", ha="center", va="center",
                      transform=axis.transAxes)
    lr_axis.set_ylabel("learning rate")
    mom_axis.set_ylabel("momentum (beta1)")
    for axis in (loss_axis, score_axis, lr_axis, mom_axis):
        axis.grid(alpha=0.3)
    for axis in (lr_axis, mom_axis):
        axis.set_xlabel("epochs completed")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    described = ", ".join(str(part) for part in (card.arch, recipe and f"{recipe.recipe} recipe",
                                                  f"{len(history)} epochs") if part)
    figure.suptitle(f"How did training go? {run_name} ({described})".replace("  ", " "))
    return save_figure(figure, path)


# fastai's suggestion functions, in words: "minimum" is a tenth of the lowest-loss rate, not the lowest point.
LR_FIND_NAMES = {"valley": "valley (within the longest descent)", "minimum": "minimum loss rate / 10",
                 "steep": "steepest descent"}


@styled
def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestions: dict[str, float], chosen: str,
                 path: str | Path, skip_end: int = 5) -> Path:
    """fastai's lr_find curve (smoothed loss vs learning rate, log x) with its suggestions and the one used.

    Call with `learn.recorder.lrs`, `learn.recorder.losses` and `learn.lr_find(show_plot=False)._asdict()`;
    like fastai's own plot, the last `skip_end` points (where the loss explodes) are left out.
    """
    lrs = np.asarray(lrs, dtype=float)[:-skip_end or None]
    losses = np.asarray([float(loss) for loss in losses])[:-skip_end or None]
    figure = _figure(8, 5.5)
    axis = figure.subplots()
    axis.plot(lrs, losses, color=BLUE, linewidth=2, label="loss (smoothed over batches)")
    for (name, lr), color, marker in zip(suggestions.items(), (VERMILLION, GREEN, ORANGE, PURPLE), "oDs^"):
        loss = np.interp(np.log(lr), np.log(lrs), losses)
        axis.plot([lr], [loss], linestyle="none", marker=marker, markersize=10 if name == chosen else 8, color=color,
                  markeredgecolor=BLACK if name == chosen else color,
                  label=f"{LR_FIND_NAMES.get(name, name)}: {lr:.1e}" + ("  (used for training)" if name == chosen else ""))
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (log scale)")
    axis.set_ylabel("training loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.suptitle("Which learning rate should training use? Loss while the rate grows each batch")
    return save_figure(figure, path)


def write_data_plots(faces: FaceSet, predictions: Predictions, out_dir: str | Path, subject: str,
                     temperature: float = 1.0, threshold: float | None = None, predictor=None) -> list[Path]:
    """The plots that need only data and predictions (a `scoring.Predictions`): confusion, per-class scores,
    top losses, samples, reliability, risk–coverage (with the model's uncertainty `threshold`, if any); with
    the `predictor` that made them, also the top losses explained by heat maps."""
    out_dir = Path(out_dir)
    targets = faces.labels
    if len(faces) == 0:
        raise FerError(f"no faces to plot in {subject}")
    written = [plot_confusion_matrix(targets, predictions.probs, out_dir / "confusion_matrix.png", subject),
               plot_class_scores(targets, predictions.probs, out_dir / "class_scores.png", subject),
               plot_top_losses(faces, predictions.probs, out_dir / "top_losses.png", subject),
               plot_prediction_samples(faces, predictions.probs, out_dir / "prediction_samples.png", subject),
               plot_reliability(targets, predictions.probs, out_dir / "reliability.png", subject,
                                predictions.probs_uncalibrated, temperature),
               plot_risk_coverage(targets, predictions.probs, out_dir / "risk_coverage.png", subject, threshold)]
    if predictor is not None:
        written.append(plot_top_losses_explained(faces, predictions.probs, predictor, out_dir / "top_losses_explained.png",
                                                 subject))
    return written


def write_run_plots(run_dir: str | Path, predictor, faces: FaceSet, subject: str, learn=None,
                    predictions: Predictions | None = None) -> list[Path]:
    """Every plot of a run folder into run_dir/plots/: the data plots on `faces` and the learning curves.

    `learn` (at the end of training) gives the recorded schedule; without it the recipe's schedule is drawn.
    `predictions` (a `scoring.Predictions` of `predictor` on `faces`) saves running the model again.
    lr_find.png is written by training itself when --lr auto is used.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    if predictions is None:
        predictions = predict_faces(predictor, faces)
    written = write_data_plots(faces, predictions, plots, subject, predictor.temperature, predictor.threshold, predictor)
    history = run_dir / "history.csv"
    if history.is_file():
        schedule = (recorded_schedule(learn) if learn is not None else None) or recipe_schedule(predictor.card)
        written.append(plot_learning_curves(history, plots / "learning_curves.png", predictor.card, schedule,
                                            run_name=run_dir.name))
    return written


@call_parse
def main(target: str,  # a run folder (runs/NAME) or a model file (.safetensors or .onnx)
         data: str = None,  # data to plot on (default for a run folder: the data in its model card)
         split: str = "test",  # train, valid, test or private
         out: str = None,  # folder for the plots (default: TARGET/plots for a run, else plots/ beside the model)
         device: str = "cpu",  # torch backend: cpu, cuda or mps
         ):
    "Write plots of what a trained model gets right and wrong (confusion, top losses, samples, calibration, training)."
    with cli_errors():
        target_path = Path(target)
        run_dir = target_path if target_path.is_dir() else None
        model = run_dir / "model.safetensors" if run_dir else target_path
        if run_dir and not model.is_file():
            raise FerError(f"{run_dir} has no model.safetensors; is it a finished run folder?")
        out_dir = check_output_folder(out or (run_dir / "plots" if run_dir else model.parent / "plots"))
        predictor = load_predictor(model, device=device)
        data = data or predictor.card.data_source
        if not data:
            raise FerError(f"{model}: pass --data, the card does not say which data the model was trained on")
        eval_data = load_eval_data(data, split, predictor.card.recipe)
        if not eval_data.labeled:
            raise FerError(f"{data} has no labels; the plots compare predictions with labels")
        subject = eval_data.subject
        if run_dir and not out:
            written = write_run_plots(run_dir, predictor, eval_data.faces, subject)
        else:
            written = write_data_plots(eval_data.faces, predict_faces(predictor, eval_data.faces), out_dir, subject,
                                       predictor.temperature, predictor.threshold, predictor)
        for path in written:
            print(path)
        if run_dir and (out_dir / "lr_find.png").is_file():
            print(out_dir / "lr_find.png", "(from training)")
