"""Check a photo and shrink it to what the model needs, with Pillow alone (the Lambda ships no numpy)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import pi_heif
from PIL import Image, UnidentifiedImageError

from chalicelib.coded_size import UnreadableHeader, UnsupportedCoding, coded_sizes
from chalicelib.errors import (
    EmptyImage,
    ImageTooElongated,
    ModelPayloadTooLarge,
    TooManyPixels,
    UnreadableImage,
    UnsupportedImage,
)
from chalicelib.settings import MAX_ASPECT_RATIO, MAX_ENDPOINT_BODY_BYTES, MAX_PIXELS_BY_FORMAT

# HEIC/HEIF (the iPhone camera's format) is read by libheif through pi-heif; Pillow reads AVIF itself. Only
# the main picture: its thumbnails, depth maps and auxiliary images would be parsed for nothing. libheif
# turns a HEIF picture by the file's own rotation and mirroring (irot, imir) and pi-heif then sets the EXIF
# orientation to 1, so the picture is never turned twice; Pillow reports AVIF's irot/imir as that orientation.
pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Pillow tries only these decoders; MPO is what Pillow calls the JPEGs that some cameras write with a preview.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF")
_SEND_ALLOWED = f"send one of {', '.join(ALLOWED_FORMATS)}"
_OPENED_FORMATS = (*ALLOWED_FORMATS, "MPO")
# What decoding a malformed file raises: Pillow's own decoders the first three, the bindings of libheif
# (pi-heif) and libavif (Pillow's AVIF plugin) also EOFError and RuntimeError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, RuntimeError)
# HEIF and AVIF files (ISO base media files) begin with this box, after its length.
_ISO_MEDIA_BOX = b"ftyp"
# HEVC codes a picture in whole blocks of up to 64 pixels a side, so its coded size may pass the shown one by
# less than this.
_CODING_BLOCK = 64
# EXIF orientations that turn the picture a quarter, so width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112
# How each EXIF orientation is undone (as ImageOps.exif_transpose does, which would copy the full picture).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow's resize first box-reduces by whole factors while the rest stays at least this many times the target.
_REDUCING_GAP = 3.0
# Pixels converted to RGB at a time: a few MB per strip.
_STRIP_PIXELS = 1_000_000
# Tried in turn when a JPEG at the requested quality is over the endpoint's body limit.
_FALLBACK_QUALITIES = (75, 50)


@dataclass(frozen=True)
class PreparedImage:
    """The JPEG to send to the model and what the caller learns about the photo."""

    jpeg: bytes
    width: int
    height: int
    bytes_received: int


def prepare_image(
    data: bytes,
    *,
    resize_size: int,
    max_pixels: int,
    quality: int,
    max_bytes: int = MAX_ENDPOINT_BODY_BYTES,
) -> PreparedImage:
    """Decode `data`, turn it upright, make it RGB and shrink its shorter side to `resize_size`, as a JPEG.

    What is sent is bounded whatever comes in: its shorter side is at most `resize_size`, its longer side at
    most MAX_ASPECT_RATIO times that, and its size at most `max_bytes` (a lower JPEG quality first, then a
    refusal). `width`/`height` are the photo's own, upright. Raises EmptyImage, UnreadableImage (not an
    image, or undecodable such as a truncated file), UnsupportedImage (a format outside ALLOWED_FORMATS),
    TooManyPixels (over `max_pixels` or its format's cap), ImageTooElongated and ModelPayloadTooLarge.
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
        image = reduced_rgb(image, resize_size)
    except _DECODE_ERRORS as error:
        raise UnreadableImage(f"the image cannot be decoded ({error}); {_SEND_ALLOWED}") from error
    if orientation in _TRANSPOSES:
        image = image.transpose(_TRANSPOSES[orientation])
    image = resize_for_model(image, resize_size)
    jpeg = _encoded(image, quality, max_bytes)
    if as_is and len(data) <= len(jpeg):
        # Re-encoding a small, already compressed photo at `quality` often makes it bigger (12 KB in, 22 KB
        # out for a 340x148 one) and always loses a little more; decoding it above still checked it whole.
        jpeg = data
    return PreparedImage(jpeg=jpeg, width=width, height=height, bytes_received=len(data))


def _encoded(image: Image.Image, quality: int, max_bytes: int) -> bytes:
    for attempt in (quality, *(lower for lower in _FALLBACK_QUALITIES if lower < quality)):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=attempt)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
    raise ModelPayloadTooLarge(
        f"shrunk to {image.width}x{image.height}, the image is still {buffer.tell()} bytes as a JPEG;"
        f" the model endpoint takes at most {max_bytes}"
    )


