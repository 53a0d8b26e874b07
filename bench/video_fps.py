"""End-to-end frames per second of `python -m fer_fastai.video`, and its peak memory against video length.

    python bench/video_fps.py [--models artifacts/fer_ensemble.onnx artifacts/fer_student.onnx] [--threads 2]
                              [--seconds 10] [--rounds 3] [--memory-seconds 10 60]

The clip is synthetic, so anyone can repeat it: 640x480 at 25 frames/s, one face (the left portrait of
demo/examples/collins_and_hopper.jpg) swaying left and right on a grey background, written with OpenCV (mp4v).
End to end means what the command does: decode, find faces, classify, track and smooth, draw, encode the
annotated .mp4 and write the CSV and the plot; frames/s = frames / wall time of `annotate_video`, best of
`--rounds`, with `--every 1` and `--every 2`, for each model (ONNX Runtime with `--threads` intra-op threads,
OpenCV with as many). Peak memory: each clip length runs in a fresh process with the first model, which reports
its `ru_maxrss` (the whole process: Python, OpenCV, ONNX Runtime and the model included).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fer_fastai.errors import cli_errors
from fer_fastai.paths import DEFAULT_MODEL
from fer_fastai.predict import OnnxPredictor
from fer_fastai.video import annotate_video

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "demo" / "examples" / "collins_and_hopper.jpg"
STUDENT = REPO / "artifacts" / "fer_student.onnx"
SIZE, FPS = (640, 480), 25.0

PEAK_RSS = """
import resource, sys
from fer_fastai.predict import OnnxPredictor
from fer_fastai.video import annotate_video
clip, model, threads, folder = sys.argv[1:5]
annotate_video(clip, OnnxPredictor(model, threads=int(threads)), f"{folder}/a.mp4", f"{folder}/t.csv", f"{folder}/t.png")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_clip(path: Path, seconds: float, people: int = 1) -> Path:
    """640x480, 25 frames/s: the left portrait sways 40 px left and right over about 5 s. With `people=2`,
    the whole photo (both portraits, 720x388 shrunk to 640 wide) sways instead, and the right-hand person is
    hidden behind a grey card from 40% to 50% of the clip, as if they stepped out."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))[:, :, ::-1]
    picture = np.ascontiguousarray(photo[:, :360] if people == 1 else cv2.resize(photo, (600, 323), interpolation=cv2.INTER_AREA))
    count = round(seconds * FPS)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for i in range(count):
        frame = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
        left = (140 if people == 1 else 20) + round((40 if people == 1 else 15) * np.sin(i / 20))
        frame[40:40 + picture.shape[0], left:left + picture.shape[1]] = picture
        if people == 2 and 0.40 <= i / count < 0.50:
            frame[:, left + 330:] = 90
        writer.write(frame)
    writer.release()
    return path


def measure_fps(clip: Path, model: Path, threads: int, every: int, rounds: int, folder: Path) -> tuple[float, int]:
    """Best frames/s over `rounds` runs, and the number of face rows (to show faces were found)."""
    predictor = OnnxPredictor(model, threads=threads)
    best, rows = 0.0, 0
    for _ in range(rounds):
        summary = annotate_video(clip, predictor, folder / "a.mp4", folder / "t.csv", folder / "t.png", every=every)
        best, rows = max(best, summary.frames_per_s), summary.face_rows
    return best, rows


def peak_rss_mb(clip: Path, model: Path, threads: int, folder: Path) -> float:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(clip), str(model), str(threads), str(folder)],
                            capture_output=True, text=True, check=True, cwd=REPO)
    return int(result.stdout.split()[-1]) / 1024


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=Path, default=[DEFAULT_MODEL, STUDENT])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and OpenCV threads")
    parser.add_argument("--seconds", type=float, default=10, help="length of the clip timed for frames/s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-seconds", type=float, nargs="*", default=[10, 60])
    parser.add_argument("--save-clip", type=Path, help="only write a clip of --seconds here (docs/video.md's example)")
    parser.add_argument("--people", type=int, choices=(1, 2), default=1, help="faces in the --save-clip clip")
    args = parser.parse_args()
    if args.save_clip:
        write_clip(args.save_clip, args.seconds, args.people)
        return
    cv2.setNumThreads(args.threads)
    with cli_errors(), tempfile.TemporaryDirectory(prefix="fer-video-bench-") as temp:
        folder = Path(temp)
        clip = write_clip(folder / "clip.mp4", args.seconds)
        frames = round(args.seconds * FPS)
        print(f"{cpu_name()}, {args.threads} threads; {SIZE[0]}x{SIZE[1]} clip, {frames} frames at {FPS:g} frames/s; "
              f"best of {args.rounds}")
        print("\n| model | --every | frames/s | face rows |\n|---|---:|---:|---:|")
        for model in args.models:
            for every in (1, 2):
                fps, rows = measure_fps(clip, model, args.threads, every, args.rounds, folder)
                print(f"| `{model.name}` | {every} | {fps:.1f} | {rows}/{frames} |", flush=True)
        print(f"\n| clip | peak RSS (`{args.models[0].name}`, --every 1) |\n|---|---:|")
        for seconds in args.memory_seconds:
            long_clip = write_clip(folder / f"clip-{seconds:g}s.mp4", seconds)
            print(f"| {seconds:g} s | {peak_rss_mb(long_clip, args.models[0], args.threads, folder):.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
