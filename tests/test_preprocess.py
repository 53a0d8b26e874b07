import io

import numpy as np
import pytest
from PIL import Image

from fer_fastai.errors import FerError
from fer_fastai.preprocess import image_to_pixels, images_to_input, pixels_to_input


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def test_output_contract_float32_n_1_48_48_in_unit_range():
    batch = images_to_input([Image.new("L", (48, 48), 255), Image.new("RGB", (200, 100), (0, 0, 0))])
    assert batch.dtype == np.float32 and batch.shape == (2, 1, 48, 48)
    assert batch[0].min() == 1.0 and batch[1].max() == 0.0


def test_48x48_gray_crops_pass_through_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    assert np.array_equal(image_to_pixels(Image.fromarray(pixels)), pixels)
    assert np.allclose(pixels_to_input(pixels)[0, 0], pixels / 255.0)


def test_rgb_uses_itu_r_601_luma_like_pil_L():
    rgb = Image.new("RGB", (48, 48), (200, 100, 50))
    expected = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    assert abs(int(image_to_pixels(rgb)[0, 0]) - expected) <= 1


def test_rgba_is_flattened_onto_white():
    transparent = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    assert image_to_pixels(transparent).min() == 255


def test_16_bit_images_are_scaled_not_clipped():
    deep = Image.fromarray(np.full((48, 48), 32768, dtype=np.uint16))
    assert abs(int(image_to_pixels(png_bytes(deep))[0, 0]) - 128) <= 1


def test_exif_rotation_is_applied():
    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[:, :20] = 255  # left half white
    image = Image.fromarray(wide)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view": upright image is 20 wide, 40 tall
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    upright = image_to_pixels(buffer.getvalue())
    assert upright[:24].mean() > 200 and upright[24:].mean() < 50  # white half now on top


@pytest.mark.parametrize("payload, message", [
    (b"", "the file is empty"),
    (b"hello, not an image", "not a readable image .not a picture format this app reads"),
    (png_bytes(Image.new("L", (48, 48)))[:40], "not a readable image .not a picture format"),
    (png_bytes(Image.effect_noise((64, 64), 60).convert("L"))[:-300], "not a readable image .the file is cut short"),
])
def test_bad_bytes_are_clear_errors(payload, message):
    with pytest.raises(FerError, match=message) as caught:
        image_to_pixels(payload)
    assert "Error" not in str(caught.value)  # plain words, no Python exception names


def test_an_image_over_pillows_own_bomb_limit_gets_the_project_message(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses > 2x this inside Image.open
    with pytest.raises(FerError, match="over the 40,000,000-pixel limit; resize it first"):
        image_to_pixels(png_bytes(Image.new("L", (48, 48))))


def test_empty_file_says_so(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(FerError, match="empty.png: the file is empty"):
        image_to_pixels(tmp_path / "empty.png")


def test_missing_file(tmp_path):
    with pytest.raises(FerError, match="no such file"):
        image_to_pixels(tmp_path / "nope.png")


def test_wrong_pixel_shape():
    with pytest.raises(FerError, match=r"expected pixels of shape \[N, 48, 48\]"):
        pixels_to_input(np.zeros((2, 32, 32), dtype=np.uint8))
