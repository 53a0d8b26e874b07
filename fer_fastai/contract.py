"""The photo contract, machine-readable: every step from an image file to a model's answer, precise enough
to port (docs/onnx.md says it in words).

A port in another language (onnxruntime-node, onnxruntime-web, …) must reproduce Python's answer for a
photo, so it needs more than "grayscale, bilinear, 48x48": Pillow's exact luma formula and resampling
arithmetic, the Haar cascade and every setting `faces` passes it, the crop and no-face rules, and what
the outputs mean. `preprocess_contract(card)` builds that as one JSON-ready dict from the constants the
code itself runs with (`preprocess`, `faces`, the card), so the written contract cannot drift from the
code; the export stores it in the ONNX metadata (`preprocess`) and in the card beside the file, which
runtimes that cannot read ONNX metadata read instead.
"""

from __future__ import annotations

from typing import Any

from .card import ModelCard
from .faces import CASCADE_FILE, PHOTO, RETRY_PAD
from .preprocess import IMAGE_SIZE, MAX_PIXELS

CONTRACT_FORMAT = "fer-fastai preprocess v1"
# Pillow's fixed-point resampling (libImaging/Resample.c): 8-bit sums with 32 - 8 - 2 fractional bits.
PILLOW_PRECISION_BITS = 22


def preprocess_contract(card: ModelCard) -> dict[str, Any]:
    """The whole contract for the model `card` describes: the fixed photo pipeline plus its labels,
    temperature and uncertainty threshold. JSON values only."""
    return {"format": CONTRACT_FORMAT, "decode": DECODE, "grayscale": GRAYSCALE, "resize": RESIZE,
            "whole_image_is_a_face": WHOLE_IMAGE_RULE, "detector": detector_contract(), "crop": CROP,
            "no_face": NO_FACE, "input": INPUT, "outputs": outputs_contract(card), "labels": list(card.labels),
            "temperature": card.temperature, "uncertainty_threshold": card.threshold,
            "uncertain": "a face is uncertain when max(probs) < uncertainty_threshold (never when it is null)",
            "rounding": ROUNDING}


ROUNDING = ("round(v) is Python's round: to the nearest integer, halves to the even neighbour (2.5 -> 2, 3.5 -> 4); "
            "trunc(v) drops the fraction (C's (int) cast)")

DECODE = {
    "orientation": "apply the EXIF Orientation tag first; boxes are in the pixels of this upright image",
    "alpha": "an image with transparency is composited onto opaque white (255, 255, 255) first",
    "sixteen_bit": "16-bit grayscale v becomes trunc(v / top * 255 + 0.5), top = 65535 if any value > 255 else 255",
    "palette": "palette and other colour modes are converted to 8-bit RGB first",
    "max_pixels": MAX_PIXELS,
    "jpeg": "decoded by libjpeg-turbo as Pillow does (islow DCT, fancy upsampling); another decoder may differ by "
            "a grey level or two, so the vectors also give each photo's grayscale pixels losslessly",
}

GRAYSCALE = {
    "formula": "L = (19595 * R + 38470 * G + 7471 * B + 32768) >> 16",
    "meaning": "ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B) in 16-bit fixed point, rounded; Pillow's convert('L')",
    "values": "8-bit R, G, B exactly as decoded (no gamma, no colour management); L is uint8",
}

RESIZE = {
    "filter": "triangle (Pillow's Image.Resampling.BILINEAR): w(t) = max(0, 1 - |t|), support 1",
    "antialiased": "yes: when shrinking, the support and the filter's width scale with the shrink factor",
    "passes": "horizontal first, then vertical; the horizontal pass writes uint8 (rounded and clipped as below), "
              "which the vertical pass reads",
    "same_size": "a pass whose input and output sizes are equal is skipped (the pixels pass untouched)",
    "coefficients": [
        "per axis, in = input length, out = output length:",
        "scale = in / out; filterscale = max(scale, 1); support = 1 * filterscale",
        "for each output index i: center = (i + 0.5) * scale",
        "xmin = max(trunc(center - support + 0.5), 0); xmax = min(trunc(center + support + 0.5), in)",
        "w[k] = max(0, 1 - |(xmin + k - center + 0.5) / filterscale|) for k = 0 .. xmax - xmin - 1 (doubles)",
        "w[k] /= sum(w) (if the sum is not 0)",
        f"fixed point: W[k] = trunc(w[k] * 2^{PILLOW_PRECISION_BITS} + 0.5) for w[k] >= 0, "
        f"trunc(w[k] * 2^{PILLOW_PRECISION_BITS} - 0.5) for w[k] < 0",
    ],
    "sum": f"out = clip((2^{PILLOW_PRECISION_BITS - 1} + sum_k W[k] * in[xmin + k]) >> {PILLOW_PRECISION_BITS}, 0, 255), "
           "integer arithmetic (the sum fits in 32-bit signed integers)",
    "size": [IMAGE_SIZE, IMAGE_SIZE],
    "not": "not OpenCV's INTER_LINEAR or INTER_AREA, nor canvas drawImage scaling: they differ by up to 0.04-0.08 "
           "in probability",
}

