"""fer_fastai.faces: detection on a shipped photo, crops, the fer-style API, drawing, and every bad input."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_fastai import faces
from fer_fastai.errors import FerError
from fer_fastai.faces import FACE_COLOURS, analyze, crop_faces, detect_emotions, detect_faces, draw_faces, top_k
from fer_fastai.labels import LABELS
from fer_fastai.preprocess import to_grayscale, to_model_size

EXAMPLES = Path(__file__).resolve().parents[1] / "demo" / "examples"
TWO_FACES = EXAMPLES / "collins_and_hopper.jpg"  # public-domain portraits side by side (SOURCES.md)
# Where the cascade finds the two faces in that 720x388 photo (checked by eye on the drawn image).
FACE_CENTRES = [(170, 87), (560, 141)]


class FakePredictor:
    """Answers from the crop's mean brightness, so tests can tell which pixels reached the model."""

    backend = "fake"
    labels = LABELS
    card: dict = {}

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        probs = np.full((len(batch), len(LABELS)), 0.05, np.float32)
        probs[np.arange(len(batch)), (batch.mean(axis=(1, 2, 3)) * 6.99).astype(int)] = 0.7
        return probs


def encoded(image: Image.Image, format: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save_args)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def centre(box) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def assert_two_faces_found(boxes, scale: float = 1.0):
    assert len(boxes) == 2, boxes
    for box, (cx, cy) in zip(boxes, FACE_CENTRES):  # left to right
        bx, by = centre(box)
        assert abs(bx - cx * scale) < 20 * scale and abs(by - cy * scale) < 20 * scale, (box, (cx, cy))


def test_cascade_finds_both_faces_in_the_shipped_photo_left_to_right():
    assert_two_faces_found(detect_faces(to_grayscale(Image.open(TWO_FACES))))


def test_detection_runs_on_a_downscaled_copy_and_scales_boxes_back():
    big = Image.open(TWO_FACES).resize((1440, 776))
    assert_two_faces_found(detect_faces(to_grayscale(big), faces.DetectSettings(max_side=720)), scale=2.0)


@pytest.mark.parametrize("image", [Image.new("L", (300, 200), 128),
                                   Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)),
                                   Image.new("L", (20, 10), 0)])
def test_no_face_in_flat_noise_or_tiny_images(image):
    assert detect_faces(image) == []


