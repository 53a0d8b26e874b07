"""How often the demo's Live webcam tab shows a new answer, with Chromium's fake camera playing a photo.

    python bench/webcam_rate.py [--models fer_ensemble fer_student] [--seconds 10]

For each model: serves the demo in this process, opens the page in Debian's Chromium (headless,
Playwright) with a fake camera that plays the example photo (two faces), starts the stream, and counts
the changes of the webcam status line (each answer rewrites it) over `--seconds`. The page asks for a
frame every demo.app.STREAM_EVERY_S seconds, so that is the ceiling. Needs /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from PIL import Image

from demo.app import STREAM_EVERY_S, build_app, serve

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "demo" / "examples" / "collins_and_hopper.jpg"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
# Each answer rewrites the status line with its own timings (Gradio may also show a progress timer
# above it); one DOM update can be several mutations, so an answer is counted when the "answered by ..."
# text differs from the last one seen.
COUNT_CHANGES = """() => { const status = document.querySelector('#webcam-status');
    const answer = () => (status.innerText.match(/answered by[^\\n]*/) || [''])[0]; let last = answer();
    window.answers = 0; new MutationObserver(() => { const now = answer(); if (now && now !== last) { last = now;
    window.answers++; } }).observe(status, {subtree: true, childList: true, characterData: true}); }"""


def camera_file(out: Path, frames: int = 30) -> Path:
    """The example photo as a few seconds of raw YUV 4:2:0 frames, which Chromium's fake camera loops."""
    image = Image.open(PHOTO).convert("RGB").resize((640, 344))
    y, cb, cr = image.convert("YCbCr").split()
    frame = b"FRAME\n" + y.tobytes() + cb.resize((320, 172)).tobytes() + cr.resize((320, 172)).tobytes()
    out.write_bytes(b"YUV4MPEG2 W640 H344 F30:1 Ip A1:1 C420jpeg\n" + frame * frames)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_per_second(browser, url: str, seconds: float) -> float:
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
    page.goto(url)
    page.get_by_role("tab", name="Live webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.get_by_role("button", name="capture photo").click()  # in streaming mode this starts the stream
    page.wait_for_function("() => /answered by/.test(document.querySelector('#webcam-status')?.innerText)",
                           timeout=120_000)
    page.evaluate(COUNT_CHANGES)
    start = time.perf_counter()
    page.wait_for_timeout(seconds * 1000)
    count = page.evaluate("() => window.answers")
    elapsed = time.perf_counter() - start
    page.close()
    return count / elapsed


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fer_ensemble", "fer_student"])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        camera = camera_file(Path(folder) / "camera.y4m")
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=CHROMIUM_ARGS + [f"--use-file-for-fake-video-capture={camera}"])
        print(f"frames requested every {STREAM_EVERY_S} s (at most {1 / STREAM_EVERY_S:.0f} answers/s)")
        for model in args.models:
            demo = build_app(REPO / "artifacts" / f"{model}.onnx")
            port = free_port()
            serve(demo, port=port, prevent_thread_lock=True, quiet=True)
            rate = answers_per_second(browser, f"http://127.0.0.1:{port}/", args.seconds)
            demo.close()
            print(f"{model}: {rate:.1f} answers/s over {args.seconds:.0f} s (two faces, 640x344 frames)")
        browser.close()


if __name__ == "__main__":
    main()