WHOLE_IMAGE_RULE = (f"an image of exactly {IMAGE_SIZE}x{IMAGE_SIZE} (after EXIF orientation) is taken as a face crop: "
                    f"no detection, one face with box [0, 0, {IMAGE_SIZE}, {IMAGE_SIZE}]")


def detector_contract() -> dict[str, Any]:
    """How `faces.find_faces` finds faces with the PHOTO settings, step by step."""
    return {
        "library": "OpenCV 4.x CascadeClassifier.detectMultiScale (OpenCV.js has the same)",
        "cascade": CASCADE_FILE,
        "cascade_source": "opencv/data/haarcascades in OpenCV 4.x (shipped in opencv-python-headless as cv2.data.haarcascades)",
        "image": "the grayscale image (above), not the colour one",
        "max_side": PHOTO.max_side,
        "downscale": f"if max(width, height) > max_side: s = max_side / max(width, height), and detection runs on a copy "
                     f"resized (the resize above) to max(1, round(width * s)) x max(1, round(height * s)); else s = 1 "
                     "and no copy",
        "equalize_histogram": "cv2.equalizeHist on the (possibly downscaled) grayscale copy, before detection",
        "scale_factor": PHOTO.scale_factor,
        "min_neighbors": PHOTO.min_neighbors,
        "min_face_fraction": PHOTO.min_face,
        "min_size": f"m = max(24, round(min(copy width, copy height) * {PHOTO.min_face})); minSize = (m, m); "
                    "if min(copy width, copy height) < m there is no face",
        "max_size": "none (OpenCV's default)",
        "flags": 0,
        "boxes": "each detected [x, y, w, h] of the copy becomes [round(x / s), round(y / s), round(w / s), round(h / s)]",
        "order": "sorted by x, then y",
        "retry": {
            "when": "no face was found",
            "pad_fraction": RETRY_PAD,
            "how": "p = round(max(width, height) * pad_fraction); detect again (every step above) on the grayscale image "
                   "with p pixels added on each side, each copying its nearest edge pixel (numpy 'edge' padding); "
                   "each box [x, y, w, h] found becomes [x - p, y - p, w, h], clamped to the image",
            "clamp": "left = max(0, x), top = max(0, y), right = min(width, x + w), bottom = min(height, y + h); "
                     "box = [left, top, max(1, right - left), max(1, bottom - top)]",
            "why": "a tight face crop leaves the cascade no room around the face",
        },
    }


CROP = {
    "box": "the detected box as it is: margin 0 (FER2013's framing, forehead to chin)",
    "from": "the full-resolution grayscale image (never the detection copy)",
    "region": "columns max(0, x) .. min(width, x + w) - 1, rows max(0, y) .. min(height, y + h) - 1",
    "resize": f"to {IMAGE_SIZE}x{IMAGE_SIZE} with the resize above (a region already {IMAGE_SIZE}x{IMAGE_SIZE} is used as is)",
}

NO_FACE = "no face found, even on the retry: no answer at all (an empty list); the whole image is never classified instead"

INPUT = {
    "name": "image",
    "dtype": "float32",
    "shape": ["batch", 1, IMAGE_SIZE, IMAGE_SIZE],
    "layout": "NCHW, one channel, rows top to bottom, each row left to right",
    "value": "crop pixel / 255 (float32 division), in [0, 1]",
    "normalisation": "none: mean/std is the model's first layer",
}


def outputs_contract(card: ModelCard) -> dict[str, Any]:
    """What `probs` and `logits` mean for this model (an ensemble's logits are log-probabilities)."""
    logits = ("log of the ensemble's mean probability over its members and views (log-probabilities, not raw "
              "logits); still probs = softmax(logits / temperature)" if card.is_ensemble
              else "the network's raw logits; probs = softmax(logits / temperature)")
    return {"probs": "[batch, 7] calibrated class probabilities, softmax(logits / temperature), in label order; "
                     "use these",
            "logits": logits,
            "answer": "label = labels[argmax(probs)]",
            "int8": "an .int8.onnx file quantizes probs too: values are multiples of 1/255 and can be exactly 0"}
