"""Debian's Chromium for the browser tests, driven by Playwright (never a downloaded browser), with a fake
camera that plays a photo. Shared by tests/test_demo_browser.py and tests/test_web_page.py."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TWO_FACES = ROOT / "demo" / "examples" / "collins_and_hopper.jpg"
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


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


@contextmanager
def chromium_with_fake_camera(folder: Path, photo: Path = TWO_FACES):
    """A headless Chromium whose camera plays `photo`; skips the test, saying why, where it cannot run."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    camera = write_y4m(photo, folder / "camera.y4m")
    fake_camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                   f"--use-file-for-fake-video-capture={camera}"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + fake_camera)
        try:
            yield browser
        finally:
            browser.close()
