"""A real browser on the demo page: Debian's Chromium driven by Playwright (never a downloaded browser).

Loads the page, uploads the shipped two-face photo, waits for the labels, and saves a screenshot
(to $FER_SCREENSHOT_DIR if set, else the test's tmp folder); then a non-image gets its message.
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


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
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
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
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
