"""What an occlusion heat map (fer_fastai.explain) costs per face, beside plainly classifying the same faces.

    python bench/explain.py [--models artifacts/fer_ensemble.onnx artifacts/fer_student.onnx] [--faces 4]
                            [--threads 2] [--rounds 5]

The two faces of the demo's example photo, cropped as the demo crops them, repeated to `--faces` faces,
are explained (`occlusion_maps`, default settings: `OCCLUSION.rows_per_face` predictor rows per face)
and plainly classified (`predict_proba`, one row per face). The models take turns, `--rounds` rounds
after one untimed warm-up each, so a shared, noisy machine slows them alike; the table gives medians.
numpy and onnxruntime only for .onnx files; a .safetensors model runs the PyTorch backend.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fer_fastai.errors import cli_errors
from fer_fastai.explain import OCCLUSION, occlusion_maps
from fer_fastai.faces import analyze, crop_faces
from fer_fastai.predict import OnnxPredictor, load_predictor
from fer_fastai.preprocess import load_image, pixels_to_input, to_grayscale

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "demo" / "examples" / "collins_and_hopper.jpg"
DEFAULT_MODELS = [REPO / "artifacts" / "fer_ensemble.onnx", REPO / "artifacts" / "fer_student.onnx"]


def example_faces(predictor, n: int) -> np.ndarray:
    """uint8 [n, 48, 48]: the example photo's face crops, repeated."""
    boxes = [face.box for face in analyze(PHOTO, predictor).faces]
    crops = crop_faces(to_grayscale(load_image(PHOTO)), boxes)
    return np.resize(crops, (n, *crops.shape[1:]))


def seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--faces", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with cli_errors():
        predictors = {path: OnnxPredictor(path, threads=args.threads) if path.suffix == ".onnx" else load_predictor(path)
                      for path in args.models}
        faces = example_faces(next(iter(predictors.values())), args.faces)
        jobs = {path: {"explain": lambda p=predictor: occlusion_maps(faces, p),
                       "classify": lambda p=predictor: p.predict_proba(pixels_to_input(faces))}
                for path, predictor in predictors.items()}
        for job in jobs.values():  # warm-up: sessions allocate their buffers on the first call
            for work in job.values():
                work()
        times = {(path, kind): [] for path in jobs for kind in ("explain", "classify")}
        for _ in range(args.rounds):
            for path, job in jobs.items():
                for kind, work in job.items():
                    times[path, kind].append(seconds(work) / args.faces)
    print(f"{args.faces} faces per call, {args.threads} threads, median of {args.rounds} rounds; "
          f"explain = {OCCLUSION.rows_per_face} rows per face ({OCCLUSION.patch}-pixel squares every {OCCLUSION.stride})")
    print(f"{'model':<28}{'explain ms/face':>17}{'classify ms/face':>18}{'ratio':>8}")
    for path in jobs:
        explain, classify = (float(np.median(times[path, kind])) * 1000 for kind in ("explain", "classify"))
        print(f"{path.name:<28}{explain:>17.1f}{classify:>18.2f}{explain / classify:>8.0f}")


if __name__ == "__main__":
    main()