def test_detect_emotions_gives_the_fer_package_shape():
    result = detect_emotions(TWO_FACES, FakePredictor())
    assert [sorted(face) for face in result] == [["box", "emotions", "uncertain"]] * 2  # fer's two, plus one
    assert not any(face["uncertain"] for face in result)  # a predictor without a threshold is never uncertain
    assert all(len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"]) for face in result)
    assert all(list(face["emotions"]) == list(LABELS) for face in result)
    assert all(abs(sum(face["emotions"].values()) - 1.0) < 1e-3 for face in result)


def test_each_face_crop_not_the_whole_photo_reaches_the_model():
    predictor = FakePredictor()
    analysis = analyze(TWO_FACES, predictor)
    gray = to_grayscale(Image.open(TWO_FACES))
    expected = crop_faces(gray, [face.box for face in analysis.faces]).astype(np.float32) / 255
    assert analysis.mode == "faces" and analysis.note is None
    np.testing.assert_array_equal(predictor.batches[0][:, 0], expected)
    assert set(analysis.timings_ms) == {"read", "detect", "model", "total"}


def test_no_face_means_no_emotion_and_a_hint(caplog):
    """As the `fer` package: no face found, nothing classified (issue #32: a logo or a blank frame got labels)."""
    predictor = FakePredictor()
    with caplog.at_level(logging.WARNING, logger="fer_fastai.faces"):
        analysis = analyze(Image.new("RGB", (120, 80), "white"), predictor)
    assert analysis.mode == "no face" and analysis.faces == [] and analysis.as_dicts() == []
    assert analysis.note.startswith("No face found, so nothing was classified: face the camera, add light")
    assert "no face found" in caplog.text
    assert all(len(batch) == 0 for batch in predictor.batches)
    assert detect_emotions(Image.new("RGB", (1, 1), "white"), predictor) == []


def test_a_tight_crop_is_retried_with_room_around_it(monkeypatch):
    """When the plain search finds nothing, the edges are extended by RETRY_PAD and boxes mapped back."""
    gray = Image.new("L", (100, 80), 90)
    pad = round(100 * faces.RETRY_PAD)
    seen = []

    def detect(image, settings=faces.PHOTO):
        seen.append(image.size)
        return [] if image.size == (100, 80) else [(pad - 10, pad + 5, 120, 70)]  # overhangs the left and right

    monkeypatch.setattr(faces, "detect_faces", detect)
    assert faces.find_faces(gray) == [(0, 5, 100, 70)]
    assert seen == [(100, 80), (100 + 2 * pad, 80 + 2 * pad)]


def test_48x48_crops_skip_detection(monkeypatch):
    monkeypatch.setattr(faces, "detect_faces", lambda *a, **k: pytest.fail("48x48 inputs must skip detection"))
    analysis = analyze(EXAMPLES / "collins_48.png", FakePredictor())
    assert analysis.mode == "crop" and "already-cropped" in analysis.note
    assert analysis.as_dicts()[0]["box"] == [0, 0, 48, 48]


def test_real_model_classifies_each_face(seed_model_file):
    from fer_fastai.predict import load_predictor

    result = detect_emotions(TWO_FACES, load_predictor(seed_model_file))
    assert len(result) == 2 and all(abs(sum(f["emotions"].values()) - 1) < 1e-3 for f in result)


def test_crop_faces_clips_margins_at_the_border_and_matches_the_shared_resize():
    gray = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(80, 100).astype(np.uint8))
    crops = crop_faces(gray, [(0, 0, 100, 80), (90, 70, 10, 10)], margin=0.5)
    assert crops.shape == (2, 48, 48) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], to_model_size(gray))  # margin clipped to the image
    np.testing.assert_array_equal(crops[1], to_model_size(gray.crop((85, 65, 100, 80))))
    assert crop_faces(gray, []).shape == (0, 48, 48)


def test_top_k_most_probable_first():
    assert top_k(np.array([0.1, 0.5, 0.05, 0.2, 0.05, 0.05, 0.05]), LABELS, 2) == [("disgust", 0.5), ("happy", 0.2)]


# ---- inputs that are awkward but valid: same faces as the plain photo --------------------------

def exif_rotated(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; "rotate 90 CW to view" brings back the upright photo
    return encoded(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)


def half_transparent(image: Image.Image) -> bytes:
    rgba = np.array(image.convert("RGBA"))
    rgba[..., 3] = 200
    return encoded(Image.fromarray(rgba))


def sixteen_bit(image: Image.Image) -> bytes:
    return encoded(Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257))


@pytest.mark.parametrize("make", [exif_rotated, half_transparent, sixteen_bit], ids=lambda f: f.__name__)
def test_exif_rgba_and_16_bit_photos_find_the_same_faces(make, tmp_path):
    analysis = analyze(write(tmp_path / "photo", make(Image.open(TWO_FACES))), FakePredictor())
    assert analysis.image.mode == "RGB" and analysis.image.size == (720, 388)  # upright, drawable
    assert_two_faces_found([face.box for face in analysis.faces])


# ---- bad inputs: each gets its own one-line message ---------------------------------------------

def huge_header() -> bytes:
    return encoded(Image.new("1", (8000, 8000)))  # 64 MP, a few kB on disk


