"""A real browser on the demo page: Debian's Chromium driven by Playwright (never a downloaded browser).

Loads the page, uploads the shipped two-face photo, waits for the labels, and saves a screenshot
(to $FER_SCREENSHOT_DIR if set, else the test's tmp folder); a non-image gets its message; and the
live webcam tab streams Chromium's fake camera, fed with the same photo, through the model. On the
shipped student model: a photo with no face shows no emotion, an unsure answer is marked, the heat map
toggles on, a 20-face photo stays readable and short, and a batch with a .pdf gives that file a row.
`FER_SCREENSHOT_DIR=docs/images pytest tests/test_demo_browser.py` refreshes the screenshots in docs/demo.md.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from chromium import TWO_FACES, chromium_with_fake_camera
from conftest import crowd_photo

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "artifacts" / "fer_student.onnx"  # fast, and its card has an uncertainty threshold
ANSWER_MS = 60_000  # first answer includes model warm-up on a busy CI machine


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium_with_fake_camera(tmp_path_factory.mktemp("camera")) as browser:
        yield browser


def served(model: Path):
    """The demo on `model`, on a free local port, for the duration of a fixture."""
    from demo.app import build_app, serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_app(model)
    serve(demo, port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def page_url(seed_model_file):
    demo, url = served(seed_model_file)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def student_url():
    if not STUDENT.is_file():
        pytest.skip(f"{STUDENT.name} is not in artifacts/")
    demo, url = served(STUDENT)
    yield url
    demo.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
    page.goto(url)
    page.wait_for_selector("#status", state="attached")
    return page


@pytest.fixture
def page(browser, page_url):
    page = open_page(browser, page_url)
    yield page
    page.close()


@pytest.fixture
def student_page(browser, student_url):
    page = open_page(browser, student_url)
    yield page
    page.close()


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """A full-page screenshot into $FER_SCREENSHOT_DIR (docs/images for the docs) or the test's folder."""
    shots = Path(os.environ.get("FER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(400)  # let the annotated image paint
    page.screenshot(path=str(shots / name), full_page=True)
    assert (shots / name).stat().st_size > 10_000
    return shots / name


def upload(page, path: Path) -> str:
    """Upload through the photo input's file chooser and return the status line once it has the answer."""
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.wait_for_function("() => /answered by|Could not use|No face found/.test(document.querySelector('#status')?.innerText)",
                           timeout=ANSWER_MS)
    return page.locator("#status").inner_text()


def test_upload_a_photo_and_see_every_face_labelled(page, tmp_path):
    status = upload(page, TWO_FACES)
    assert "2 faces" in status and "answered by torch in" in status and "ms" in status
    bars = page.locator("#faces").inner_text()
    assert "Face 1" in bars and "Face 2" in bars and "%" in bars
    screenshot(page, "demo-two-faces.png", tmp_path)


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


def test_a_photo_without_a_face_shows_no_emotion(student_page, tmp_path):
    from PIL import Image

    Image.new("RGB", (480, 320), (200, 190, 170)).save(tmp_path / "wall.jpg")
    status = upload(student_page, tmp_path / "wall.jpg")
    faces = student_page.locator("#faces").inner_text()
    assert status.startswith("No face found, nothing classified")
    assert "face the camera, add light, or crop closer" in faces and "%" not in faces
    screenshot(student_page, "demo-no-face.png", tmp_path)


def test_an_unsure_answer_is_marked_uncertain(student_page, tmp_path):
    from PIL import Image

    Image.new("L", (48, 48), 128).save(tmp_path / "grey_48.png")  # a face crop with nothing in it
    status = upload(student_page, tmp_path / "grey_48.png")
    assert "48x48 input" in status
    assert "uncertain:" in student_page.locator("#faces").inner_text()
    screenshot(student_page, "demo-uncertain.png", tmp_path)


def test_the_heat_map_toggle_redraws_the_photo_with_maps(student_page, tmp_path):
    upload(student_page, TWO_FACES)
    plain = student_page.locator("#annotated img").get_attribute("src")
    student_page.get_by_label("Show what drove each answer (heat map)").check()
    student_page.wait_for_function("() => /heat map: the brighter/.test(document.querySelector('#status')?.innerText)",
                                   timeout=ANSWER_MS)
    student_page.wait_for_function("(plain) => document.querySelector('#annotated img')?.getAttribute('src') !== plain",
                                   arg=plain,
                                   timeout=ANSWER_MS)
    screenshot(student_page, "demo-heat-map.png", tmp_path)


def test_twenty_faces_stay_readable_on_a_page_of_bounded_height(student_page, tmp_path):
    crowd_photo().save(tmp_path / "crowd.jpg")
    status = upload(student_page, tmp_path / "crowd.jpg")
    assert "20 faces" in status
    assert "Face 20" in student_page.locator("#faces").inner_text()
    height = student_page.evaluate("() => document.documentElement.scrollHeight")
    assert height < 1600, f"the page grew to {height} px for 20 faces"
    screenshot(student_page, "demo-crowd.png", tmp_path)


def test_a_batch_with_a_pdf_gives_that_file_a_row(student_page, tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n")
    student_page.get_by_role("tab", name="Batch").click()
    student_page.locator("#batch-files input[type=file]").set_input_files([str(TWO_FACES), str(pdf)])
    student_page.wait_for_function("() => document.body.innerText.includes('report.pdf') && "
                                   "/unreadable/.test(document.body.innerText)", timeout=ANSWER_MS)
    assert "not a picture format" in student_page.locator("body").inner_text()
    screenshot(student_page, "demo-batch.png", tmp_path)
