"""Pictures that are not dogs, for measuring the dog/not-dog answer: the sample images that scikit-image and
matplotlib ship (photos of people, a cat, a cup, a rocket, a motorcycle, the moon, microscopy, textures,
text and graphics) and a few that this module draws (flat colours, noise, gradients). Nothing is downloaded:
a package that is not installed simply contributes nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

# Per package: the folder inside it and the files taken. Left out: images of a few pixels (a 14x25 GIF,
# a 10x15 TIFF), a second view of the same motorcycle, and the sample data that is not a picture.
PACKAGED = {
    "skimage": (
        "data",
        (
            "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_RGB.png",
            "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png",
            "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
            "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png",
        ),
    ),
    "matplotlib": (
        "mpl-data/sample_data", ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"),
    ),
}  # fmt: skip
DRAWN_SIZE = 320


def packaged_images() -> dict[str, Path]:
    """name -> path of each packaged sample picture whose package is installed."""
    found = {}
    for package, (folder, names) in PACKAGED.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations))) / folder
        for name in names:
            if (root / name).is_file():
                found[f"{package}/{name}"] = root / name
    return found


def drawn_images() -> dict[str, Image.Image]:
    """Pictures with nothing in them: flat colours, seeded noise, gradients."""
    size = DRAWN_SIZE
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradient = np.stack(
        [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128)]
    )
    arrays = {
        "drawn/black": np.zeros((size, size, 3)),
        "drawn/white": np.full((size, size, 3), 255),
        "drawn/grey": np.full((size, size, 3), 128),
        "drawn/green": np.broadcast_to(np.array([40, 160, 60]), (size, size, 3)),
        "drawn/noise": rng.integers(0, 256, (size, size, 3)),
        "drawn/blurred-noise": np.kron(
            rng.integers(0, 256, (size // 16, size // 16, 3)), np.ones((16, 16, 1))
        ),
        "drawn/gradient": gradient.transpose(1, 2, 0),
    }
    return {name: Image.fromarray(np.asarray(array, dtype=np.uint8)) for name, array in arrays.items()}


def non_dog_images() -> dict[str, Image.Image]:
    """name -> RGB picture: the packaged ones (those installed) and the drawn ones."""
    images = {}
    for name, path in packaged_images().items():
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P"):
                # Transparent areas over white, as a browser would show them.
                background = Image.new("RGB", image.size, "white")
                background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
                images[name] = background
            else:
                images[name] = image.convert("RGB")
    images.update(drawn_images())
    return images
