"""The in-browser page's speed and weight: model load time, ms per face in wasm, bytes a visitor downloads.

    python bench/web_page.py [--models fer_ensemble,fer_student] [--threads 1,2] [--rounds 5] [--calls 20]

Serves web/ with `web/serve.py` (once per model) and opens one page per model and thread count in
Debian's Chromium (headless, driven by Playwright), each in a fresh browser context so nothing is
cached. For each page it reports what the page itself measured while loading (download, session
creation, first run), then, taking turns so that a busy machine slows every page alike, `--calls`
timed batch-1 runs of the example photo's first face crop per round (median and p90 of all), the
two faces as one batch, and the face finder on the whole photo. Native ONNX Runtime (Python) runs the
same crop in the same turns, so the wasm/native ratio holds even where the machine is busy and the
absolute numbers do not. Finally the bytes the page fetched, by file. Needs `make web-deps`
(web/node_modules) and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fer_fastai.errors import FerError, cli_errors
from fer_fastai.paths import DEFAULT_MODEL_NAME
from fer_fastai.predict import OnnxPredictor

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "demo" / "examples" / "collins_and_hopper.jpg"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
LOAD_MS = 300_000

# One round inside the page: `calls` timed runs of one face, then one run of all faces and one face search.
TIME_ROUND = """async (calls) => {
    const { classify } = await import('./js/model.js');
    const { gray, width, height, crops } = fer.last;
    const one = [], all = [], detect = [];
    for (let i = 0; i < calls; i++) {
        const start = performance.now();
        await classify(fer.model, [crops[0]]);
        one.push(performance.now() - start);
    }
    let start = performance.now();
    await classify(fer.model, crops);
    all.push((performance.now() - start) / crops.length);
    start = performance.now();
    fer.finder.find(gray, width, height, fer.config.detector.photo);
    detect.push(performance.now() - start);
    return { one, all, detect };
}"""

FETCHED = """() => performance.getEntriesByType('resource').map((entry) => [entry.name, entry.decodedBodySize])"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(model: str, site: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "web" / "serve.py"), "--port", str(port), "--model", model,
                               "--site", str(site)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    if "The page runs" not in line:
        server.kill()
        raise FerError(f"web/serve.py could not serve {model}: run `make web-deps` first and check artifacts/{model}.onnx")
    return server, f"http://127.0.0.1:{port}/"


def open_page(browser, url: str, threads: int):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{url}?threads={threads}")
    page.wait_for_function("() => !document.querySelector('#photo').disabled"
                           " || document.querySelector('#status').dataset.kind === 'error'", timeout=LOAD_MS)
    if not page.locator("#status").inner_text().startswith("Ready"):
        raise FerError(f"the page did not start: {page.locator('#status').inner_text()}")
    page.locator("#photo").set_input_files(str(PHOTO))
    page.wait_for_function("() => fer.answered > 0", timeout=LOAD_MS)
    return page


def main(models: list[str], thread_counts: list[int], rounds: int, calls: int) -> None:
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        raise FerError(f"{CHROMIUM} is missing: apt-get install chromium")
    servers, pages = [], {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for model in models:
                server, url = serve(model, Path(tmp) / model)
                servers.append(server)
                for threads in thread_counts:
                    pages[(model, threads)] = open_page(browser, url, threads)
            loads = {key: page.evaluate("() => ({ ...fer.model.timings, threads: fer.model.threads, "
                                        "finder: fer.finder.loadMs, cores: navigator.hardwareConcurrency, "
                                        "isolated: crossOriginIsolated, ort: fer.model.ort.env.versions.web })")
                     for key, page in pages.items()}
            times = {key: {"one": [], "all": [], "detect": []} for key in pages}
            crop = np.array(next(iter(pages.values())).evaluate("() => Array.from(fer.last.crops[0])"), np.float32)
            natives = {key: OnnxPredictor(REPO / "artifacts" / f"{key[0]}.onnx", threads=key[1]) for key in pages}
            native_times = {key: [] for key in pages}
            for _ in range(rounds):
                for key, page in pages.items():
                    for name, values in page.evaluate(TIME_ROUND, calls).items():
                        times[key][name] += values
                    native_times[key] += time_native(natives[key], crop.reshape(1, 1, 48, 48) / 255, calls)
            fetched = next(iter(pages.values())).evaluate(FETCHED)
        finally:
            browser.close()
            for server in servers:
                server.terminate()
    report(loads, times, native_times, fetched, models[0])


def time_native(predictor: OnnxPredictor, face: np.ndarray, calls: int) -> list[float]:
    """Milliseconds per call of native ONNX Runtime on one face: the same work the page does in wasm."""
    predictor.predict_proba(face)
    durations = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor.predict_proba(face)
        durations.append((time.perf_counter() - start) * 1000)
    return durations


def report(loads: dict, times: dict, native_times: dict, fetched: list, first_model: str) -> None:
    any_load = next(iter(loads.values()))
    print(f"Chromium headless, ONNX Runtime Web {any_load['ort']} (wasm, SIMD), {platform.processor() or platform.machine()}, "
          f"{any_load['cores']} logical cores, cross-origin isolated: {any_load['isolated']}")
    print("\n| model | threads | load ms (download + session) | first run ms | ms per face, p50 / p90 "
          "| ms per face, 2-face batch | native ms per face, p50 | wasm / native | face search ms, p50 "
          "| OpenCV.js ready ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, load in loads.items():
        t, native = times[key], np.median(native_times[key])
        print(f"| {key[0]} | {load['threads']} | {load['load']:.0f} ({load['fetch']:.0f} + {load['session']:.0f}) "
              f"| {load['firstRun']:.0f} | {np.median(t['one']):.1f} / {np.percentile(t['one'], 90):.1f} "
              f"| {np.median(t['all']):.1f} | {native:.2f} | {np.median(t['one']) / native:.1f} "
              f"| {np.median(t['detect']):.1f} | {load['finder']:.0f} |")
    print(f"\nBytes the page fetched ({first_model}):\n\n| file | bytes |\n|---|---:|")
    for url, size in sorted(fetched, key=lambda item: -item[1]):
        print(f"| {url.split('/', 3)[-1]} | {size:,} |")
    print(f"| total | {sum(size for _, size in fetched):,} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=f"{DEFAULT_MODEL_NAME},fer_student", help="comma-separated names in artifacts/")
    parser.add_argument("--threads", default="1,2", help="comma-separated wasm thread counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="timed one-face runs per page per round")
    args = parser.parse_args()
    with cli_errors():
        main(list(dict.fromkeys(args.models.split(","))), [int(n) for n in args.threads.split(",")], args.rounds, args.calls)
