"""Faces in photos: find them (OpenCV's Haar cascade), crop them, classify them, draw the answer.

Photos are not 48x48 crops, so the demo and any "what does this face show?" caller go through here:
`detect_emotions(image, predictor)` gives every face's box and class probabilities in the shape of
the `fer` package (`[{"box": [x, y, w, h], "emotions": {label: prob}}]`). Boxes are in the pixels of
the EXIF-upright image. Cropping and scaling use the shared `preprocess` functions, so a face crop
reaches the model exactly as a training image did. The cascade file ships inside
`opencv-python-headless` 4.x: nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .errors import FerError
from .predict import Predictor, default_predictor
from .preprocess import IMAGE_SIZE, ImageLike, load_image, pixels_to_input, to_grayscale, to_model_size
from .selective import is_uncertain

log = logging.getLogger(__name__)

CASCADE_FILE = "haarcascade_frontalface_default.xml"
CASCADE_WINDOW = 24  # px: the cascade's own window, so the smallest face it can find
Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class DetectSettings:
    """How hard the cascade looks. `PHOTO` finds small faces in group photos; `STREAM` keeps webcam
    frames real-time on a laptop CPU (a face in front of a webcam is large)."""

    max_side: int = 800          # detection runs on a copy no larger than this; boxes are scaled back
    min_face: float = 0.05       # smallest face, as a fraction of the image's shorter side
    scale_factor: float = 1.1    # cascade pyramid step: smaller finds more, slower
    min_neighbors: int = 5       # overlapping hits needed to accept a face: more is stricter


# A tight face crop leaves the cascade no room around the face; with its edges extended by a quarter of
# its size, 77.7% of 300 FER2013 test faces upscaled to 144x144 are found instead of 60.0% (docs/demo.md).
RETRY_PAD = 0.25

PHOTO = DetectSettings()
STREAM = DetectSettings(max_side=480, min_face=0.12, scale_factor=1.2)

# Okabe-Ito colours (colour-blind safe), all light enough for black text.
FACE_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7", "#D55E00")


@dataclass(frozen=True)
class Face:
    box: Box             # in the upright image's pixels
    probs: np.ndarray    # [n_classes], in the predictor's label order
    uncertain: bool = False  # its top probability is below the model's threshold (selective.py)


@dataclass
class Analysis:
    """Everything the demo shows about one image: faces, how they were found, and the time spent."""

    image: Image.Image                 # the EXIF-upright image the boxes refer to (RGB, for drawing)
    faces: list[Face]
    labels: tuple[str, ...]
    backend: str
    mode: str                          # "faces", "no face" (nothing classified) or "crop" (48x48 input)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def note(self) -> str | None:
        """What the user must know about how the image was read, or None if faces were found."""
        if self.mode == "no face":
            return NO_FACE_HINT
        if self.mode == "crop":
            return f"{IMAGE_SIZE}x{IMAGE_SIZE} input: treated as an already-cropped face (no detection)."
        return None

    def as_dicts(self) -> list[dict[str, Any]]:
        """The `fer`-package shape: one `{"box": [x, y, w, h], "emotions": {label: prob}}` per face."""
        return [{"box": [int(v) for v in face.box], "emotions": emotions(face.probs, self.labels),
                 "uncertain": face.uncertain} for face in self.faces]


NO_FACE_HINT = ("No face found, so nothing was classified: face the camera, add light, or crop closer to the face "
                "(a 48x48 image is taken as a face crop as it is).")


def emotions(probs: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    return {label: round(float(p), 4) for label, p in zip(labels, probs)}


def top_k(probs: np.ndarray, labels: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The k most probable (label, probability) pairs, most probable first."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]


def answer_text(face: Face, labels: Sequence[str]) -> str:
    """'happy 93%', or for an answer below the model's confidence threshold 'uncertain: sad 31% / neutral 29%'."""
    (label, prob), (second, second_prob) = top_k(face.probs, labels, 2)
    if face.uncertain:
        return f"uncertain: {label} {prob:.0%} / {second} {second_prob:.0%}"
    return f"{label} {prob:.0%}"


# One classifier per thread: OpenCV does not promise that detectMultiScale is safe to share.
_local = threading.local()


@lru_cache(maxsize=1)
def cascade_path() -> str:
    import cv2

    path = cv2.data.haarcascades + CASCADE_FILE
    if cv2.CascadeClassifier(path).empty():
        raise FerError(f"OpenCV's {CASCADE_FILE} is missing from {cv2.data.haarcascades}; "
                       "install opencv-python-headless>=4.8,<5 (5.0 dropped the Haar cascades)")
    return path


def _cascade():
    import cv2

    if getattr(_local, "cascade", None) is None:
        _local.cascade = cv2.CascadeClassifier(cascade_path())
    return _local.cascade


