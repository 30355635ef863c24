"""Check a photo and shrink it to what the model needs, with Pillow alone (the Lambda ships no numpy)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from chalicelib.errors import TooManyPixels, UnsupportedImage

# Pillow tries only these decoders; MPO is what Pillow calls the JPEGs that some cameras write with a preview.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
_OPENED_FORMATS = (*ALLOWED_FORMATS, "MPO")
# EXIF orientations that turn the picture a quarter, so width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class PreparedImage:
    """The JPEG to send to the model and what the caller learns about the photo."""

    jpeg: bytes
    width: int
    height: int
    bytes_received: int


def prepare_image(data: bytes, *, resize_size: int, max_pixels: int, quality: int) -> PreparedImage:
    """Decode `data`, turn it upright, make it RGB and shrink its shorter side to `resize_size`, as a JPEG.

    `width`/`height` are the photo's own, upright. Raises UnsupportedImage (empty, not an image, a format
    outside ALLOWED_FORMATS, or undecodable such as a truncated file) and TooManyPixels (over `max_pixels`).
    """
    image = open_checked(data, max_pixels=max_pixels)
    width, height = image.size
    orientation = _orientation(image)
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    # A JPEG the model can take as it is (colours, orientation and size) may go as it came.
    as_is = (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and orientation == 1
        and min(image.size) <= resize_size
    )
    try:
        if image.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the shorter side stays >= resize_size:
            # a 12 MP photo then costs a fraction of the memory and time.
            image.draft("RGB", (resize_size, resize_size))
        image.load()
        image = to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as error:
        raise UnsupportedImage(f"the image cannot be decoded: {error}") from error
    image = resize_for_model(image, resize_size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    jpeg = buffer.getvalue()
    if as_is and len(data) <= len(jpeg):
        # Re-encoding a small, already compressed photo at `quality` often makes it bigger (12 KB in, 22 KB
        # out for a 340x148 one) and always loses a little more; decoding it above still checked it whole.
        jpeg = data
    return PreparedImage(jpeg=jpeg, width=width, height=height, bytes_received=len(data))


def open_checked(data: bytes, *, max_pixels: int) -> Image.Image:
    """The image's first frame, opened (headers read, pixels not yet decoded) and within `max_pixels`.

    Raises UnsupportedImage or TooManyPixels.
    """
    if not data:
        raise UnsupportedImage("the image is empty")
    try:
        with warnings.catch_warnings():
            # Between Pillow's two bomb limits it only warns; our own cap below is lower and answers instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise TooManyPixels(f"the image has too many pixels; the limit is {max_pixels:,}") from error
    except UnidentifiedImageError as error:
        allowed = ", ".join(ALLOWED_FORMATS)
        raise UnsupportedImage(f"not an image in an accepted format ({allowed})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UnsupportedImage(f"the image cannot be read: {error}") from error
    if image.format not in _OPENED_FORMATS:
        raise UnsupportedImage(f"{image.format} images are not accepted")
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(f"the image is {width}x{height} pixels; the limit is {max_pixels:,} pixels")
    if width == 0 or height == 0:
        raise UnsupportedImage("the image has no pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels from any mode: alpha composited on white, 16-bit scaled (not clipped), CMYK converted."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if has_alpha or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # Pillow's own I;16 -> L conversion clips everything above 255 to white.
        return image.convert("I").point(lambda value: value * (1 / 257)).convert("L").convert("RGB")
    return image.convert("RGB")


def resize_for_model(image: Image.Image, resize_size: int) -> Image.Image:
    """Shrink so the shorter side is `resize_size` (the model's own first resize); smaller ones stay as is."""
    width, height = image.size
    shorter = min(width, height)
    if shorter <= resize_size:
        return image
    scale = resize_size / shorter
    size = (max(resize_size, round(width * scale)), max(resize_size, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1
