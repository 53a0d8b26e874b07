"""A real browser on the demo page: Debian's Chromium driven by Playwright (never a downloaded browser).

Loads the page, uploads the shipped two-face photo, waits for the labels, and saves a screenshot
(to $FER_SCREENSHOT_DIR if set, else the test's tmp folder); a non-image gets its message; and the
live webcam tab streams Chromium's fake camera, fed with the same photo, through the model.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
TWO_FACES = ROOT / "demo" / "examples" / "collins_and_hopper.jpg"
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ANSWER_MS = 60_000  # first answer includes model warm-up on a busy CI machine


def write_y4m(image_path: Path, out: Path, frames: int = 5) -> Path:
    """A few identical frames of `image_path` as raw YUV 4:2:0, the format Chromium's fake camera plays."""
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    image = image.resize((image.width // 2 * 2, image.height // 2 * 2))
    y, cb, cr = image.convert("YCbCr").split()
    half = (image.width // 2, image.height // 2)
    frame = b"FRAME\n" + y.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes()
    out.write_bytes(f"YUV4MPEG2 W{image.width} H{image.height} F10:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    camera = write_y4m(TWO_FACES, tmp_path_factory.mktemp("camera") / "two_faces.y4m")
    fake_camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                   f"--use-file-for-fake-video-capture={camera}"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + fake_camera)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_url(seed_model_file):
    from demo.app import build_app, serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_app(seed_model_file)
    serve(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def page(browser, page_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
    page.goto(page_url)
    page.wait_for_selector("#status", state="attached")
    yield page
    page.close()


def upload(page, path: Path) -> str:
    """Upload through the photo input's file chooser and return the status line once it has the answer."""
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.wait_for_function("() => /answered by|Could not use/.test(document.querySelector('#status')?.innerText)",
                           timeout=ANSWER_MS)
    return page.locator("#status").inner_text()


def test_upload_a_photo_and_see_every_face_labelled(page, tmp_path):
    status = upload(page, TWO_FACES)
    assert "2 faces" in status and "answered by torch in" in status and "ms" in status
    bars = page.locator("#faces").inner_text()
    assert "Face 1" in bars and "Face 2" in bars and "%" in bars
    page.wait_for_timeout(300)  # let the annotated image paint
    shots = Path(os.environ.get("FER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "demo-two-faces.png"), full_page=True)
    assert (shots / "demo-two-faces.png").stat().st_size > 10_000


def test_a_non_image_gets_a_message_not_a_crash(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"these are my notes, not an image\n" * 4)
    status = upload(page, notes)
    assert "Could not use this image:" in status and "notes.png: not a readable image" in status


def test_live_webcam_streams_frames_through_the_model(page):
    page.get_by_role("tab", name="Live webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.get_by_role("button", name="capture photo").click()  # in streaming mode this starts the stream
    page.wait_for_function("() => /2 faces · answered by torch/.test(document.querySelector('#webcam-status')?.innerText)",
                           timeout=ANSWER_MS)
    first = page.locator("#webcam-status").inner_text()
    page.wait_for_function("(first) => document.querySelector('#webcam-status')?.innerText.includes('answered by')"
                           " && document.querySelector('#webcam-status').innerText !== first", arg=first,
                           timeout=ANSWER_MS)  # a later frame answered too: it is a stream, not one shot
