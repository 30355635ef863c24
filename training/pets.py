"""Real pet photos for the dog/not-dog answer: `pets/cats/*.jpg` (nothing there is a dog) and
`pets/dogs/*.jpg` (dogs of unknown breed), such as the Kaggle "Dogs vs. Cats" snapshots described in
../shared/data/README.md.

The photos are split by a hash of their file name into a part to fit on and a part to report on: the same
photo is always on the same side, whatever else the folder holds, and the two never share a photo. The
figures measured on the reported part (`heldout_figures`) are those of the answer's `is_dog` and `confident`,
by the artifact's own thresholds (classifier.model.Thresholds).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from classifier.model import Thresholds
from training.data import ImageFolder, read_image_folder

CATS, DOGS = "cats", "dogs"
FOLDERS = (CATS, DOGS)  # class 0 is "not a dog", class 1 a dog
FIT, HELDOUT = "fit", "heldout"


def part_of(file_name: str) -> str:
    """FIT or HELDOUT, by the first byte of the name's SHA-256: about half each."""
    return FIT if hashlib.sha256(file_name.encode()).digest()[0] % 2 == 0 else HELDOUT


def read_pets(root: str | Path) -> ImageFolder:
    """The photos of `root/cats` and `root/dogs`; ValueError when it holds another folder or lacks one."""
    split = read_image_folder(root, FOLDERS)
    present = set(split.targets)
    if present != {0, 1}:
        missing = [folder for index, folder in enumerate(FOLDERS) if index not in present]
        raise ValueError(f"{root}: no photos in {missing}")
    return split


def part_mask(split: ImageFolder, part: str) -> torch.Tensor:
    """(N,) bool: which of the split's photos are in `part`."""
    return torch.tensor([part_of(path.name) == part for path in split.paths], dtype=torch.bool)


def heldout_figures(
    is_dog_photo: torch.Tensor,
    dog_probability: torch.Tensor,
    top_probability: torch.Tensor,
    thresholds: Thresholds,
    names: list[str],
) -> dict:
    """Cats called dogs (and those among them answered confidently), dogs called "not a dog", of these photos:
    `dog_probability` is the calibrated one, `top_probability` the top breed's calibrated probability."""
    is_dog = thresholds.is_dog(dog_probability)
    confident = thresholds.is_confident(top_probability, dog_probability)
    cats, dogs = ~is_dog_photo, is_dog_photo

    def named(mask: torch.Tensor) -> list[str]:
        return sorted(name for name, chosen in zip(names, mask.tolist(), strict=True) if chosen)

    return {
        "cats": int(cats.sum()),
        "dogs": int(dogs.sum()),
        "cats_called_dogs": int((cats & is_dog).sum()),
        "cats_called_dogs_share": float((cats & is_dog).sum() / cats.sum().clamp(min=1)),
        "cats_confident": int((cats & confident).sum()),
        "dogs_not_a_dog": int((dogs & ~is_dog).sum()),
        "dogs_not_a_dog_share": float((dogs & ~is_dog).sum() / dogs.sum().clamp(min=1)),
        "dogs_confident_share": float((dogs & confident).sum() / dogs.sum().clamp(min=1)),
        "thresholds": {
            "dog": thresholds.dog,
            "confident_dog": thresholds.confident_dog,
            "confidence": thresholds.confidence,
        },
        "cats_called_dogs_files": named(cats & is_dog),
        "cats_confident_files": named(cats & confident),
        "dogs_not_a_dog_files": named(dogs & ~is_dog),
    }


def render_table(results: list[dict]) -> str:
    """A Markdown table of results written by training.fit_dog: before and after, a row each."""
    rows = [
        '| model | dog answer | cats called dogs | cats answered confidently | dogs called "not a dog" |',
        "|---|---|---|---|---|",
    ]
    for result in results:
        model = f"{result['model']['name']} {result['model']['version']}"
        for when in ("before", "after"):
            f = result[when]
            rows.append(
                f"| {model}, {when} | {f['dog_answer']} | "
                f"{f['cats_called_dogs']}/{f['cats']} ({f['cats_called_dogs_share']:.1%}) | "
                f"{f['cats_confident']}/{f['cats']} | "
                f"{f['dogs_not_a_dog']}/{f['dogs']} ({f['dogs_not_a_dog_share']:.1%}) |"
            )
    return "\n".join(rows)
