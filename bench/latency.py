"""Batch-1 latency of every shipped ONNX file (fp32 and int8) in ONNX Runtime, one face at a time.

    python bench/latency.py [--artifacts artifacts] [--threads 2] [--rounds 5] [--calls 100] [--warmup 20]

Each file gets its own session with `--threads` intra-op threads and answers the same 48x48 face
(the demo's `hopper_48.png`, read by `fer_fastai.preprocess`) `--warmup` times untimed; then the
files take turns, `--calls` timed calls each per round, for `--rounds` rounds, so that a shared,
noisy machine slows every file alike. The table gives p50 and p90 over all timed calls. numpy and
onnxruntime only (through `fer_fastai.predict.OnnxPredictor`); torch is never imported.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fer_fastai.errors import FerError, cli_errors
from fer_fastai.paths import is_int8, sibling
from fer_fastai.predict import ONNX_INPUT, OnnxPredictor
from fer_fastai.preprocess import images_to_input

REPO = Path(__file__).resolve().parents[1]
FACE = REPO / "demo" / "examples" / "hopper_48.png"


def shipped_files(folder: Path) -> list[Path]:
    """Every .onnx in `folder`, each fp32 file followed by its int8 twin."""
    files = sorted(path for path in folder.glob("*.onnx") if not is_int8(path))
    if not files:
        raise FerError(f"{folder}: no .onnx files")
    ordered = []
    for path in files:
        ordered.append(path)
        twin = sibling(path, "int8")
        if twin.is_file():
            ordered.append(twin)
    return ordered


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(files: list[Path], face: np.ndarray, threads: int, rounds: int, calls: int, warmup: int) -> dict[Path, np.ndarray]:
    """Seconds per batch-1 call for each file, in interleaved rounds after a warm-up."""
    sessions = {path: OnnxPredictor(path, threads=threads).session for path in files}
    feeds = {ONNX_INPUT: face}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(["probs"], feeds)
    times: dict[Path, list[float]] = {path: [] for path in files}
    for _ in range(rounds):
        for path, session in sessions.items():
            for _ in range(calls):
                start = time.perf_counter()
                session.run(["probs"], feeds)
                times[path].append(time.perf_counter() - start)
    return {path: np.array(seconds) for path, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts", help="folder of .onnx files (default: artifacts/)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per file per round (default 100)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per file first (default 20)")
    args = parser.parse_args()
    with cli_errors():
        files = shipped_files(args.artifacts)
        face = images_to_input([FACE])
        times = measure(files, face, args.threads, args.rounds, args.calls, args.warmup)
    print(f"batch 1, one 48x48 face, {args.threads} intra-op threads, onnxruntime {ort.__version__}, "
          f"{args.rounds} interleaved rounds x {args.calls} calls after {args.warmup} warm-up calls; {cpu_name()}")
    print(f"{'file':<26}{'MB':>7}{'p50 ms':>9}{'p90 ms':>9}")
    for path, seconds in times.items():
        size = path.stat().st_size / 1e6
        p50, p90 = np.percentile(seconds, [50, 90]) * 1e3
        print(f"{path.name:<26}{size:>7.1f}{p50:>9.2f}{p90:>9.2f}")


if __name__ == "__main__":
    main()
