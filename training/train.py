"""Train the breed head on frozen EfficientNet-Lite backbones (one, or several side by side): one script
for SageMaker (one or several instances), torchrun, an EC2 box or a laptop.

    python -m training.train --train DATA/train --valid DATA/valid --model-dir models/default
    torchrun --nproc-per-node 2 training/train.py ...      # or SageMaker: SM_HOSTS / SM_CURRENT_HOST

The backbone's pooled features (and those of the mirrored images) are computed once, each rank doing its
share, and cached; the head starts from the ImageNet rows that fit each breed best and is trained
data-parallel on the cached features. `--batch-size` is the global batch: each of W ranks takes 1/W of it,
so W ranks take the same optimisation steps as one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (SageMaker runs `python train.py`): make `training` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from training.data import read_image_folder
from training.export import build_checked_graph
from training.features import SplitFeatures, split_features
from training.model import (
    BACKBONE_SEPARATOR,
    METRICS_FILE,
    BreedClassifier,
    backbone_names,
    combine_flips,
    init_breed_head_from_imagenet,
    save_model,
)
from training.preprocessing import BACKBONE_IMAGE_SIZES, Preprocessing

log = logging.getLogger("training.train")
DEFAULT_MASTER_PORT = 29531
# The three Lite backbones side by side with test-time flip: 92.4% valid top-1 on the dogs data (92.2% without
# the flip), where the best single one, lite2, reaches 90.5%; a full run takes about 9 minutes on 2 cores.
DEFAULT_BACKBONE = "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2"
SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")
CHECKPOINT_FILE = "checkpoint.pt"
PROJECT = Path(__file__).resolve().parents[1]


def backbone_spec(value: str) -> str:
    try:
        return BACKBONE_SEPARATOR.join(backbone_names(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_bool(value: str) -> bool:
    """A boolean hyperparameter: SageMaker passes every hyperparameter as `--name value`."""
    if value.strip().lower() in ("true", "1", "yes"):
        return True
    if value.strip().lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone",
        type=backbone_spec,
        default=DEFAULT_BACKBONE,
        help=f"one of {', '.join(sorted(BACKBONE_IMAGE_SIZES))}, or several comma-separated: an ensemble "
        "whose features one head reads (default: all three)",
    )
    parser.add_argument(
        "--test-time-flip",
        type=parse_bool,
        default=True,
        help="true/false: the model also looks at the mirrored image and averages (twice the inference "
        "cost; +0.2 point top-1 for the default ensemble, +0.9 for lite0 alone)",
    )
    parser.add_argument(
        "--crop-fraction",
        type=float,
        default=1.0,
        help="share of the resized image kept by the centre crop; 1 keeps it whole (the dogs photos are "
        "framed on the dog already: the standard 0.875 crop cost about 2 points of zero-shot top-1)",
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch, split across ranks")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument(
        "--feature-dropout",
        type=float,
        default=0.0,
        help="dropout on the pooled features (masks are drawn per rank: with dropout, W ranks match one rank "
        "in distribution rather than exactly)",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="also train on mirrored images (doubles the training features' cost)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="end this run after that many epochs, keeping the checkpoint (a time-boxed or preempted job); "
        "running again resumes",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch/ONNX threads per rank (0: cores / ranks)"
    )
    parser.add_argument("--workers", type=int, default=1, help="image-decoding processes per rank")
    parser.add_argument("--feature-batch-size", type=int, default=32)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="extract features with PyTorch")
    parser.add_argument(
        "--no-onnx-graph",
        dest="onnx_graph",
        action="store_false",
        help="do not write model.onnx, the checked graph the endpoint runs, beside the weights",
    )
    parser.add_argument("--model-name", default="dogbreeds")
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--train", type=Path, default=env("SM_CHANNEL_TRAIN"))
    parser.add_argument("--valid", type=Path, default=env("SM_CHANNEL_VALID"))
    parser.add_argument("--model-dir", type=Path, default=env("SM_MODEL_DIR", "runs/model"))
    parser.add_argument("--output-data-dir", type=Path, default=env("SM_OUTPUT_DATA_DIR"))
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=None, help="default /opt/ml/checkpoints if present"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache (default runs/cache or /tmp)"
    )
    parser.add_argument("--no-cache", dest="cache", action="store_false")
    parser.add_argument(
        "--master-addr", default=env("MASTER_ADDR"), help="override the SM_HOSTS master's address"
    )
    parser.add_argument("--master-port", type=int, default=int(env("MASTER_PORT", DEFAULT_MASTER_PORT)))
    args = parser.parse_args(argv)
    if args.train is None or args.valid is None:
        parser.error("--train and --valid are required (or SM_CHANNEL_TRAIN / SM_CHANNEL_VALID)")
    if args.checkpoint_dir is None and SAGEMAKER_CHECKPOINTS.is_dir():
        args.checkpoint_dir = SAGEMAKER_CHECKPOINTS
    if args.cache_dir is None and args.cache:
        # Inside the project runs/ is gitignored; elsewhere (a SageMaker container) use the temp dir.
        args.cache_dir = (
            PROJECT / "runs" / "cache"
            if (PROJECT / ".git").exists()
            else Path(tempfile.gettempdir()) / "dogbreeds-cache"
        )
    if not args.cache:
        args.cache_dir = None
    return args


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


def imagenet_match_probabilities(
    model: BreedClassifier, features: SplitFeatures, num_classes: int
) -> torch.Tensor:
    """(classes, 1000): each breed's mean ImageNet probability over its training images."""
    with torch.no_grad():
        probabilities = model.imagenet_probabilities(features.features)
    sums = torch.zeros(num_classes, probabilities.shape[1]).index_add_(0, features.targets, probabilities)
    counts = torch.bincount(features.targets, minlength=num_classes).clamp(min=1)
    return sums / counts[:, None]


