"""Pooled backbone features of a split, computed once and cached on disk.

With the backbone frozen, every epoch would push the same pixels through the same network: computing the
1280-d features once (and those of the mirrored image, as augmentation and for test-time averaging) turns an
epoch into a few matrix products. The backbone runs in ONNX Runtime when it is installed (about 3x faster than
eager PyTorch on CPU here), else in PyTorch. Each rank computes its share of the images; the shares are
gathered so every rank ends with the whole split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from classifier.graph import INPUT_NAME, export_onnx
from classifier.model import BreedClassifier
from classifier.preprocessing import Preprocessing
from classifier.runtime import cpu_session
from training.data import ImageFolder, PreprocessedImages

log = logging.getLogger(__name__)
FEATURES_OUTPUT = "features"


@dataclass
class SplitFeatures:
    features: torch.Tensor  # (N, 1280 per backbone)
    flipped: torch.Tensor | None  # the same, of the horizontally mirrored images, when asked for
    targets: torch.Tensor  # (N,)


class FeatureExtractor:
    """Images (N, 3, H, W) float32 -> pooled features (N, 1280 per backbone), by ONNX Runtime or PyTorch."""

    def __init__(
        self,
        model: BreedClassifier,
        image_size: int,
        threads: int,
        onnx_dir: Path | None,
        use_onnx: bool = True,
        device: torch.device | None = None,
    ):
        self.device = device or torch.device("cpu")
        self.model = model.eval().to(self.device)
        self.image_size = image_size
        self.session = None
        # ONNX Runtime's CPU provider is the fast path on CPUs; on a GPU PyTorch is.
        if use_onnx and onnx_dir is not None and self.device.type == "cpu":
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                log.info("onnxruntime is not installed: extracting features with PyTorch")
            else:
                self.session = cpu_session(self._export(onnx_dir), threads)

    def _export(self, onnx_dir: Path) -> Path:
        sizes = "" if self.model.member_sizes is None else "-" + "-".join(map(str, self.model.member_sizes))
        path = onnx_dir / f"{self.model.backbone_name}{sizes}-{self.image_size}px-features.onnx"
        if not path.exists():
            export_onnx(_PooledFeatures(self.model), path, self.image_size, output_names=(FEATURES_OUTPUT,))
        return path

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run([FEATURES_OUTPUT], {INPUT_NAME: images})[0]
        with torch.inference_mode():
            return self.model.features(torch.from_numpy(images).to(self.device)).cpu().numpy()


class _PooledFeatures(torch.nn.Module):
    def __init__(self, model: BreedClassifier):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


def cache_key(
    split: ImageFolder,
    backbone: str,
    preprocessing: Preprocessing,
    flipped: bool,
    member_sizes: tuple[int, ...] | None = None,
) -> str:
    """Changes whenever the images, the class folders, the backbone, its members' sizes or the preprocessing
    change."""
    described = [backbone, preprocessing.to_dict(), split.folders, flipped]
    # Only when set, so that the keys of features cached before member sizes existed stay the same.
    if member_sizes is not None:
        described.append(list(member_sizes))
    digest = hashlib.sha256(json.dumps(described).encode())
    for path, target in zip(split.paths, split.targets, strict=True):
        digest.update(f"{path.relative_to(split.root)}\0{path.stat().st_size}\0{target}\n".encode())
    return digest.hexdigest()[:20]


def split_features(
    split: ImageFolder,
    model: BreedClassifier,
    preprocessing: Preprocessing,
    cache_dir: Path | None,
    flipped: bool = True,
    batch_size: int = 32,
    threads: int = 1,
    workers: int = 1,
    use_onnx: bool = True,
    write_cache: bool = True,
    description: str = "features",
    device: torch.device | None = None,
) -> SplitFeatures:
    """The split's features: from the cache when every rank has them, else computed, each rank its share."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    cache_file = None
    if cache_dir is not None:
        key = cache_key(split, model.backbone_name, preprocessing, flipped, model.member_sizes)
        cache_file = cache_dir / f"{model.backbone_name}-{key}.pt"
    cached = cache_file is not None and cache_file.exists()
    if distributed:
        # Hosts have their own disks: use the cache only if every rank can.
        everyone = torch.tensor([int(cached)], device=_collective_device())
        dist.all_reduce(everyone, op=dist.ReduceOp.MIN)
        cached = bool(everyone.item())
    if cached:
        stored = torch.load(cache_file, weights_only=True)
        log.info("%s: %d cached features from %s", description, len(stored["targets"]), cache_file)
        return SplitFeatures(stored["features"], stored.get("flipped"), stored["targets"])

    extractor = FeatureExtractor(
        model, preprocessing.image_size, threads, onnx_dir=cache_dir, use_onnx=use_onnx, device=device
    )
    positions = list(range(rank, len(split), world_size))
    local = _extract(extractor, split, preprocessing, positions, batch_size, workers, flipped, description)
    features = _gather(local, len(split), world_size) if distributed else local
    result = SplitFeatures(features[:, 0], features[:, 1] if flipped else None, torch.tensor(split.targets))
    if cache_file is not None and write_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.partial")
        stored = {"features": result.features, "targets": result.targets}
        if flipped:
            stored["flipped"] = result.flipped
        torch.save(stored, partial)
        partial.replace(cache_file)
    return result


def _extract(
    extractor: FeatureExtractor,
    split: ImageFolder,
    preprocessing: Preprocessing,
    positions: list[int],
    batch_size: int,
    workers: int,
    flipped: bool,
    description: str,
) -> torch.Tensor:
    """(len(positions), 1 or 2, feature_dim): features of each image (and of its mirror)."""
    loader = torch.utils.data.DataLoader(
        PreprocessedImages(split, preprocessing, positions),
        batch_size=batch_size,
        num_workers=workers,
        # Decoding in a worker overlaps with the backbone; the fork start method avoids re-importing torch.
        multiprocessing_context="fork" if workers else None,
    )
    out = torch.empty(len(positions), 2 if flipped else 1, extractor.model.feature_dim)
    done = 0
    progress = tqdm(total=len(positions), desc=description, unit="img", disable=not sys.stderr.isatty())
    for images, mirrored, _ in loader:
        count = len(images)
        views = np.concatenate([images.numpy(), mirrored.numpy()]) if flipped else images.numpy()
        features = torch.from_numpy(extractor(views))
        out[done : done + count, 0] = features[:count]
        if flipped:
            out[done : done + count, 1] = features[count:]
        done += count
        progress.update(count)
        if progress.disable and (done == len(positions) or done // batch_size % 50 == 0):
            log.info("%s: %d/%d images", description, done, len(positions))
    progress.close()
    return out


def _gather(local: torch.Tensor, total: int, world_size: int) -> torch.Tensor:
    """Reassemble rank shares (rank r holds positions r, r + world, ...) into split order."""
    share = -(-total // world_size)
    padded = torch.zeros(share, *local.shape[1:])
    padded[: len(local)] = local
    padded = padded.to(_collective_device())
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    gathered = [tensor.cpu() for tensor in gathered]
    # Row i of rank r is position i * world + r: interleave the shares back.
    return torch.stack(gathered, dim=1).reshape(share * world_size, *local.shape[1:])[:total]


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU ones.
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
