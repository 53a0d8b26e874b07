"""Why did the model give that answer? Occlusion heat maps for any predictor, and pictures of them.

Hide one square of the 48x48 face at a time (filled with the face's own mean grey), run every hidden copy
through the predictor's `predict_proba` in one batch, and record how much the probability of the answer
drops: where hiding pixels costs the answer most is where its evidence was. Needing only `predict_proba`,
it works alike for ONNX Runtime and PyTorch, one network or an ensemble, and the ONNX path stays numpy +
onnxruntime (no torch, no fastai). The cost is `Occlusion.rows_per_face` predictor rows per face (50 by
default: a 12-pixel square every 6 pixels, 7x7 places, plus the face itself).

Reading the pictures: the face keeps its own grey (or colour, in a photo); colour from the `inferno` map
(dark purple → red → orange → yellow) is laid over the places whose hiding lowered the answer, more opaque
and yellower the larger the drop, relative to the face's largest drop (or to MIN_SCALE if that is
smaller, so a face where nothing matters stays uncoloured). No colour: hiding it changed nothing, or
raised the answer (evidence against it is not drawn).

`python -m fer_fastai.explain IMAGE --out PNG` draws every face found in a photo (or a 48x48 crop) with
its heat map and answer; `explain_emotions` is the same as data, `detect_emotions`' list plus a heat map.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastcore.script import call_parse
from PIL import Image

from .atomic import atomic_path, check_output_file
from .errors import FerError, cli_errors
from .faces import NO_FACE_HINT, Analysis, analyze, answer_text, crop_faces, draw_faces
from .paths import DEFAULT_MODEL
from .predict import Predictor, load_predictor
from .preprocess import IMAGE_SIZE, ImageLike, pixels_to_input, to_grayscale

COLOUR_MAP = "inferno"  # perceptually uniform and readable with every common colour-vision deficiency
MAX_ALPHA = 0.75        # the strongest evidence is 75% colour, 25% face: the face stays visible under it
# The drop in probability that gets full colour when a face's largest drop is smaller: a face on which no
# square moves the answer by more than a few points shows faint colour, not its noise blown up to yellow.
MIN_SCALE = 0.05
MAX_FACES_DRAWN = 12    # the CLI's figure shows at most this many faces' rows (the photo shows them all)


@dataclass(frozen=True)
class Occlusion:
    """Which squares are hidden: `patch` pixels wide, every `stride` pixels (the last one touches the edge).

    A 12-pixel square covers an eye, a brow or a mouth corner of a 48x48 FER face; a stride of half of it
    overlaps neighbours, so a feature is hidden whole by at least one square. Each square's drop is placed at
    its centre and the map between centres is interpolated linearly.
    """

    patch: int = 12
    stride: int = 6

    def __post_init__(self):
        if not (1 <= self.patch <= IMAGE_SIZE and self.stride >= 1):
            raise FerError(f"occlusion patch must be 1 to {IMAGE_SIZE} pixels and stride at least 1, "
                           f"got patch {self.patch}, stride {self.stride}")

    @property
    def offsets(self) -> list[int]:
        last = IMAGE_SIZE - self.patch
        return sorted(set(range(0, last + 1, self.stride)) | {last})

    @property
    def spread(self) -> np.ndarray:
        """float [48, places per side]: each pixel's linear interpolation weights over the squares' centres
        (pixels outside the outermost centres take the nearest one's value)."""
        centres = np.array(self.offsets) + self.patch / 2
        pixels = np.arange(IMAGE_SIZE) + 0.5
        return np.stack([np.interp(pixels, centres, one) for one in np.eye(len(centres))], axis=1)

    @property
    def rows_per_face(self) -> int:
        """Predictor rows one face costs: every hidden copy plus the face itself."""
        return len(self.offsets) ** 2 + 1


OCCLUSION = Occlusion()


@dataclass(frozen=True)
class HeatMaps:
    maps: np.ndarray     # float32 [N, 48, 48]: drop in the target's probability when the pixel is hidden (-1 to 1)
    targets: np.ndarray  # int [N]: the class each map explains
    probs: np.ndarray    # float32 [N, n_classes]: the predictor's answer on the whole faces
    occlusion: Occlusion = OCCLUSION  # how the maps were made


def occlusion_maps(pixels: np.ndarray, predictor: Predictor, targets: Sequence[int] | None = None,
                   occlusion: Occlusion = OCCLUSION) -> HeatMaps:
    """Heat maps for uint8 [N, 48, 48] faces (as `faces.crop_faces` makes them), all in one `predict_proba` call.

    `targets`: the class to explain per face; by default each face's own top answer.
    """
    faces = pixels_to_input(pixels)[:, 0]  # [N, 48, 48] float32 in [0, 1]
    offsets = occlusion.offsets
    corners = [(top, left) for top in offsets for left in offsets]
    hidden = np.repeat(faces[:, None], len(corners), axis=1)  # [N, places, 48, 48]
    fill = faces.mean(axis=(1, 2))
    for place, (top, left) in enumerate(corners):
        hidden[:, place, top:top + occlusion.patch, left:left + occlusion.patch] = fill[:, None, None]
    rows = np.concatenate([faces[:, None], hidden], axis=1).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    probs = predictor.predict_proba(rows)
    probs = probs.reshape(len(faces), len(corners) + 1, probs.shape[-1])
    whole = probs[:, 0]
    targets = whole.argmax(axis=1) if targets is None else np.asarray(targets, dtype=int)
    if targets.shape != (len(faces),) or (len(targets) and not (0 <= targets.min() and targets.max() < whole.shape[1])):
        raise FerError(f"expected one class id (0 to {whole.shape[1] - 1}) per face for {len(faces)} face(s), "
                       f"got {targets.tolist()}")
    target_probs = np.take_along_axis(probs, targets[:, None, None], axis=2)[..., 0]  # [N, 1 + places]
    drops = (target_probs[:, :1] - target_probs[:, 1:]).reshape(len(faces), len(offsets), len(offsets))
    spread = occlusion.spread  # each drop belongs to its square's centre; pixels between centres interpolate
    return HeatMaps((spread @ drops @ spread.T).astype(np.float32), targets, whole.astype(np.float32), occlusion)


def strength(heat: np.ndarray) -> np.ndarray:
    """A heat map as the colour strength drawn, 0 to 1: its drops over the larger of its largest drop and MIN_SCALE."""
    return np.clip(heat / max(float(heat.max()), MIN_SCALE), 0.0, 1.0)


@lru_cache(maxsize=1)
def colour_table() -> np.ndarray:
    """uint8 [256, 3]: COLOUR_MAP, from strength 0 to 1."""
    from matplotlib import colormaps

    return np.round(colormaps[COLOUR_MAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def blend(rgb: np.ndarray, heat_strength: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] with the colour of `heat_strength` ([H, W], 0 to 1) laid over it, as opaque as it is strong."""
    colours = colour_table()[np.round(heat_strength * 255).astype(int)].astype(np.float32)
    alpha = (MAX_ALPHA * heat_strength)[..., None]
    return np.round(rgb.astype(np.float32) * (1 - alpha) + colours * alpha).astype(np.uint8)


def legend_colours() -> np.ndarray:
    """uint8 [256, 3]: the colour `blend` gives a mid-grey pixel at strengths 0 to 1, for a colour bar."""
    return blend(np.full((256, 3), 128, np.uint8), np.linspace(0.0, 1.0, 256))


def resized_strength(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`strength(heat)` smoothly resized to `size` (width, height)."""
    heat_image = Image.fromarray(strength(heat).astype(np.float32))  # mode "F": resized without rounding to 8 bits
    return np.asarray(heat_image.resize(size, Image.Resampling.BILINEAR))


def overlay_heatmap(pixels: np.ndarray, heat: np.ndarray, size: int = 192) -> Image.Image:
    """A uint8 [48, 48] face with its heat map laid over it, as an RGB image `size` pixels wide."""
    face = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    rgb = np.asarray(face.convert("RGB"))
    return Image.fromarray(blend(rgb, resized_strength(heat, (size, size))))


def face_crops(analysis: Analysis, margin: float = 0.0) -> np.ndarray:
    """The uint8 [N, 48, 48] crops `analyze` gave the model, taken again from the analysis' upright image
    (`margin` as given to `analyze`)."""
    return crop_faces(to_grayscale(analysis.image), [face.box for face in analysis.faces], margin)


def explain_analysis(analysis: Analysis, predictor: Predictor, occlusion: Occlusion = OCCLUSION,
                     margin: float = 0.0) -> HeatMaps:
    """Heat maps for every face of an `analyze` result, each explaining that face's answer."""
    targets = [int(np.argmax(face.probs)) for face in analysis.faces]
    return occlusion_maps(face_crops(analysis, margin), predictor, targets, occlusion)


def overlay_analysis(analysis: Analysis, heat_maps: HeatMaps) -> Image.Image:
    """The analysis' photo with each face's heat map laid over it inside its box (same size as the photo)."""
    photo = np.asarray(analysis.image.convert("RGB")).copy()
    for face, heat in zip(analysis.faces, heat_maps.maps):
        x, y, w, h = face.box
        photo[y:y + h, x:x + w] = blend(photo[y:y + h, x:x + w], resized_strength(heat, (w, h)))
    return Image.fromarray(photo)


def draw_explained_faces(analysis: Analysis, heat_maps: HeatMaps, **draw_args) -> Image.Image:
    """`faces.draw_faces` (boxes, numbers, answers) on the photo with every face's heat map laid over it."""
    return draw_faces(replace(analysis, image=overlay_analysis(analysis, heat_maps)), **draw_args)


def explain_emotions(image: ImageLike, predictor: Predictor, occlusion: Occlusion = OCCLUSION) -> list[dict[str, Any]]:
    """`faces.detect_emotions`' list (`box`, `emotions`, `uncertain`), each face with a `heatmap` added: 48 rows of
    48 numbers, the drop in the top emotion's probability when that pixel of the 48x48 crop is hidden."""
    analysis = analyze(image, predictor)
    return explained_dicts(analysis, explain_analysis(analysis, predictor, occlusion))


def explained_dicts(analysis: Analysis, heat_maps: HeatMaps) -> list[dict[str, Any]]:
    """`analysis.as_dicts()` with each face's `heatmap` added (3 decimals), for a caller that already has both."""
    return [{**face, "heatmap": np.round(heat, 3).tolist()} for face, heat in zip(analysis.as_dicts(), heat_maps.maps)]


def plot_explanations(analysis: Analysis, heat_maps: HeatMaps, path: str | Path, subject: str) -> Path:
    """One PNG: the photo with its heat maps and answers on top, then a row per face: the 48x48 crop, its heat
    map with a colour bar in percentage points, and the two laid over each other."""
    from matplotlib.figure import Figure

    crops = face_crops(analysis)
    shown = min(len(analysis.faces), MAX_FACES_DRAWN)
    figure = Figure(figsize=(9.5, 4.5 + 2.9 * shown), layout="constrained")
    top, *rows = figure.subfigures(1 + shown, 1, height_ratios=[4.5] + [2.9] * shown)
    photo_axis = top.subplots()
    photo_axis.imshow(draw_explained_faces(analysis, heat_maps))
    photo_axis.set_axis_off()
    more = f" (the first {shown} of {len(analysis.faces)} below)" if shown < len(analysis.faces) else ""
    photo_axis.set_title(f"{len(analysis.faces)} face(s) and what drove each answer{more}", fontsize=11)
    for number, (row, face, pixels, heat, target) in enumerate(
            zip(rows, analysis.faces, crops, heat_maps.maps, heat_maps.targets), start=1):
        label = analysis.labels[target]
        row.suptitle(f"Face {number}: {answer_text(face, analysis.labels)}", fontsize=11, fontweight="bold")
        crop_axis, heat_axis, overlay_axis = row.subplots(1, 3)
        crop_axis.imshow(pixels, cmap="gray", vmin=0, vmax=255)
        crop_axis.set_title("the 48x48 face the model saw", fontsize=9)
        scale = max(float(heat.max()), MIN_SCALE) * 100
        image = heat_axis.imshow(np.clip(heat * 100, 0, None), cmap=COLOUR_MAP, vmin=0, vmax=scale)
        row.colorbar(image, ax=heat_axis, shrink=0.9, label=f"drop in p({label}), points")
        heat_axis.set_title(f"heat: p({label}) lost when\nthat spot is hidden", fontsize=9)
        overlay_axis.imshow(overlay_heatmap(pixels, heat))
        overlay_axis.set_title("laid over the face", fontsize=9)
        for axis in (crop_axis, heat_axis, overlay_axis):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"Why these answers? Occlusion heat maps ({heat_maps.occlusion.patch}-pixel squares hidden); "
                    f"{subject}",
                    fontsize=12)
    path = Path(path)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110)
    return path


@call_parse
def main(image: str,  # a photo, or a 48x48 face crop
         model: str = str(DEFAULT_MODEL),  # a .onnx or .safetensors model
         out: str = "explained.png",  # the PNG to write
         device: str = "cpu",  # torch backend: cpu, cuda or mps
         ):
    "Draw what drove the model's answer for every face in an image: occlusion heat maps, one PNG."
    with cli_errors():
        out_path = check_output_file(out)
        predictor = load_predictor(model, device=device)
        analysis = analyze(image, predictor)
        if not analysis.faces:
            raise FerError(NO_FACE_HINT)
        heat_maps = explain_analysis(analysis, predictor)
        plot_explanations(analysis, heat_maps, out_path, f"{Path(model).name} on {Path(image).name}")
        for number, face in enumerate(analysis.faces, start=1):
            print(f"face {number} {list(face.box)}: {answer_text(face, analysis.labels)}")
        print(out_path)