def evaluate(
    head: torch.nn.Module, features: SplitFeatures, num_classes: int, test_time_flip: bool = False
) -> dict:
    """Top-1/top-5 and per-class top-1 of the model's answers: with `test_time_flip`, those of each image and
    its mirror combined, as the model combines them. When the mirrored features are there, also both ways:
    `top1_single_view` and `top1_flip_tta`."""
    with torch.no_grad():
        single_view = head(features.features)
        mirrored = None if features.flipped is None else head(features.flipped)
    if test_time_flip and mirrored is None:
        raise ValueError("test-time flip needs the mirrored images' features")
    logits = combine_flips(single_view, mirrored) if test_time_flip else single_view
    targets = features.targets
    top5 = logits.topk(min(5, num_classes), dim=1).indices
    correct = logits.argmax(1) == targets
    per_class = torch.zeros(num_classes).index_add_(0, targets, correct.float())
    per_class /= torch.bincount(targets, minlength=num_classes).clamp(min=1)
    metrics = {
        "top1": correct.float().mean().item(),
        "top5": (top5 == targets[:, None]).any(1).float().mean().item(),
        "per_class_top1": per_class.tolist(),
        "images": len(targets),
    }
    if mirrored is not None:
        metrics["top1_single_view"] = (single_view.argmax(1) == targets).float().mean().item()
        metrics["top1_flip_tta"] = (
            (combine_flips(single_view, mirrored).argmax(1) == targets).float().mean().item()
        )
    return metrics


def load_checkpoint(path: Path | None, signature: dict) -> dict | None:
    if path is None or not path.exists():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("signature") != signature:
        log.warning("ignoring %s: it belongs to another run configuration", path)
        return None
    return checkpoint


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)  # a job killed mid-write keeps the previous checkpoint