def detect_faces(gray: Image.Image, settings: DetectSettings = PHOTO) -> list[Box]:
    """Face boxes (x, y, w, h) in `gray`'s pixels, in reading order; [] if none."""
    import cv2

    scale = min(1.0, settings.max_side / max(gray.size))
    small = gray if scale == 1.0 else gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                                                  Image.Resampling.BILINEAR)
    pixels = cv2.equalizeHist(np.asarray(small, dtype=np.uint8))
    min_side = max(CASCADE_WINDOW, round(min(small.size) * settings.min_face))
    if min(small.size) < min_side:
        return []
    found = _cascade().detectMultiScale(pixels, scaleFactor=settings.scale_factor,
                                        minNeighbors=settings.min_neighbors, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]
    return reading_order(boxes)


def reading_order(boxes: Sequence[Box]) -> list[Box]:
    """Boxes as a person reads a group photo: rows top to bottom, each row left to right. A box joins a row
    when its vertical centre lies within the row's first (highest) box, or that box's centre within it, so a
    slightly lower or larger face stays in its row."""
    def centre_within(inner: Box, outer: Box) -> bool:
        return outer[1] <= inner[1] + inner[3] / 2 < outer[1] + outer[3]

    rows: list[list[Box]] = []
    for box in sorted(boxes, key=lambda b: (b[1], b[0])):
        row = next((row for row in rows if centre_within(box, row[0]) or centre_within(row[0], box)), None)
        if row is None:
            rows.append([box])
        else:
            row.append(box)
    return [box for row in rows for box in sorted(row, key=lambda b: (b[0], b[1]))]


def find_faces(gray: Image.Image, settings: DetectSettings = PHOTO) -> list[Box]:
    """`detect_faces`, and if it finds none, again on a copy with the edges extended by RETRY_PAD: a face
    that fills the whole image (a tight crop) is often found only with some room around it."""
    boxes = detect_faces(gray, settings)
    if boxes:
        return boxes
    pad = round(max(gray.size) * RETRY_PAD)
    padded = Image.fromarray(np.pad(np.asarray(gray), pad, mode="edge"))
    return [clamp_box((x - pad, y - pad, w, h), gray.size) for x, y, w, h in detect_faces(padded, settings)]


def clamp_box(box: Box, size: tuple[int, int]) -> Box:
    """The part of `box` inside an image of `size` (width, height)."""
    x, y, w, h = box
    left, top = max(0, x), max(0, y)
    right, bottom = min(size[0], x + w), min(size[1], y + h)
    return left, top, max(1, right - left), max(1, bottom - top)


def crop_faces(gray: Image.Image, boxes: Sequence[Box], margin: float = 0.0) -> np.ndarray:
    """uint8 [N, 48, 48] model-size crops; `margin` widens each box by that fraction of its size per side.

    The default 0 matches FER2013's framing (forehead to chin), which is close to the cascade's box.
    """
    crops = []
    for x, y, w, h in boxes:
        dx, dy = round(w * margin), round(h * margin)
        box = (max(0, x - dx), max(0, y - dy), min(gray.width, x + w + dx), min(gray.height, y + h + dy))
        crops.append(to_model_size(gray.crop(box)))
    return np.stack(crops) if crops else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def upright_rgb(image: Image.Image) -> Image.Image:
    """The image as a person sees it (EXIF orientation applied, alpha on white), as RGB for drawing."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    if image.mode in ("RGB", "L", "P", "CMYK", "YCbCr", "1"):
        return image.convert("RGB")
    return to_grayscale(image).convert("RGB")  # 16-bit, float and other exotic modes: the model's view


def analyze(source: ImageLike, predictor: Predictor, settings: DetectSettings = PHOTO,
            margin: float = 0.0) -> Analysis:
    """Find and classify every face in any image; with no face found nothing is classified (`faces` is empty)
    and `note` says what to try."""
    start = time.perf_counter()
    image = load_image(source)
    gray = to_grayscale(image)  # the shared preprocessing: EXIF, alpha, 16-bit, ITU-R 601 luma
    read_ms = (time.perf_counter() - start) * 1000
    if gray.size == (IMAGE_SIZE, IMAGE_SIZE):
        mode, boxes = "crop", [(0, 0, IMAGE_SIZE, IMAGE_SIZE)]
        detect_ms = 0.0
    else:
        boxes = find_faces(gray, settings)
        detect_ms = (time.perf_counter() - start) * 1000 - read_ms
        mode = "faces" if boxes else "no face"
        if not boxes:
            log.warning("no face found in the %dx%d image; nothing classified", *gray.size)
    crops = crop_faces(gray, boxes, margin)  # a 48x48 crop's one box is the whole image; no face: no crop
    model_start = time.perf_counter()
    probs = predictor.predict_proba(pixels_to_input(crops))
    model_ms = (time.perf_counter() - model_start) * 1000
    uncertain = is_uncertain(probs, getattr(predictor, "threshold", None))
    faces = [Face(box, p, bool(u)) for box, p, u in zip(boxes, probs, uncertain)]
    timings = {"read": read_ms, "detect": detect_ms, "model": model_ms, "total": (time.perf_counter() - start) * 1000}
    return Analysis(upright_rgb(image), faces, tuple(predictor.labels), predictor.backend, mode, timings)


def detect_emotions(image: ImageLike, predictor: Predictor | None = None) -> list[dict[str, Any]]:
    """Every face's box and class probabilities: `[{"box": [x, y, w, h], "emotions": {label: prob}, "uncertain": bool}]`.
    Without a predictor, the model inside the package answers (`predict.default_predictor`).

    Like the `fer` package's call of the same name (plus `uncertain`: the answer's confidence is below the
    model's threshold): with no face found it returns [] (a tight crop is retried with room around it
    first); 48x48 inputs are taken as already-cropped faces.
    """
    return analyze(image, predictor or default_predictor()).as_dicts()


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


Rect = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class Label:
    """One face's text tag on the drawn image: where it goes, what it says, its colour."""

    text: str
    rect: Rect
    colour: str
    font_size: int


