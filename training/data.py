"""Image folders in the ImageFolder / dogImages layout: `root/<class folder>/<image>`.

The class order is the sorted folder names, so `001.Affenpinscher` ... `133.Yorkshire_terrier` keep their
numeric order and any other naming still gives one stable order; the labels saved with the model follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier.model import label_from_folder
from classifier.preprocessing import Preprocessing, open_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class ImageFolder:
    """The images of one split and their class indices."""

    root: Path
    folders: tuple[str, ...]
    paths: tuple[Path, ...]
    targets: tuple[int, ...]

    @property
    def labels(self) -> list[str]:
        return [label_from_folder(folder) for folder in self.folders]

    def __len__(self) -> int:
        return len(self.paths)


def read_image_folder(root: str | Path, folders: tuple[str, ...] | None = None) -> ImageFolder:
    """List a split. Pass the training split's `folders` when reading another split so indices line up.

    Raises FileNotFoundError for a missing root, ValueError when it holds no class folder with images or when
    its folders are not among the given ones.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    found = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if folders is None:
        folders = tuple(found)
    elif unknown := sorted(set(found) - set(folders)):
        raise ValueError(f"{root}: class folders not in the training data: {unknown[:5]}")
    index = {folder: position for position, folder in enumerate(folders)}
    paths, targets = [], []
    for folder in found:
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                paths.append(path)
                targets.append(index[folder])
    if not paths:
        raise ValueError(f"{root} holds no images in class folders")
    return ImageFolder(root=root, folders=tuple(folders), paths=tuple(paths), targets=tuple(targets))


def load_image(path: Path) -> Image.Image:
    return open_image(path.read_bytes())


class PreprocessedImages(torch.utils.data.Dataset):
    """`(image, flipped image, target)` as float32 CHW arrays, for the given positions of a split.

    The flipped copy comes from the same decode: it is free augmentation for training and test-time averaging.
    """

    def __init__(self, split: ImageFolder, preprocessing: Preprocessing, positions: list[int] | None = None):
        self.split = split
        self.preprocessing = preprocessing
        self.positions = list(range(len(split))) if positions is None else list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> tuple[np.ndarray, np.ndarray, int]:
        position = self.positions[item]
        array = self.preprocessing(load_image(self.split.paths[position]))
        return array, np.ascontiguousarray(array[:, :, ::-1]), self.split.targets[position]
