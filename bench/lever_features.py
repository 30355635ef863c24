"""Pooled features for the cost levers of the default model (issue 21), every variant from one decode.

Each photo is decoded once at the default's input (260 px, whole image) and every backbone sees it both at
260 px and at its own native size, resized inside the graph as the model would do it from one input; and so
does its mirror image (test-time flip on valid; a second view of each photo to train heads on, on train). The
train split goes in a seeded order stratified by breed and is saved as it goes, so that a run cut short still
leaves a random, breed-balanced subset on which every lever is compared on the same images (paired).

    python -m bench.lever_features --train DATA/train --valid DATA/valid --out runs/levers
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from classifier.graph import INPUT_NAME, export_onnx
from classifier.logs import configure_cli_logging
from classifier.model import load_backbone, resize_inside
from classifier.preprocessing import BACKBONE_IMAGE_SIZES, Preprocessing
from classifier.runtime import cpu_session
from training.crossval import fold_of_each
from training.data import PreprocessedImages, read_image_folder

log = logging.getLogger("bench.lever_features")
INPUT_SIZE = max(BACKBONE_IMAGE_SIZES.values())


def variants() -> list[tuple[str, int]]:
    """(backbone, size): each backbone at the shared input's size and, where it differs, at its own."""
    out = []
    for backbone, native in sorted(BACKBONE_IMAGE_SIZES.items()):
        out.append((backbone, INPUT_SIZE))
        if native != INPUT_SIZE:
            out.append((backbone, native))
    return out


def variant_name(backbone: str, size: int) -> str:
    return f"{backbone}@{size}"


class AllVariants(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.members = torch.nn.ModuleDict(
            {name.replace("-", "_"): load_backbone(name) for name in sorted(BACKBONE_IMAGE_SIZES)}
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for backbone, size in variants():
            member = self.members[backbone.replace("-", "_")]
            out.append(member._avg_pooling(member.extract_features(resize_inside(images, size))).flatten(1))
        return tuple(out)


def extract(split, positions, session, names, out_file: Path, mirrored: bool, save_every: int) -> None:
    loader = torch.utils.data.DataLoader(
        PreprocessedImages(split, Preprocessing(INPUT_SIZE, INPUT_SIZE), positions),
        batch_size=16,
        num_workers=1,
        multiprocessing_context="fork",
    )
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    flipped: dict[str, list[np.ndarray]] = {name: [] for name in names}
    done, started = 0, time.monotonic()

    def save():
        stored = {
            "positions": torch.tensor(positions[:done]),
            "targets": torch.tensor([split.targets[p] for p in positions[:done]]),
            "split_size": len(split),
            "features": {n: torch.from_numpy(np.concatenate(chunks[n])) for n in names},
        }
        if mirrored:
            stored["flipped"] = {n: torch.from_numpy(np.concatenate(flipped[n])) for n in names}
        partial = out_file.with_suffix(f".{os.getpid()}.partial")
        torch.save(stored, partial)
        partial.replace(out_file)

    for images, mirror, _ in loader:
        count = len(images)
        views = np.concatenate([images.numpy(), mirror.numpy()]) if mirrored else images.numpy()
        results = session.run(names, {INPUT_NAME: views})
        for name, features in zip(names, results, strict=True):
            chunks[name].append(features[:count])
            if mirrored:
                flipped[name].append(features[count:])
        done += count
        if done % save_every < count or done == len(positions):
            save()
            seconds = time.monotonic() - started
            log.info("%s: %d/%d images, %.1f s", out_file.name, done, len(positions), seconds)


def main() -> None:
    configure_cli_logging()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--valid", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/levers"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--splits", nargs="+", choices=("valid", "train"), default=["valid", "train"], help="which to extract"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    train = read_image_folder(args.train)
    valid = read_image_folder(args.valid, train.folders)
    names = [variant_name(*v) for v in variants()]
    graph = args.out / "all-variants.onnx"
    if not graph.exists():
        export_onnx(AllVariants(), graph, INPUT_SIZE, output_names=tuple(names))
    session = cpu_session(graph, args.threads)
    if "valid" in args.splits:
        extract(valid, list(range(len(valid))), session, names, args.out / "valid.pt", True, 512)
    if "train" not in args.splits:
        return
    # Round-robin over the breeds in a seeded random order: any prefix is a breed-balanced random subset.
    targets = torch.tensor(train.targets)
    rank = fold_of_each(targets, len(targets), seed=1)  # position within its breed's shuffled order
    order = sorted(range(len(targets)), key=lambda p: (int(rank[p]), int(targets[p])))
    extract(train, order, session, names, args.out / "train.pt", True, 1024)


if __name__ == "__main__":
    main()