@pytest.mark.parametrize("name, data, message", [
    ("empty.jpg", b"", "the file is empty (0 bytes)"),
    ("notes.png", b"these are my notes, not an image\n" * 4, "not a readable image"),
    ("truncated.jpg", TWO_FACES.read_bytes()[:5000], "not a readable image"),
    ("huge.png", huge_header(), "over the 40,000,000-pixel limit"),
])
def test_bad_files_raise_a_clear_one_line_error(tmp_path, name, data, message):
    with pytest.raises(FerError, match=re.escape(message)) as error:
        analyze(write(tmp_path / name, data), FakePredictor())
    assert name in str(error.value) and "\n" not in str(error.value)


def test_empty_bytes_and_missing_files_are_clear_too(tmp_path):
    with pytest.raises(FerError, match="empty"):
        analyze(b"", FakePredictor())
    with pytest.raises(FerError, match="no such file"):
        analyze(tmp_path / "missing.png", FakePredictor())


# ---- drawing ------------------------------------------------------------------------------------

def test_draw_boxes_and_labels_in_face_colours():
    analysis = analyze(TWO_FACES, FakePredictor())
    drawn = np.asarray(draw_faces(analysis))
    assert drawn.shape == (388, 720, 3)
    for face, colour in zip(analysis.faces, FACE_COLOURS):
        x, y, w, h = face.box
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert tuple(drawn[y + h // 2, x]) == rgb  # left edge of the box
        assert tuple(drawn[y + h - 1, x + w // 2]) == rgb  # bottom edge
    assert not np.array_equal(drawn, np.asarray(analysis.image))


def test_draw_keeps_big_photos_small_and_blows_up_crops():
    big = analyze(Image.open(TWO_FACES).resize((2160, 1164)), FakePredictor())
    assert draw_faces(big, max_side=1024).size == (1024, 552)
    crop = draw_faces(analyze(EXAMPLES / "collins_48.png", FakePredictor()))
    assert crop.size == (288, 288)


def test_no_face_drawing_shows_the_image_without_a_label_or_box():
    analysis = analyze(Image.new("RGB", (400, 300), "white"), FakePredictor())
    assert np.array_equal(np.asarray(draw_faces(analysis)), np.asarray(analysis.image))


def test_faces_are_numbered_in_reading_order_rows_then_left_to_right():
    from fer_fastai.faces import reading_order

    rng = np.random.default_rng(0)
    grid = [(col * 100 + int(rng.integers(-8, 9)), row * 120 + int(rng.integers(-15, 16)), 60 + int(rng.integers(0, 20)), 70)
            for row in range(4) for col in range(5)]
    shuffled = [grid[i] for i in rng.permutation(len(grid))]
    assert reading_order(shuffled) == grid


def test_a_crowd_gets_numbers_that_never_overlap_and_follow_reading_order():
    from fer_fastai.faces import _overlap, label_layout

    from conftest import crowd_photo

    analysis = analyze(crowd_photo(), FakePredictor())
    assert len(analysis.faces) == 20
    tops = [face.box[1] for face in analysis.faces]
    assert all(tops[i * 5] < tops[i * 5 + 5] for i in range(3))  # row by row
    labels = label_layout(analysis, 1.0, analysis.image.size, 36)
    assert [label.text for label in labels] == [str(n) for n in range(1, 21)]  # too many for full answers
    assert not any(_overlap(a.rect, b.rect) for i, a in enumerate(labels) for b in labels[i + 1:])
    for face, label in zip(analysis.faces, labels):  # each number inside its own box
        x, y, w, h = face.box
        assert x <= label.rect[0] and label.rect[2] <= x + w and y <= label.rect[1] and label.rect[3] <= y + h


def test_two_faces_keep_their_full_answers():
    from fer_fastai.faces import label_layout

    analysis = analyze(EXAMPLES / "collins_and_hopper.jpg", FakePredictor())
    labels = label_layout(analysis, 1.0, analysis.image.size, 30)
    assert [label.text.split()[0] for label in labels] == ["1", "2"] and all(" " in label.text for label in labels)
