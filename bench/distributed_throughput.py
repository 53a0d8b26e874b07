"""Training throughput over 1 vs N processes: the real command (`python -m fer_fastai.train`, and under
`torchrun --nproc_per_node N`), same recipe, data and global batch, one after the other in one run.

    python bench/distributed_throughput.py [--data ../shared/fer2013] [--faces 3000] [--processes 1 2]
                                           [--arch seed] [--bs 64] [--epochs 1] [--device cpu]

It reads each run's fit time from its metrics.json (training and validation of every epoch, no setup or
finishing) and prints training faces per second of it. Each process gets cores/N threads (OMP_NUM_THREADS;
`--threads` sets another number), so N processes share the machine's cores as one process would use them all. `--faces` trains on a stratified
sample of the train split (written as a fer2013.csv in a temporary folder), so a run takes minutes.
On a machine with N GPUs, `--device cuda --processes 1 N` measures 1 vs N GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fer_fastai.data import FaceSet, load_splits, stratified_split
from fer_fastai.paths import DEFAULT_DATA


def write_sample_csv(train: FaceSet, faces: int, path: Path) -> int:
    """A fer2013.csv (all rows Training) of a stratified `faces`-face sample of `train`; returns its size."""
    if faces < len(train):
        _, index = stratified_split(train.labels, faces / len(train), seed=0)
        train = train.subset(index)
    rows = ["emotion,pixels,Usage"] + [f"{label},{' '.join(map(str, image.ravel()))},Training"
                                       for image, label in zip(train.pixels, train.labels)]
    path.write_text("\n".join(rows) + "\n")
    return len(train)


def train_command(processes: int) -> list[str]:
    """The training command as a user types it: without a launcher for one process, under torchrun for more."""
    if processes == 1:
        return [sys.executable, "-m", "fer_fastai.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "fer_fastai.train"]


def fit_seconds(processes: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """One run of `processes` processes; its metrics.json's fit time and the faces it trained on."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    flags = ["--data", str(data), "--out", str(out), "--arch", args.arch, "--bs", str(args.bs), "--lr", "1e-3",
             "--epochs", str(args.epochs), "--device", args.device, "--keep", "last"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FER_FASTAI_CACHE": str(out.parent / "cache")}
    result = subprocess.run(train_command(processes) + flags, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"the {processes}-process run failed:\n{result.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    card = json.loads((out / "model.json").read_text())
    return {"threads": threads, "seconds": metrics["train_seconds"], "faces": card["data"]["counts"]["train"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--faces", type=int, default=3000, help="train faces to sample (0: the whole train split)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--arch", default="seed")
    parser.add_argument("--bs", type=int, default=64, help="the global batch; each of N processes takes bs/N")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="threads per process (0: cores / processes)")
    args = parser.parse_args()

    train = load_splits(args.data)["train"]
    with tempfile.TemporaryDirectory(prefix="fer-distributed-bench-") as folder:
        data = Path(folder) / "fer2013.csv"
        sampled = write_sample_csv(train, args.faces or len(train), data)
        print(f"{args.arch}, global batch {args.bs}, {args.epochs} epoch(s) of {sampled} faces (90% train, 10% valid), "
              f"--device {args.device}, {os.cpu_count()} cores")
        print(f"{'processes':>9}  {'threads each':>12}  {'fit s':>7}  {'train img/s':>11}  {'vs 1':>5}")
        baseline = None
        for processes in args.processes:
            run = fit_seconds(processes, data, Path(folder) / f"run-{processes}", args)
            rate = run["faces"] * args.epochs / run["seconds"]
            baseline = baseline or rate
            print(f"{processes:>9}  {run['threads']:>12}  {run['seconds']:>7.1f}  {rate:>11.0f}  {rate / baseline:>5.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
