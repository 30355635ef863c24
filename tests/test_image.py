"""chalicelib.image on images made by Pillow and the sample photos: what is accepted, refused and sent."""

from __future__ import annotations

import io
import math
import random
import zlib

import pytest
from conftest import DEFAULT_MODEL_RESIZE_SIZE as RESIZE
from conftest import LABRADOR
from pictures import as_a_phone_stores_it, claiming_size, encoded, grid_heic, heic, in_format, png, zero_png
from PIL import Image, ImageChops, ImageStat

from chalicelib.coded_size import coded_sizes
from chalicelib.errors import (
    EmptyImage,
    ImageTooElongated,
    ModelPayloadTooLarge,
    TooManyPixels,
    UnreadableImage,
    UnsupportedImage,
)
from chalicelib.image import model_size, prepare_image, reduced_rgb, resize_for_model, to_rgb
from chalicelib.settings import (
    JPEG_QUALITY,
    MAX_ASPECT_RATIO,
    MAX_ENDPOINT_BODY_BYTES,
    MAX_PIXELS,
    MAX_PIXELS_BY_FORMAT,
)


def prepare(data: bytes):
    return prepare_image(data, resize_size=RESIZE, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY)


def sent(data: bytes) -> Image.Image:
    """What the model would receive, decoded."""
    image = Image.open(io.BytesIO(prepare(data).jpeg))
    assert image.format == "JPEG" and image.mode == "RGB"
    return image