def train(args: argparse.Namespace) -> dict | None:
    started = time.monotonic()
    rank, world_size, local_rank = setup_distributed(args)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    threads = args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    is_writer = rank == 0

    train_split = read_image_folder(args.train)
    valid_split = read_image_folder(args.valid, train_split.folders)
    labels = train_split.labels
    num_classes = len(labels)
    model = BreedClassifier(args.backbone, num_classes, test_time_flip=args.test_time_flip)
    preprocessing = Preprocessing.for_backbones(backbone_names(args.backbone), args.crop_fraction)
    log.info(
        "rank %d/%d, %d threads, %s: %d classes, %d train / %d valid images",
        rank, world_size, threads, args.backbone, num_classes, len(train_split), len(valid_split),
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
    extraction_started = time.monotonic()
    train_features = split_features(
        train_split, flipped=args.flip, description="train features", **extraction
    )
    # Mirrored valid images measure what test-time flip averaging would add.
    valid_features = split_features(valid_split, flipped=True, description="valid features", **extraction)
    feature_seconds = time.monotonic() - extraction_started
    model.cpu()  # the head trains on `device`; the rest only matches breeds to ImageNet rows below

    init_breed_head_from_imagenet(model, imagenet_match_probabilities(model, train_features, num_classes))
    head = model.breed_head.to(device)
    inputs, targets = train_features.features, train_features.targets
    if args.flip:
        inputs, targets = torch.cat([inputs, train_features.flipped]), torch.cat([targets, targets])
    dataset = TensorDataset(inputs, targets)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=max(1, args.batch_size // world_size), sampler=sampler)
    ddp_head = DistributedDataParallel(head) if world_size > 1 else head
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs * len(loader)))

    signature = {
        "backbone": args.backbone,
        "labels": labels,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "world_size": world_size,
    }
    checkpoint_path = args.checkpoint_dir / CHECKPOINT_FILE if args.checkpoint_dir else None
    # Rank 0 decides and shares: on several hosts only its disk may hold the checkpoint.
    shared = [load_checkpoint(checkpoint_path, signature) if is_writer else None]
    if world_size > 1:
        dist.broadcast_object_list(shared, src=0)
    checkpoint, start_epoch = shared[0], 0
    if checkpoint is not None:
        head.load_state_dict(checkpoint["head"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch = checkpoint["epoch"] + 1
        log.info("resuming after epoch %d from %s", checkpoint["epoch"] + 1, checkpoint_path)

    dropout = torch.nn.Dropout(args.feature_dropout)
    history = checkpoint["history"] if checkpoint else []
    stop_epoch = (
        args.epochs
        if args.stop_after_epochs is None
        else min(args.epochs, start_epoch + args.stop_after_epochs)
    )
    for epoch in range(start_epoch, stop_epoch):
        epoch_started = time.monotonic()
        sampler.set_epoch(epoch)
        # Seeded per epoch and rank so a resumed run draws the same dropout masks as an uninterrupted one.
        torch.manual_seed(args.seed * 100_003 + epoch * 101 + rank)
        head.train()
        total_loss, seen = torch.zeros((), device=device), torch.zeros((), device=device)
        for batch_inputs, batch_targets in loader:
            batch_inputs, batch_targets = batch_inputs.to(device), batch_targets.to(device)
            logits = ddp_head(dropout(batch_inputs))
            loss = F.cross_entropy(logits, batch_targets, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach() * len(batch_targets)
            seen += len(batch_targets)
        if world_size > 1:
            sums = torch.stack([total_loss, seen])
            dist.all_reduce(sums)
            total_loss, seen = sums[0], sums[1]
        head.eval().cpu()
        valid = evaluate(head, valid_features, num_classes, args.test_time_flip)
        head.to(device)
        entry = {
            "epoch": epoch + 1,
            "train_loss": (total_loss / seen).item(),
            "valid_accuracy": valid["top1"],
            "valid_top5": valid["top5"],
            "seconds": time.monotonic() - epoch_started,
        }
        history.append(entry)
        if is_writer:
            # One line per epoch in the form SageMaker's tuner regexes read (`valid_accuracy=([0-9.]+);`).
            print(
                f"epoch={epoch + 1}; train_loss={entry['train_loss']:.4f}; "
                f"valid_accuracy={valid['top1']:.4f}; valid_top5={valid['top5']:.4f}; "
                f"epoch_seconds={entry['seconds']:.2f};",
                flush=True,
            )
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "signature": signature,
                        "epoch": epoch,
                        "head": head.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history,
                    },
                )

    head.eval().cpu()
    metrics = None
    if stop_epoch < args.epochs:
        log.info(
            "stopping after epoch %d of %d; run again to resume from %s",
            stop_epoch,
            args.epochs,
            checkpoint_path,
        )
    elif is_writer:
        train_metrics = evaluate(head, train_features, num_classes)
        train_metrics.pop("per_class_top1")
        valid_metrics = evaluate(head, valid_features, num_classes, args.test_time_flip)
        metrics = {
            "backbone": args.backbone,
            "labels": labels,
            "world_size": world_size,
            "threads_per_rank": threads,
            "training_seconds": time.monotonic() - started,
            "feature_seconds": feature_seconds,
            "hyperparameters": {
                key: value if isinstance(value, int | float | str | bool) else str(value)
                for key, value in vars(args).items()
            },
            "splits": {"train": train_metrics, "valid": valid_metrics},
            "per_class_valid_top1": dict(zip(labels, valid_metrics.pop("per_class_top1"), strict=True)),
            "history": history,
        }
        save_model(
            model,
            args.model_dir,
            labels,
            name=args.model_name,
            version=args.model_version,
            preprocessing=preprocessing,
        )
        write_metrics(metrics, [args.model_dir, args.output_data_dir])
        if args.onnx_graph:
            # Built once with the model, so no endpoint instance exports it when it starts.
            graph, gap = build_checked_graph(args.model_dir)
            print(f"onnx graph: {graph} (max probability gap to PyTorch {gap:.1e})", flush=True)
        print(
            f"final: valid_accuracy={valid_metrics['top1']:.4f}; valid_top5={valid_metrics['top5']:.4f}; "
            f"valid_single_view={valid_metrics['top1_single_view']:.4f}; "
            f"valid_flip_tta={valid_metrics['top1_flip_tta']:.4f}; "
            f"training_seconds={metrics['training_seconds']:.1f};",
            flush=True,
        )
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def write_metrics(metrics: dict, directories: list[Path | None]) -> None:
    for directory in filter(None, directories):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
