"""The in-browser page (web/) in Debian's Chromium, driven by Playwright: does JavaScript answer as Python does?

`web/serve.py` assembles and serves the page as `make web` does; the page runs the default model with
ONNX Runtime Web and finds faces with OpenCV.js. For each image the test asks Python
(`faces.analyze` on the same model) and compares: grayscale pixels, boxes and 48x48 crops exactly,
probabilities within 1e-3, labels and uncertain flags equal. The images cover the example photo (two
faces), a 48x48 crop, a weak answer (uncertain), a large photo (detection on a scaled copy), a tight
face (found on the padded retry), a photo with no face and a file that is not an image; then the
webcam, Chromium's fake camera playing the example photo, whose frames must get Python's answer for
the frame the page saw. The Pillow port alone (web/js/pillow.js) is also checked in Node on random
sizes, enlarging too.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_fastai import faces
from fer_fastai.paths import DEFAULT_MODEL, DEFAULT_MODEL_NAME
from fer_fastai.predict import load_predictor
from fer_fastai.preprocess import load_image, to_grayscale
from chromium import TWO_FACES, chromium_with_fake_camera

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
ONE_CROP = ROOT / "demo" / "examples" / "hopper_48.png"
PROB_TOLERANCE = 1e-3
READY_MS = 120_000  # a 20 MB model compiled to wasm on a busy 2-core CI machine
ANSWER_MS = 60_000


@pytest.fixture(scope="module")
def python_model():
    return load_predictor(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir() or not (WEB / "node_modules" / "@techstark").is_dir():
        pytest.skip("web/'s npm packages are not installed (`make web-deps`; .ci/run does it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = tmp_path_factory.mktemp("site")
    server = subprocess.Popen([sys.executable, str(WEB / "serve.py"), "--port", str(port), "--site", str(site)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first_line = server.stdout.readline()  # printed once the site is assembled and the port is bound
    assert "The page runs" in first_line, f"web/serve.py did not start: {first_line!r}"
    yield f"http://127.0.0.1:{port}/"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def page(page_url, tmp_path_factory):
    """One page for the whole module: the model loads once."""
    with chromium_with_fake_camera(tmp_path_factory.mktemp("camera")) as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
        page.goto(page_url)
        page.wait_for_function("() => !document.querySelector('#photo').disabled"
                               " || document.querySelector('#status').dataset.kind === 'error'", timeout=READY_MS)
        assert page.locator("#status").inner_text().startswith("Ready"), page.locator("#status").inner_text()
        yield page


def upload(page, path: Path) -> dict:
    """Choose `path` in the page and return its answer (boxes, probs, mode; gray and crops as numpy arrays)."""
    before = page.evaluate("() => fer.answered")
    page.locator("#photo").set_input_files(str(path))
    page.wait_for_function("(before) => fer.answered > before", arg=before, timeout=ANSWER_MS)
    return last_answer(page)


def last_answer(page) -> dict:
    answer = page.evaluate("""() => {
        const bytes = (array) => btoa(Array.from(array, (v) => String.fromCharCode(v)).join(''));
        const { source, width, height, mode, boxes, probs, uncertain } = fer.last;
        return { source, width, height, mode, boxes, probs, uncertain,
                 gray: bytes(fer.last.gray), crops: fer.last.crops.map(bytes) };
    }""")
    size = (answer["height"], answer["width"])
    answer["gray"] = np.frombuffer(base64.b64decode(answer["gray"]), np.uint8).reshape(size)
    answer["crops"] = [np.frombuffer(base64.b64decode(crop), np.uint8).reshape(48, 48) for crop in answer["crops"]]
    return answer


def assert_same_answer(answer: dict, image, python_model, settings=faces.PHOTO) -> None:
    """The page's answer is Python's for the same image: boxes and crops exact, probabilities within 1e-3."""
    expected = faces.analyze(image, python_model, settings)
    gray = to_grayscale(load_image(image))
    assert answer["gray"].shape == (gray.height, gray.width)
    assert np.array_equal(answer["gray"], np.asarray(gray)), "the page decoded or converted the image differently"
    assert answer["mode"] == expected.mode
    assert [tuple(box) for box in answer["boxes"]] == [face.box for face in expected.faces]
    crops = faces.crop_faces(gray, [face.box for face in expected.faces])
    for page_crop, crop in zip(answer["crops"], crops, strict=True):
        assert np.array_equal(page_crop, crop), "a 48x48 crop differs from Pillow's"
    probs = np.array(answer["probs"]).reshape(-1, len(python_model.labels))
    expected_probs = np.array([face.probs for face in expected.faces]).reshape(probs.shape)
    assert np.abs(probs - expected_probs).max(initial=0.0) <= PROB_TOLERANCE
    assert list(probs.argmax(axis=1)) == list(expected_probs.argmax(axis=1))
    assert answer["uncertain"] == [face.uncertain for face in expected.faces]


# Runs web/js/pillow.js in Node on the cases read from stdin; prints its outputs as JSON.
PILLOW_PORT_IN_NODE = """
import { readFileSync } from 'node:fs';
import { resizeBilinear, toGrayscale } from './web/js/pillow.js';
const cases = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify({
  resized: cases.resize.map(([pixels, w, h, ow, oh]) => Array.from(resizeBilinear(Uint8Array.from(pixels), w, h, ow, oh))),
  gray: Array.from(toGrayscale(Uint8Array.from(cases.rgba))),
}));
"""


def test_the_pillow_port_equals_pillow_on_any_size():
    """Up and down, square or not, and colours with any transparency: byte for byte (the photos below
    only shrink faces; a face under 48 px is enlarged)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    rng = np.random.default_rng(0)
    sizes = [(75, 75, 48, 48), (30, 20, 48, 48), (7, 3, 48, 48), (49, 47, 48, 48), (48, 100, 48, 48),
             (1000, 700, 800, 560), (3000, 10, 800, 3)]
    images = [rng.integers(0, 256, (h, w), dtype=np.uint8) for w, h, _, _ in sizes]
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba[:10, :, 3], rgba[10:20, :, 3] = 255, 0
    cases = {"resize": [[image.ravel().tolist(), *size] for image, size in zip(images, sizes)],
             "rgba": rgba.ravel().tolist()}
    run = subprocess.run([node, "--input-type=module", "-e", PILLOW_PORT_IN_NODE], input=json.dumps(cases),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    for image, (_, _, out_w, out_h), resized in zip(images, sizes, answer["resized"], strict=True):
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR))
        assert np.array_equal(np.array(resized, np.uint8).reshape(out_h, out_w), expected), (image.shape, out_w, out_h)
    flattened = Image.alpha_composite(Image.new("RGBA", (40, 40), "white"), Image.fromarray(rgba, "RGBA")).convert("L")
    assert np.array_equal(np.array(answer["gray"], np.uint8).reshape(40, 40), np.asarray(flattened))


