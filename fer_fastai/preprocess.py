"""Image → model input, the one implementation used by training, evaluation, export and the demo.

Contract (docs/design.md): any image → grayscale (ITU-R 601 luma, PIL "L") → [optional face crop] →
48x48 → float32 in [0, 1] → array [N, 1, 48, 48]. Mean/std normalisation lives inside the model.
This module needs only numpy and Pillow, so the ONNX predictor can use it without torch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FerError

IMAGE_SIZE = 48
INPUT_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)
INPUT_DESCRIPTION = (
    "float32 [batch, 1, 48, 48] in [0, 1]: grayscale (ITU-R 601 luma, PIL 'L'), "
    "face-cropped if a photo, resized to 48x48 (bilinear), pixel / 255; no mean/std (inside the model)"
)
# A decompression bomb is refused long before PIL's own (much larger) limit.
MAX_PIXELS = 40_000_000

ImageLike = Union[str, Path, bytes, np.ndarray, Image.Image]


def load_image(source: ImageLike) -> Image.Image:
    """Open a path, bytes, array or PIL image; a clear FerError if it is not a readable image."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _array_to_image(source)
    if not isinstance(source, (str, bytes, Path)):
        raise FerError(f"expected an image: a file path, bytes, a numpy array or a PIL image, got {type(source).__name__}")
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if source == b"" or (not isinstance(source, bytes) and Path(source).is_file() and Path(source).stat().st_size == 0):
        raise FerError(f"{name}: the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > MAX_PIXELS:
            raise FerError(f"{name}: image is {image.width}x{image.height}, over the {MAX_PIXELS:,}-pixel limit; resize it first")
        image.load()
    except FileNotFoundError:
        raise FerError(f"{name}: no such file") from None
    except Image.DecompressionBombError:  # PIL's own, far larger limit, checked inside Image.open
        raise FerError(f"{name}: image is over the {MAX_PIXELS:,}-pixel limit; resize it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise FerError(f"{name}: not a readable image ({unreadable_reason(error)})") from None
    return image


def unreadable_reason(error: Exception) -> str:
    """Why Pillow could not read a file, in words a user knows (no exception class names)."""
    text = str(error).lower()
    if isinstance(error, UnidentifiedImageError) or "cannot identify" in text:
        return "not a picture format this app reads: use JPEG, PNG, WebP, GIF, BMP or TIFF"
    if "truncated" in text or "broken data stream" in text or "premature end" in text:
        return "the file is cut short or damaged; save or download it again"
    return "the file is damaged or in an unsupported variant of its format; re-save it as JPEG or PNG"


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise FerError(f"expected an image array of shape HxW, HxWx3 or HxWx4, got {array.shape}")
    if 0 in array.shape[:2]:
        raise FerError(f"the image array is empty (shape {array.shape})")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise FerError(f"unsupported image array dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    return Image.fromarray(array)


def to_grayscale(image: Image.Image) -> Image.Image:
    """EXIF-upright, alpha flattened onto white, 16-bit scaled down, then ITU-R 601 luma ("L")."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L")


def to_model_size(gray: Image.Image) -> np.ndarray:
    """A grayscale image resized to 48x48 as uint8 [48, 48] (already-48x48 crops pass untouched)."""
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def image_to_pixels(source: ImageLike) -> np.ndarray:
    """Any image → uint8 [48, 48], the stored form of a FER2013 face."""
    return to_model_size(to_grayscale(load_image(source)))


def pixels_to_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 [N, 48, 48] (or one [48, 48]) → float32 [N, 1, 48, 48] in [0, 1]: the model input."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise FerError(f"expected pixels of shape [N, 48, 48], got {list(pixels.shape)}")
    return (pixels.astype(np.float32) / 255.0)[:, None, :, :]


def images_to_input(sources: Sequence[ImageLike]) -> np.ndarray:
    """Several images (paths, arrays, PIL) → float32 [N, 1, 48, 48] in [0, 1]."""
    return pixels_to_input(np.stack([image_to_pixels(source) for source in sources]))