def _tag_pad(font_size: int) -> int:
    """The room around a tag's text, in pixels."""
    return max(2, font_size // 9)


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_layout(analysis: Analysis, scale: float, size: tuple[int, int], font_size: int) -> list[Label]:
    """Where each face's tag goes on an image of `size` drawn at `scale`, such that no two tags overlap.

    Each face gets "N answer" above its box; if any two such tags would overlap (a crowd), every face gets
    only its number, inside its box's top-left corner and no bigger than the box, and the answers are read
    from the numbered list beside the image (the demo's bars). A 48x48 crop's one tag sits bottom-left.
    """
    def tag(text: str, x: int, y: int, font_size: int, above: bool) -> Rect:
        pad = _tag_pad(font_size)
        left, top, right, bottom = _font(font_size).getbbox(text)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        tx = min(max(0, x), max(0, size[0] - w))
        ty = (max(0, y - h if y >= h else y) if above else y)
        return tx, ty, tx + w, ty + h

    colours = [FACE_COLOURS[i % len(FACE_COLOURS)] for i in range(len(analysis.faces))]
    if analysis.mode != "faces":  # a 48x48 crop is the face: its tag goes bottom-left, clear of the face
        texts = [answer_text(face, analysis.labels) for face in analysis.faces]
        return [_at_bottom(Label(text, tag(text, 0, 0, font_size, False), colour, font_size), size)
                for text, colour in zip(texts, colours)]
    boxes = [tuple(round(v * scale) for v in face.box) for face in analysis.faces]
    full = []
    for number, (face, (x, y, _, _), colour) in enumerate(zip(analysis.faces, boxes, colours), start=1):
        text = f"{number} {answer_text(face, analysis.labels)}"
        full.append(Label(text, tag(text, x, y, font_size, True), colour, font_size))
    if not any(_overlap(a.rect, b.rect) for i, a in enumerate(full) for b in full[i + 1:]):
        return full
    numbers = []
    for number, ((x, y, w, h), colour) in enumerate(zip(boxes, colours), start=1):
        small = max(8, min(font_size, round(h * 0.4)))
        numbers.append(Label(str(number), tag(str(number), x, y, small, False), colour, small))
    return numbers


def _at_bottom(label: Label, size: tuple[int, int]) -> Label:
    left, top, right, bottom = label.rect
    return replace(label, rect=(left, size[1] - (bottom - top), right, size[1]))


def draw_faces(analysis: Analysis, max_side: int | None = 1024, min_side: int = 288) -> Image.Image:
    """The upright image with a numbered box and its top label on each face (numbers only in a crowd, see
    `label_layout`), scaled to read well: at most `max_side` pixels, tiny inputs (48x48 crops) blown up to
    about `min_side`."""
    image = analysis.image
    scale = 1.0
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    elif max(image.size) < min_side:
        scale = float(-(-min_side // max(image.size)))  # whole factor, so pixels stay square and sharp
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
    else:
        image = image.copy()
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 250))
    labels = label_layout(analysis, scale, image.size, max(18, round(max(image.size) / 24)))
    if analysis.mode == "faces":
        for face, label in zip(analysis.faces, labels):
            x, y, w, h = (round(v * scale) for v in face.box)
            draw.rectangle((x, y, x + w - 1, y + h - 1), outline=label.colour, width=line)
    for label in labels:
        font = _font(label.font_size)
        pad = _tag_pad(label.font_size)
        left, top, _, _ = font.getbbox(label.text)
        draw.rectangle(label.rect, fill=label.colour)
        draw.text((label.rect[0] + pad - left, label.rect[1] + pad - top), label.text, fill="black", font=font)
    return image