def test_the_page_serves_the_default_model_with_threads_allowed(page):
    about = page.locator("#about").inner_text()
    assert about.startswith(f"{DEFAULT_MODEL_NAME} (") and "ONNX Runtime Web" in about
    assert page.evaluate("() => crossOriginIsolated"), "COOP/COEP headers missing: wasm would run on one thread"


def test_the_example_photo_gets_pythons_boxes_crops_and_probabilities(page, python_model, tmp_path):
    answer = upload(page, TWO_FACES)
    assert_same_answer(answer, TWO_FACES, python_model)
    assert len(answer["boxes"]) == 2
    assert page.locator("#status").inner_text().startswith("collins_and_hopper.jpg: 2 faces · detect")
    cards = page.locator("#faces li")
    assert cards.count() == 2 and cards.nth(0).locator(".bar").count() == 3
    label = python_model.labels[int(np.argmax(answer["probs"][0]))]
    assert cards.nth(0).locator("h3").inner_text().startswith(f"Face 1: {label} ")
    assert "ms per face in the model" in cards.nth(0).inner_text()
    shots = Path(os.environ.get("FER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "web-two-faces.png"), full_page=True)


def test_a_48x48_image_is_one_face_crop(page, python_model):
    answer = upload(page, ONE_CROP)
    assert answer["mode"] == "crop" and answer["boxes"] == [[0, 0, 48, 48]]
    assert_same_answer(answer, ONE_CROP, python_model)
    assert "already-cropped face" in page.locator("#note").inner_text()


def test_a_weak_answer_is_shown_as_uncertain(page, python_model, tmp_path):
    patch = tmp_path / "rocket.png"
    Image.open(TWO_FACES).crop((300, 200, 348, 248)).save(patch)  # 48x48 of spacesuit and rocket: no face
    answer = upload(page, patch)
    assert answer["uncertain"] == [True], "below the card's threshold"
    assert_same_answer(answer, patch, python_model)
    assert page.locator("#faces li h3").inner_text().startswith("Face 1: uncertain: ")


def test_a_large_photo_is_searched_on_a_scaled_copy(page, python_model, tmp_path):
    large = tmp_path / "large.png"
    photo = Image.open(TWO_FACES)
    photo.resize((photo.width * 5 // 3, photo.height * 5 // 3), Image.Resampling.BICUBIC).save(large)  # 1200 px wide
    answer = upload(page, large)
    assert answer["mode"] == "faces"
    assert_same_answer(answer, large, python_model)


def test_a_tight_face_is_found_on_the_padded_retry(page, python_model, tmp_path):
    tight = tmp_path / "tight.png"
    gray = to_grayscale(Image.open(TWO_FACES))
    x, y, w, h = faces.find_faces(gray)[1]
    Image.open(TWO_FACES).crop((x + 8, y + 8, x + w - 8, y + h - 8)).save(tight)
    assert not faces.detect_faces(to_grayscale(Image.open(tight))), "the crop must need the retry"
    answer = upload(page, tight)
    assert answer["mode"] == "faces"
    assert_same_answer(answer, tight, python_model)


def test_no_face_says_so_and_classifies_nothing(page, python_model, tmp_path):
    blank = tmp_path / "sky.png"
    Image.new("RGB", (320, 200), (120, 160, 210)).save(blank)
    answer = upload(page, blank)
    assert answer["mode"] == "no face" and answer["probs"] == []
    assert_same_answer(answer, blank, python_model)
    assert page.locator("#faces li").count() == 0
    assert page.locator("#note").inner_text() == faces.NO_FACE_HINT
    assert "no face found" in page.locator("#status").inner_text()


def test_a_non_image_gets_a_message(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"these are my notes, not an image\n" * 4)
    page.locator("#photo").set_input_files(str(notes))
    page.wait_for_function("() => document.querySelector('#status').dataset.kind === 'error'", timeout=ANSWER_MS)
    assert page.locator("#status").inner_text().startswith("Could not use this image: notes.png is not a picture")


def test_the_webcam_streams_frames_that_get_pythons_answer(page, python_model):
    before = page.evaluate("() => fer.answered")
    page.locator("#webcam").click()
    page.wait_for_function("(before) => fer.answered > before + 1 && fer.last.source === 'webcam'", arg=before,
                           timeout=ANSWER_MS)  # two frames answered: a live loop, not one shot
    answer = last_answer(page)
    page.locator("#webcam").click()  # stop
    assert answer["boxes"], "the fake camera shows the two-face photo: some face must be found"
    frame = Image.fromarray(answer["gray"])  # the frame as the page saw it (camera colours are the browser's)
    assert_same_answer(answer, frame, python_model, faces.STREAM)
    assert page.locator("#webcam").inner_text() == "Start webcam"
