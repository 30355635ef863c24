"""The one preprocessing shared by training and inference."""

import io

import numpy as np
import pytest
from PIL import Image

from classifier.preprocessing import BACKBONE_IMAGE_SIZES, Preprocessing, UnreadableImageError, open_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("backbone", sorted(BACKBONE_IMAGE_SIZES))
def test_sizes_follow_the_backbone(backbone):
    preprocessing = Preprocessing.for_backbone(backbone)
    assert preprocessing.image_size == BACKBONE_IMAGE_SIZES[backbone]
    assert preprocessing.resize_size == round(preprocessing.image_size / 0.875)
    assert Preprocessing.from_dict(preprocessing.to_dict()) == preprocessing


def test_lite_normalisation_maps_pixels_to_minus_one_one():
    preprocessing = Preprocessing.for_backbone("efficientnet-lite0")
    black_and_white = Image.new("RGB", (300, 400), "white")
    black_and_white.paste((0, 0, 0), (0, 0, 300, 200))
    array = preprocessing(black_and_white)
    assert array.shape == (3, 224, 224)
    assert array.dtype == np.float32
    assert array.min() == pytest.approx(-1.0)
    assert array.max() == pytest.approx(1.0)


def test_resize_keeps_aspect_and_crops_the_centre():
    preprocessing = Preprocessing.for_backbone("efficientnet-lite0")
    # A wide image whose centre is red and whose far left and right are blue.
    wide = Image.new("RGB", (1000, 500), "blue")
    wide.paste((255, 0, 0), (250, 0, 750, 500))
    cropped = preprocessing.resize_and_crop(wide)
    assert cropped.size == (224, 224)
    assert cropped.getpixel((0, 112)) == (255, 0, 0)
    assert cropped.getpixel((223, 112)) == (255, 0, 0)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (2000, 60), (61, 1900), (260, 260), (240, 700)])
def test_only_the_crop_is_resized_with_the_pixels_of_resizing_everything(samples, size):
    # The reference: scale the whole picture so its shorter side is resize_size, then take the centre.
    photo = open_image((samples / "Labrador_retriever_06455.jpg").read_bytes()).resize(size)
    for preprocessing in (Preprocessing(260, 260), Preprocessing.for_backbone("efficientnet-lite0")):
        scale = preprocessing.resize_size / min(size)
        full = [max(preprocessing.image_size, round(side * scale)) for side in size]
        left, top = ((side - preprocessing.image_size) // 2 for side in full)
        reference = photo.resize(full, Image.Resampling.BILINEAR, reducing_gap=3.0).crop(
            (left, top, left + preprocessing.image_size, top + preprocessing.image_size)
        )
        cropped = preprocessing.resize_and_crop(photo)
        assert cropped.size == reference.size
        difference = np.abs(np.asarray(cropped, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
        # Rounding where Pillow's reducing step meets the crop's edge, at most a couple of levels.
        assert difference.max() <= 2
        assert difference.mean() < 0.05


def test_a_thin_strip_is_resized_to_the_square_alone():
    # Scaling up the short side of 8000 x 2 would make a 1,024,000 x 260 picture first (about 800 MB);
    # resizing only what the crop keeps costs the square.
    strip = Image.new("RGB", (8000, 2), (200, 30, 30))
    array = Preprocessing(260, 260)(strip)
    assert array.shape == (3, 260, 260)
    assert np.allclose(array[0], 200 / 255 * 2 - 1, atol=1e-6)


def test_a_sample_photo_is_decoded_as_rgb(samples):
    image = open_image((samples / "Labrador_retriever_06455.jpg").read_bytes())
    assert image.mode == "RGB"
    assert min(image.size) > 0


def test_exif_orientation_is_applied():
    upright = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels lie on their side
    decoded = open_image(encode(upright, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert open_image(encode(rgba, "PNG")).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))  # half of 65535
    decoded = open_image(encode(grey, "PNG"))
    assert decoded.getpixel((4, 4)) == (128, 128, 128)


def test_cmyk_and_palette_become_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    assert open_image(encode(cmyk, "JPEG")).getpixel((4, 4))[0] > 200
    palette = Image.new("RGB", (8, 8), (0, 0, 255)).convert("P")
    assert open_image(encode(palette, "GIF")).getpixel((4, 4)) == (0, 0, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert open_image(data).getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0" + b"\x00" * 50])
def test_garbage_is_refused(data):
    with pytest.raises(UnreadableImageError):
        open_image(data)


def test_truncated_jpeg_is_refused(samples):
    data = (samples / "Labrador_retriever_06455.jpg").read_bytes()
    with pytest.raises(UnreadableImageError):
        open_image(data[: len(data) // 2])