def open_checked(data: bytes, *, max_pixels: int) -> Image.Image:
    """The image's first frame, opened (headers read, pixels not yet decoded) and within `max_pixels`.

    Raises EmptyImage, UnreadableImage (not an image), UnsupportedImage (an image in another format),
    TooManyPixels or ImageTooElongated.
    """
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    coded = None
    if data[4:8] == _ISO_MEDIA_BOX:
        # Before opening it: pi-heif crashes the process on some malformed item descriptions.
        try:
            coded = coded_sizes(data)
        except UnsupportedCoding as error:
            raise UnsupportedImage(f"{error}; {_SEND_ALLOWED}") from error
        except UnreadableHeader as error:
            raise UnreadableImage(f"the HEIC/AVIF image cannot be read ({error}); {_SEND_ALLOWED}") from error
    try:
        with warnings.catch_warnings():
            # Between Pillow's two bomb limits it only warns; our own cap below is lower and answers instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise TooManyPixels(f"the image has too many pixels; the limit is {max_pixels:,}") from error
    except UnidentifiedImageError as error:
        if data[4:8] == _ISO_MEDIA_BOX:
            # libheif and libavif refuse a damaged file while reading its boxes, so Pillow cannot tell it
            # apart from another format; its first box tells it is one of these.
            raise UnreadableImage(
                "the HEIC/AVIF image cannot be read: it is damaged, truncated or holds no picture; "
                f"{_SEND_ALLOWED}"
            ) from error
        other_format = _other_format(data)
        if other_format:
            raise UnsupportedImage(f"{other_format} images are not accepted; {_SEND_ALLOWED}") from error
        raise UnreadableImage(f"cannot decode the image; {_SEND_ALLOWED}") from error
    except _DECODE_ERRORS as error:
        raise UnreadableImage(f"the image cannot be read ({error}); {_SEND_ALLOWED}") from error
    if image.format not in _OPENED_FORMATS:
        raise UnsupportedImage(f"{image.format} images are not accepted; {_SEND_ALLOWED}")
    width, height = image.size
    limit = min(max_pixels, MAX_PIXELS_BY_FORMAT.get(image.format, max_pixels))
    if width * height > limit:
        kind = "" if limit == max_pixels else f"{image.format} "
        raise TooManyPixels(f"the image is {width}x{height} pixels; the limit for {kind}images is {limit:,}")
    if width == 0 or height == 0:
        raise UnreadableImage("the image has no pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageTooElongated(
            f"the image is {width}x{height} pixels; its longer side may be at most {MAX_ASPECT_RATIO} times"
            " its shorter side"
        )
    if coded is not None:
        _check_coded_sizes(coded, width, height)
    return image


def _check_coded_sizes(sizes: list[tuple[int, int]], width: int, height: int) -> None:
    """Refuse a HEIF/AVIF file any of whose coded pictures is larger than the size its header shows (either
    way round: HEIF's is shown turned, AVIF's as stored). Raises TooManyPixels."""
    for coded in sizes:
        if not any(
            coded[0] < shown[0] + _CODING_BLOCK and coded[1] < shown[1] + _CODING_BLOCK
            for shown in ((width, height), (height, width))
        ):
            raise TooManyPixels(
                f"the image codes a {coded[0]}x{coded[1]} picture behind the {width}x{height} pixels it shows"
            )


def _other_format(data: bytes) -> str | None:
    """The name of the image format Pillow sees in `data` beyond ALLOWED_FORMATS (headers only), or None:
    a picture in a format we refuse is a 415, bytes that are no picture at all a 400, as on the endpoint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format
    except Exception:  # noqa: BLE001 - any plugin's failure to read a header means: not an image it knows
        return None


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


def model_size(size: tuple[int, int], resize_size: int) -> tuple[int, int]:
    """The size `resize_for_model` gives a picture of `size`: the shorter side shrunk to `resize_size`."""
    width, height = size
    shorter = min(width, height)
    if shorter <= resize_size:
        return size
    scale = resize_size / shorter
    return max(resize_size, round(width * scale)), max(resize_size, round(height * scale))


def resize_for_model(image: Image.Image, resize_size: int) -> Image.Image:
    """Shrink so the shorter side is `resize_size` (the model's own first resize); smaller ones stay as is."""
    size = model_size(image.size, resize_size)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)


def reduced_rgb(image: Image.Image, resize_size: int) -> Image.Image:
    """The decoded `image` as RGB, box-reduced by the whole factor that `resize_for_model` would reduce it by
    first (Pillow's reducing_gap), converted and reduced a strip at a time.

    Converting all at once costs several full-size copies (alpha compositing four: some 640 MB for 40 MP);
    strips keep the peak at the decoded picture plus one strip, and give the same pixels.
    """
    width, height = image.size
    target_width, target_height = model_size(image.size, resize_size)
    factor = (
        max(1, int(width / target_width / _REDUCING_GAP)),
        max(1, int(height / target_height / _REDUCING_GAP)),
    )
    if factor == (1, 1) and image.mode == "RGB":
        return image
    reduced = Image.new("RGB", (-(-width // factor[0]), -(-height // factor[1])))
    rows = max(1, _STRIP_PIXELS // width // factor[1]) * factor[1]
    for top in range(0, height, rows):
        strip = to_rgb(image.crop((0, top, width, min(height, top + rows))))
        if factor != (1, 1):
            strip = strip.reduce(factor)
        reduced.paste(strip, (0, top // factor[1]))
    return reduced


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except (*_DECODE_ERRORS, TypeError):
        return 1
