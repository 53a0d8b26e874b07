"""Where a photo's answer spends its time: read, detect, classify, draw, per photo size and model.

    python bench/photo_path.py [--models fer_ensemble fer_student fer_student.int8] [--rounds 5]

The photos are the example photo (two faces) at several sizes, its one-face right half and a 20-face
group photo tiled from its faces (the tests' `crowd_photo`), JPEG-encoded in memory, so the read (decode, EXIF, grayscale) is timed as a user's upload would be. For each model,
`faces.analyze` runs every photo `--rounds` times, models taking turns so a busy machine slows each
alike; the table gives the median ms per stage, the demo's whole answer (analysis + drawing + the JPEG
it sends) and photos/s over the set. A last table times the face search alone with the settings the
`fer` package uses (Haar cascade on the full-size image, no histogram equalisation, faces >= 50 px),
beside this project's, with the faces each finds: the cost of the detector settings on their own.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import crowd_photo  # noqa: E402  (the tests' group photo, so both time the same crowd)

from fer_fastai.faces import PHOTO, _cascade, analyze, detect_faces, draw_faces
from fer_fastai.predict import OnnxPredictor
from fer_fastai.preprocess import load_image, to_grayscale

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "demo" / "examples" / "collins_and_hopper.jpg"
LONG_SIDES = (720, 1280, 1920, 3000)


def bench_photos() -> dict[str, bytes]:
    """name → JPEG bytes: the one-face half of the example photo, then the whole photo at each long side."""
    photo = Image.open(EXAMPLE).convert("RGB")
    images = {f"one face {photo.width // 2}x{photo.height}": photo.crop((photo.width // 2, 0, photo.width, photo.height))}
    for side in LONG_SIDES:
        size = (side, round(photo.height * side / photo.width))
        images[f"two faces {size[0]}x{size[1]}"] = photo.resize(size, Image.Resampling.LANCZOS)
    images["20 faces 850x680"] = crowd_photo()
    encoded = {}
    for name, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded[name] = buffer.getvalue()
    return encoded


def demo_answer(data: bytes, predictor) -> dict[str, float]:
    """One photo as the demo answers it: analysis, the drawn picture, and that picture as the JPEG it sends."""
    start = time.perf_counter()
    analysis = analyze(data, predictor)
    draw_faces(analysis).save(io.BytesIO(), "JPEG", quality=90)
    return {**analysis.timings_ms, "answer": (time.perf_counter() - start) * 1000, "faces": len(analysis.faces)}


def fer_style_boxes(gray: Image.Image) -> list:
    pixels = np.asarray(gray, dtype=np.uint8)
    return list(_cascade().detectMultiScale(pixels, scaleFactor=1.1, minNeighbors=5, minSize=(50, 50)))


def timed(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fer_ensemble", "fer_student", "fer_student.int8"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--only", default="", help="time only the photos whose name contains this, e.g. '20 faces'")
    args = parser.parse_args()
    photos = {name: data for name, data in bench_photos().items() if args.only in name}
    predictors = {name: OnnxPredictor(REPO / "artifacts" / f"{name}.onnx", threads=args.threads) for name in args.models}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for name, data in photos.items():  # warm-up, then models take turns
        for model, predictor in predictors.items():
            demo_answer(data, predictor)
    for _ in range(args.rounds):
        for name, data in photos.items():
            for model, predictor in predictors.items():
                results.setdefault((model, name), []).append(demo_answer(data, predictor))
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; ONNX Runtime threads {args.threads}; "
          f"median of {args.rounds} rounds, ms")
    print(f"| model | photo | faces | read | detect | classify | demo answer (+ draw, JPEG) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (model, name), runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(f"| {model} | {name} | {median['faces']:.0f} | {median['read']:.1f} | {median['detect']:.1f} | "
              f"{median['model']:.1f} | {median['answer']:.1f} |")
    for model in predictors:
        total_s = sum(statistics.median(run["total"] for run in results[(model, name)]) for name in photos) / 1000
        print(f"{model}: {len(photos) / total_s:.1f} photos/s over the {len(photos)} photos (analysis only)")
    print("\n| photo | this project: detect ms, faces | fer's settings: detect ms, faces |")
    print("|---|---:|---:|")
    for name, data in photos.items():
        gray = to_grayscale(load_image(data))
        ours = timed(lambda: detect_faces(gray, PHOTO), args.rounds)
        theirs = timed(lambda: fer_style_boxes(gray), args.rounds)
        print(f"| {name} | {ours:.1f}, {len(detect_faces(gray, PHOTO))} | {theirs:.1f}, {len(fer_style_boxes(gray))} |")


if __name__ == "__main__":
    main()
