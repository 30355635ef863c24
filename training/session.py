"""Where one training process stands: its rank among the others (torchrun, SageMaker's hosts or alone), its
device and threads, the model and the cached features of both splits."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from classifier.model import BreedClassifier, backbone_names
from classifier.preprocessing import BACKBONE_IMAGE_SIZES, Preprocessing
from training.data import read_image_folder
from training.features import SplitFeatures, split_features

log = logging.getLogger("training.train")


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, int]:
    """(rank, world size, local rank), joining the process group when there is more than one process.

    torchrun sets RANK/WORLD_SIZE/MASTER_ADDR; on SageMaker multi-instance jobs each host runs this script
    once and SM_HOSTS lists them, the first being the master.
    """
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        init_method = "env://"
    else:
        hosts = json.loads(os.environ.get("SM_HOSTS", "[]"))
        if len(hosts) < 2:
            return 0, 1, 0
        current = os.environ.get("SM_CURRENT_HOST", socket.gethostname())
        rank, world_size, local_rank = hosts.index(current), len(hosts), 0
        init_method = f"tcp://{args.master_addr or hosts[0]}:{args.master_port}"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if world_size > 1:
        dist.init_process_group(
            backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timedelta(minutes=30)
        )
    return rank, world_size, local_rank


@dataclass
class Run:
    """What setup gives the rest of training: where this rank stands, the model and the cached features."""

    rank: int
    world_size: int
    device: torch.device
    threads: int
    labels: list[str]
    model: BreedClassifier
    preprocessing: Preprocessing
    train_features: SplitFeatures
    valid_features: SplitFeatures
    feature_seconds: float

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def setup(args: argparse.Namespace) -> Run:
    """Join the other ranks, list the data, build the model and get the features (cached or computed)."""
    rank, world_size, local_rank = setup_distributed(args)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    threads = args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    train_split = read_image_folder(args.train)
    valid_split = read_image_folder(args.valid, train_split.folders)
    labels = train_split.labels
    names = backbone_names(args.backbone)
    model = BreedClassifier(
        args.backbone,
        len(labels),
        test_time_flip=args.test_time_flip,
        member_sizes=[BACKBONE_IMAGE_SIZES[name] for name in names] if args.native_sizes else None,
    )
    preprocessing = Preprocessing.for_backbones(names, args.crop_fraction)
    log.info(
        "rank %d/%d, %d threads, %s: %d classes, %d train / %d valid images",
        rank, world_size, threads, args.backbone, len(labels), len(train_split), len(valid_split),
    )  # fmt: skip
    extraction = {
        "model": model,
        "preprocessing": preprocessing,
        "cache_dir": args.cache_dir,
        "batch_size": args.feature_batch_size,
        "threads": threads,
        "workers": args.workers,
        "use_onnx": args.onnx,
        # One writer per host: the cache is per disk.
        "write_cache": int(os.environ.get("LOCAL_RANK", 0)) == 0,
        "device": device,
    }
    started = time.monotonic()
    train_features = split_features(
        train_split, flipped=args.flip, description="train features", **extraction
    )
    # Mirrored valid images measure what test-time flip averaging would add.
    valid_features = split_features(valid_split, flipped=True, description="valid features", **extraction)
    model.cpu()  # the head trains on `device`; the rest only matches breeds to ImageNet rows
    return Run(
        rank, world_size, device, threads, labels, model, preprocessing,
        train_features, valid_features, time.monotonic() - started,
    )  # fmt: skip
