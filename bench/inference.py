"""Inference speed: PyTorch eager vs ONNX Runtime fp32 (vs int8 when present), one run, same threads.

    python bench/inference.py --run runs/seed-fastai-3ep [--threads 2] [--onnx PATH] [--int8 PATH]

Batch-1 latency p50/p99 and batch-256 throughput, measured in interleaved rounds so that a noisy,
shared machine slows every backend alike. Both backends get the same float32 [N, 1, 48, 48] array
and the same intra-op thread count (inter-op 1). Targets from issue 5 are checked at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from export.to_onnx import source_sha256, time_calls
from fer_fastai.model_io import file_sha256, load_model
from fer_fastai.onnx_session import open_session
from fer_fastai.paths import sibling
from fer_fastai.predict import ONNX_INPUT

BATCH = 256


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    session = open_session(path, threads)
    return lambda images: session.run(["probs"], {ONNX_INPUT: images})


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], object]:
    def run(images: np.ndarray):
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    return run


def measure(runners: dict[str, Callable], rounds: int, calls_b1: int, calls_batch: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    one = rng.random((1, 1, 48, 48), dtype=np.float32)
    many = rng.random((BATCH, 1, 48, 48), dtype=np.float32)
    b1 = {name: [] for name in runners}
    batch = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            b1[name].append(time_calls(lambda: run(one), calls_b1, warmup=20))
            batch[name].append(time_calls(lambda: run(many), calls_batch, warmup=1))
    results = {}
    for name in runners:
        latency, batch_times = np.concatenate(b1[name]) * 1e3, np.concatenate(batch[name])
        results[name] = {"b1_p50_ms": float(np.percentile(latency, 50)), "b1_p99_ms": float(np.percentile(latency, 99)),
                         "b256_img_per_s": float(BATCH / np.median(batch_times))}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder with model.safetensors (+ model.onnx beside it)")
    parser.add_argument("--weights", type=Path, help="a .safetensors instead of --run")
    parser.add_argument("--onnx", type=Path, help="fp32 ONNX file (default: the weights' .onnx)")
    parser.add_argument("--int8", type=Path, help="int8 ONNX file (default: the weights' .int8.onnx, if present)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every backend")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200, help="batch-1 calls per backend per round")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    weights = args.weights or (args.run / "model.safetensors" if args.run else None)
    if weights is None:
        parser.error("give --run or --weights")
    onnx_path = args.onnx or sibling(weights, "onnx")
    int8_path = args.int8 or sibling(weights, "int8")
    if not onnx_path.is_file():
        parser.error(f"{onnx_path} not found; export first: python -m export.to_onnx --weights {weights}")

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model, card = load_model(weights)
    weights_sha256 = file_sha256(weights)
    for path in (onnx_path, int8_path):
        if path.is_file() and source_sha256(path) != weights_sha256:
            parser.error(f"{path} was not exported from {weights} (source_weights_sha256 differs)")
    runners = {"torch eager": torch_runner(model), "onnxruntime fp32": onnx_runner(onnx_path, args.threads)}
    if int8_path.is_file():
        runners["onnxruntime int8"] = onnx_runner(int8_path, args.threads)

    load_before = os.getloadavg()
    results = measure(runners, args.rounds, args.calls, calls_batch=4)
    load_after = os.getloadavg()
    print(f"{card['arch']} ({weights}); {args.threads} threads; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"load average {load_before[0]:.1f} → {load_after[0]:.1f}")
    print(f"\n| backend | batch-1 p50 (ms) | batch-1 p99 (ms) | batch-{BATCH} (img/s) |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['b1_p50_ms']:.3f} | {r['b1_p99_ms']:.3f} | {r['b256_img_per_s']:,.0f} |")
    eager, fp32 = results["torch eager"], results["onnxruntime fp32"]
    checks = [("ORT fp32 batch-1 p50 / eager", fp32["b1_p50_ms"] / eager["b1_p50_ms"], "≤ 0.30", lambda v: v <= 0.3),
              ("ORT fp32 batch-256 throughput / eager", fp32["b256_img_per_s"] / eager["b256_img_per_s"], "≥ 4.0",
               lambda v: v >= 4.0)]
    if "onnxruntime int8" in results:
        int8 = results["onnxruntime int8"]
        checks += [("int8 batch-1 speed-up over ORT fp32", fp32["b1_p50_ms"] / int8["b1_p50_ms"], "≥ 1.5", lambda v: v >= 1.5),
                   ("int8 batch-256 throughput / ORT fp32", int8["b256_img_per_s"] / fp32["b256_img_per_s"], "≥ 1.5",
                    lambda v: v >= 1.5)]
    print()
    for label, value, target, ok in checks:
        print(f"{label}: {value:.2f} (target {target}) {'met' if ok(value) else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results,
                                         "load_average": [load_before[0], load_after[0]]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