def mean_difference(one: Image.Image, other: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(one, other)).mean) / 3


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels but holds none."""
    return png(width, height, 8, 2, zlib.compress(b""))


def test_a_12_megapixel_photo_leaves_as_a_few_tens_of_kilobytes(samples):
    photo = Image.open(samples / LABRADOR)
    photo = photo.resize((4032, 3024), Image.Resampling.BICUBIC)
    data = encoded(photo, "JPEG", quality=95)
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (4032, 3024)
    assert prepared.bytes_received == len(data) > 1_000_000
    assert 5_000 < len(prepared.jpeg) < 60_000
    assert Image.open(io.BytesIO(prepared.jpeg)).size == (round(RESIZE * 4 / 3), RESIZE)


def test_small_photos_keep_their_size(samples):
    data = (samples / "people_with_dog.jpg").read_bytes()
    assert sent(data).size == Image.open(io.BytesIO(data)).size == (340, 148)


def test_a_small_jpeg_goes_as_it_came_rather_than_growing(samples):
    data = (samples / "people_with_dog.jpg").read_bytes()
    assert prepare(data).jpeg == data  # re-encoded at q90 it would be ~22 KB instead of 12 KB


def test_resize_keeps_the_aspect_and_the_shorter_side():
    assert resize_for_model(Image.new("RGB", (1000, 3000)), 256).size == (256, 768)
    assert resize_for_model(Image.new("RGB", (300, 200)), 256).size == (300, 200)


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF"])
def test_accepted_formats(format):
    image = Image.new("RGB", (640, 480), (200, 30, 40))
    picture = sent(in_format(image, format))
    assert picture.size == (round(RESIZE * 4 / 3), RESIZE)
    red, green, blue = picture.getpixel((RESIZE // 2, RESIZE // 2))
    assert red > 150 and green < 80 and blue < 90


@pytest.mark.parametrize("stored_width", [600, 200], ids=["resized", "small-enough-to-go-as-is"])
def test_exif_orientation_is_applied(stored_width):
    # Stored landscape, left half white, with EXIF "rotate 90 clockwise to view" (orientation 6). A small one
    # needs no resize and, saved at low quality, is smaller than its re-encoding: it must still be re-encoded
    # upright rather than go as it came.
    stored_height = stored_width // 2
    image = Image.new("RGB", (stored_width, stored_height), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, stored_height, stored_height))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(image, "JPEG", quality=5, exif=exif.tobytes())
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (stored_height, stored_width)
    upright = Image.open(io.BytesIO(prepared.jpeg))
    side = min(stored_height, RESIZE)
    assert upright.size == (side, 2 * side)
    # After a clockwise quarter turn, the stored left half is at the top.
    assert (
        upright.getpixel((side // 2, side // 2))[0] > 200
        and upright.getpixel((side // 2, 3 * side // 2))[0] < 50
    )


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
def test_a_phone_photo_is_sent_upright_as_its_rotation_says(samples, format):
    photo = Image.open(samples / LABRADOR).convert("RGB").resize((640, 448))
    prepared = prepare(as_a_phone_stores_it(photo, format))
    assert (prepared.width, prepared.height) == photo.size
    upright = Image.open(io.BytesIO(prepared.jpeg))
    assert upright.size == model_size(photo.size, RESIZE)
    expected = sent(encoded(photo, "JPEG", quality=95))
    turned_twice = expected.transpose(Image.Transpose.ROTATE_180)
    # Lossy encodings differ by a few levels; a picture turned once too often or not at all, by far more.
    assert mean_difference(upright, expected) < 6 < mean_difference(upright, turned_twice)


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (100, 100, 200, 200))
    picture = sent(encoded(image, "PNG"))
    assert min(picture.getpixel((10, 10))) > 245
    red, green, blue = picture.getpixel((150, 150))
    assert blue > 200 and red < 40


def test_cmyk_jpeg_becomes_rgb():
    image = Image.new("CMYK", (300, 300), (0, 255, 255, 0))  # pure red in CMYK
    data = encoded(image, "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    red, green, blue = sent(data).getpixel((150, 150))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_is_scaled_not_clipped():
    image = Image.new("I;16", (300, 300), 32768)  # mid-grey in 16 bits
    picture = sent(encoded(image, "PNG"))
    assert all(120 <= value <= 135 for value in picture.getpixel((150, 150)))


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (300, 300), colour) for colour in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    red, green, blue = sent(data).getpixel((150, 150))
    assert green > 150 and red < 60 and blue < 60


def test_palette_png_with_transparency():
    image = Image.new("P", (300, 300), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (100, 100, 200, 200))
    data = encoded(image, "PNG", transparency=0)
    picture = sent(data)
    assert min(picture.getpixel((10, 10))) > 245
    assert picture.getpixel((150, 150))[0] > 200


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", EmptyImage, "empty"),
        (b"hello, I am not a picture", UnreadableImage, "cannot decode the image; send one of JPEG"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
            UnreadableImage,
            "cannot decode",
        ),
        (encoded(Image.new("RGB", (50, 50)), "BMP"), UnsupportedImage, "BMP images are not accepted"),
        (encoded(Image.new("RGB", (50, 50)), "TIFF"), UnsupportedImage, "TIFF images are not accepted"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", UnreadableImage, "cannot"),
    ],
    ids=["empty", "text", "svg", "bmp", "tiff", "jpeg-magic-only"],
)
def test_refuses_what_is_not_an_accepted_image(data, error, message):
    # Not a picture at all is the endpoint's 400 (empty_image, unreadable_image); a picture in a format
    # outside the allowlist is a 415.
    with pytest.raises(error, match=message) as raised:
        prepare(data)
    assert type(raised.value) is error


def test_refuses_a_truncated_jpeg(samples):
    data = (samples / LABRADOR).read_bytes()
    with pytest.raises(UnreadableImage, match="cannot be decoded"):
        prepare(data[: len(data) // 2])


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
def test_refuses_a_truncated_or_damaged_heic_or_avif(samples, format):
    data = in_format(Image.open(samples / LABRADOR), format)
    for damaged in (data[: len(data) // 2], data[:100], data[:8] + b"\xff" * (len(data) - 8)):
        with pytest.raises(UnreadableImage, match="HEIC/AVIF image cannot be read"):
            prepare(damaged)


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
@pytest.mark.parametrize(
    ("width", "height", "error", "message"),
    [
        (9000, 9000, TooManyPixels, "9000x9000"),
        (6400, 100, ImageTooElongated, "6400x100"),
    ],
)
def test_refuses_a_heic_or_avif_by_its_header_before_decoding(format, width, height, error, message):
    # The file holds 64 x 64 pixels; only its header claims more. Decoding would fail or give 64 x 64, so
    # the refusal can only have come from the header.
    data = claiming_size(in_format(Image.new("RGB", (64, 64), (90, 60, 30)), format), width, height)
    with pytest.raises(error, match=message):
        prepare(data)


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
def test_refuses_a_heic_or_avif_that_codes_more_than_its_header_shows(format):
    # libheif and libavif would decode the whole coded picture, then crop or scale it to the header's size:
    # a few KB could hold a 16384 x 16384 picture behind a thumbnail's header.
    data = claiming_size(in_format(Image.new("RGB", (640, 448), (90, 60, 30)), format), 64, 64)
    with pytest.raises(TooManyPixels, match="codes a 640x448 picture behind the 64x64 pixels it shows"):
        prepare(data)


def test_refuses_a_grid_heic_whose_tiles_are_larger_than_the_picture_it_shows():
    # An iPhone's tiles (512 x 512) are smaller than its photo; here 256 x 256 tiles make a 64 x 64 picture.
    data = grid_heic(Image.new("RGB", (256, 256), (90, 60, 30)), tile=256, shown=(64, 64))
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    with pytest.raises(TooManyPixels, match="codes a 256x256 picture behind the 64x64 pixels it shows"):
        prepare(data)


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("size", [(640, 448), (701, 487), (3, 5)])
def test_the_coded_sizes_are_read_from_the_boxes(format, mode, size):
    data = in_format(Image.new(mode, size, (90, 60, 30, 128)[: len(mode)]), format)
    sizes = coded_sizes(data)
    # The main picture, and its alpha as a picture of its own; HEVC codes in whole blocks.
    assert len(sizes) == (2 if mode == "RGBA" else 1)
    for width, height in sizes:
        assert size[0] <= width < size[0] + 64 and size[1] <= height < size[1] + 64
        assert (width, height) == size or format == "HEIF"
    assert prepare(data).width == size[0]


def test_refuses_too_many_pixels_before_decoding():
    # 8000 x 8000 is under Pillow's own bomb limit but over ours; the header alone decides.
    with pytest.raises(TooManyPixels, match="8000x8000"):
        prepare(png_header_only(8000, 8000))


def test_refuses_a_decompression_bomb():
    bomb = zero_png(20_000, 20_000)
    assert len(bomb) < 200_000  # 400 megapixels in a small file
    with pytest.raises(TooManyPixels, match="limit"):
        prepare(bomb)


# --- what the image can cost: aspect ratio, bytes sent, memory ---


@pytest.mark.parametrize(
    "width, height",
    [(8000, 2), (65000, 1), (40000, 260), (1, 21), (2 * 21 + 1, 2)],
    ids=["8000x2", "65000x1", "40000x260", "1x21", "43x2"],
)
def test_refuses_elongated_images_however_small(width, height):
    data = zero_png(width, height)
    assert len(data) < 100_000
    with pytest.raises(ImageTooElongated, match=f"{width}x{height}"):
        prepare(data)


def test_refuses_an_elongated_jpeg_that_would_otherwise_go_as_it_came():
    data = encoded(Image.new("RGB", (300, 14), (90, 120, 30)), "JPEG")
    with pytest.raises(ImageTooElongated):
        prepare(data)


@pytest.mark.parametrize(
    "size", [(20, 1), (1, 20), (RESIZE * MAX_ASPECT_RATIO, RESIZE), (3 * 20 * RESIZE, 3 * RESIZE)]
)
def test_the_aspect_limit_itself_is_accepted_and_what_is_sent_is_bounded(size):
    prepared = prepare(zero_png(*size))
    picture = Image.open(io.BytesIO(prepared.jpeg))
    assert min(picture.size) <= RESIZE
    assert max(picture.size) <= MAX_ASPECT_RATIO * min(picture.size)
    assert len(prepared.jpeg) <= MAX_ENDPOINT_BODY_BYTES


def noise(size: tuple[int, int]) -> Image.Image:
    return Image.frombytes("RGB", size, random.Random(7).randbytes(size[0] * size[1] * 3))


def test_a_jpeg_over_the_byte_limit_goes_at_a_lower_quality_then_is_refused():
    data = encoded(noise((250, 250)), "PNG")
    full = len(prepare(data).jpeg)
    lowered = prepare_image(
        data, resize_size=RESIZE, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY, max_bytes=full - 1
    )
    assert len(lowered.jpeg) <= full - 1
    with pytest.raises(ModelPayloadTooLarge, match="250x250"):
        prepare_image(data, resize_size=RESIZE, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY, max_bytes=1000)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "RGB"])
def test_converting_in_strips_gives_the_pixels_of_converting_at_once(mode):
    # 3000 rows are several strips; the reduce factor is 3 on both sides for a 2400 x 3000 picture.
    picture = noise((60, 75)).resize((2400, 3000), Image.Resampling.BICUBIC)
    if mode in ("RGBA", "LA"):
        picture = picture.convert(mode[:-1] or "L") if mode == "LA" else picture
        picture.putalpha(Image.linear_gradient("L").resize(picture.size))
    elif mode == "P":
        picture = noise((60, 75)).quantize(32).resize((2400, 3000), Image.Resampling.NEAREST)
        picture.info["transparency"] = 3
    elif mode == "I;16":
        picture = picture.convert("L").convert("I").point(lambda value: value * 257).convert("I;16")
    expected = to_rgb(picture).resize(
        model_size(picture.size, RESIZE), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    actual = resize_for_model(reduced_rgb(picture, RESIZE), RESIZE)
    assert actual.size == expected.size
    difference = ImageChops.difference(actual, expected).getextrema()
    assert max(high for _low, high in difference) <= 2


def test_webp_has_a_lower_pixel_cap_than_the_rest():
    # libwebp decodes into a canvas of its own that Pillow then copies: about four times the memory per pixel.
    cap = MAX_PIXELS_BY_FORMAT["WEBP"]
    assert cap < MAX_PIXELS
    side = math.isqrt(cap) + 1
    data = encoded(Image.new("RGB", (side, side), (10, 200, 30)), "WEBP", quality=10, method=0)
    with pytest.raises(TooManyPixels, match="WEBP"):
        prepare(data)
    assert (
        prepare(encoded(Image.new("RGB", (side - 2, side - 2)), "WEBP", quality=10, method=0)).width
        == side - 2
    )


@pytest.mark.parametrize(
    ("format", "photo_pixels"),
    # The photos of recent iPhones (24 MP HEIC by default) and of 12 MP phone cameras.
    [("HEIF", 5712 * 4284), ("AVIF", 4000 * 3000)],
)
def test_heic_and_avif_have_their_own_pixel_caps(format, photo_pixels):
    # libheif and libavif decode into buffers of their own that Pillow then copies (bench/decode_memory.py).
    cap = MAX_PIXELS_BY_FORMAT[format]
    assert cap < MAX_PIXELS
    side = math.isqrt(cap) + 1
    small = in_format(Image.new("RGB", (64, 64), (10, 200, 30)), format)
    with pytest.raises(TooManyPixels, match=f"{side}x{side} pixels; the limit for {format} images"):
        prepare(claiming_size(small, side, side))
    assert photo_pixels <= cap


def test_a_heif_picture_in_another_coding_is_a_format_refused():
    # AVC, VVC, JPEG or uncompressed pictures in a HEIF file: their coded size cannot be told here.
    data = heic(Image.new("RGB", (64, 64), (90, 60, 30)))
    with pytest.raises(UnsupportedImage, match="HEIF pictures coded as avcC are not accepted"):
        prepare(data.replace(b"hvcC", b"avcC", 1))


def test_a_heic_whose_item_type_is_not_text_is_refused_before_pi_heif_reads_it():
    # pi-heif 1.0.0 turns item types into Python strings unchecked: this one, opened, crashed the process.
    exif = Image.Exif()
    exif[0x0112] = 1
    data = heic(Image.new("RGB", (64, 64), (90, 60, 30)), exif=exif.tobytes())
    assert data.index(b"Exif") < data.index(b"mdat")  # the first is the item's type, in the header
    with pytest.raises(UnreadableImage, match="not text"):
        prepare(data.replace(b"Exif", b"\xc2xif", 1))


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
def test_damaged_heic_and_avif_headers_get_a_clear_refusal(samples, format):
    # Bytes of the header (the boxes before the coded pictures) changed at random: whatever they then say,
    # the answer is one of the API's errors, never another exception.
    data = in_format(Image.open(samples / LABRADOR), format)
    header = data.find(b"mdat") if b"mdat" in data else 600
    generator = random.Random(20)
    outcomes = set()
    for _ in range(150):
        damaged = bytearray(data)
        for _ in range(generator.randint(1, 4)):
            damaged[generator.randrange(8, header)] = generator.randrange(256)
        try:
            prepare(bytes(damaged))
            outcomes.add("accepted")
        except (UnreadableImage, UnsupportedImage, TooManyPixels, ImageTooElongated) as error:
            outcomes.add(type(error).__name__)
    assert "UnreadableImage" in outcomes
