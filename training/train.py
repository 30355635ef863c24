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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (SageMaker runs `python train.py`): make `training` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training import crossval
from training.data import read_image_folder
from training.evaluate import evaluate
from training.export import build_checked_graph
from training.features import SplitFeatures, split_features
from training.head import Recipe, Trainer, class_weights, initial_head, loader_for, training_set
from training.model import BACKBONE_SEPARATOR, METRICS_FILE, BreedClassifier, backbone_names, save_model
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
    parser.add_argument(
        "--class-balanced",
        type=parse_bool,
        default=False,
        help="true/false: weight the loss by inverse class frequency",
    )
    parser.add_argument(
        "--mixup", type=float, default=0.0, help="Beta(a, a) mixup of the cached features; 0 (default) is off"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibration-folds",
        type=int,
        default=5,
        help="fit the calibration on out-of-fold answers of this many heads trained the same way on the "
        "other folds of train (also reported: the folds' top-1 mean and spread); 0 or 1 leaves it out",
    )
    parser.add_argument(
        "--confident-precision",
        type=float,
        default=crossval.CONFIDENT_PRECISION,
        help="the answers at or above the stored confidence threshold are right this often out of fold",
    )
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
    model = BreedClassifier(args.backbone, len(labels), test_time_flip=args.test_time_flip)
    preprocessing = Preprocessing.for_backbones(backbone_names(args.backbone), args.crop_fraction)
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


def checkpoint_signature(args: argparse.Namespace, run: Run) -> dict:
    """What a checkpoint must match to be resumed."""
    signature = {
        "backbone": args.backbone,
        "labels": run.labels,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "world_size": run.world_size,
    }
    # Only when set, so checkpoints of the plain recipe written before these options existed still resume.
    for name in ("class_balanced", "mixup"):
        if getattr(args, name):
            signature[name] = getattr(args, name)
    return signature


def resume(args: argparse.Namespace, run: Run, head: torch.nn.Module, trainer: Trainer) -> tuple[int, list]:
    """(first epoch to run, history so far), from the checkpoint when there is one for this configuration."""
    path = args.checkpoint_dir / CHECKPOINT_FILE if args.checkpoint_dir else None
    # Rank 0 decides and shares: on several hosts only its disk may hold the checkpoint.
    shared = [load_checkpoint(path, checkpoint_signature(args, run)) if run.is_writer else None]
    if run.world_size > 1:
        dist.broadcast_object_list(shared, src=0)
    checkpoint = shared[0]
    if checkpoint is None:
        return 0, []
    head.load_state_dict(checkpoint["head"])
    trainer.load_state_dict(checkpoint)
    log.info("resuming after epoch %d from %s", checkpoint["epoch"] + 1, path)
    return checkpoint["epoch"] + 1, checkpoint["history"]


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


def run_epoch(
    args: argparse.Namespace, run: Run, head: torch.nn.Module, trainer: Trainer, epoch: int
) -> dict:
    """Train one epoch and measure it on valid: the history entry (printed by the writer)."""
    started = time.monotonic()
    total_loss, seen = trainer.one_epoch(epoch, run.rank)
    if run.world_size > 1:
        sums = torch.stack([total_loss, seen])
        dist.all_reduce(sums)
        total_loss, seen = sums[0], sums[1]
    head.cpu()
    valid = evaluate(head, run.valid_features, len(run.labels), args.test_time_flip)
    head.to(run.device)
    entry = {
        "epoch": epoch + 1,
        "train_loss": (total_loss / seen).item(),
        "valid_accuracy": valid["top1"],
        "valid_top5": valid["top5"],
        "seconds": time.monotonic() - started,
    }
    if run.is_writer:
        # One line per epoch in the form SageMaker's tuner regexes read (`valid_accuracy=([0-9.]+);`).
        print(
            f"epoch={epoch + 1}; train_loss={entry['train_loss']:.4f}; "
            f"valid_accuracy={valid['top1']:.4f}; valid_top5={valid['top5']:.4f}; "
            f"epoch_seconds={entry['seconds']:.2f};",
            flush=True,
        )
    return entry


def finish(args: argparse.Namespace, run: Run, history: list, started: float) -> dict:
    """Calibrate on out-of-fold answers, measure, and write the artifact and its metrics (the writer only)."""
    recipe = Recipe.from_mapping(args)
    num_classes = len(run.labels)
    folds_wanted = crossval.usable_folds(run.train_features.targets, args.calibration_folds)
    if folds_wanted < args.calibration_folds:
        log.warning(
            "the smallest class has %d train images: %d calibration folds instead of %d",
            folds_wanted,
            folds_wanted,
            args.calibration_folds,
        )
    if folds_wanted > 1:
        folds = crossval.cross_validate(
            run.model, run.train_features, recipe, folds_wanted, args.test_time_flip
        )
        run.model.calibration = folds.calibration(args.confident_precision)
        folds_summary = folds.summary()
    else:
        folds_summary = None
    train_metrics = evaluate(run.model.breed_head, run.train_features, num_classes)
    train_metrics.pop("per_class_top1")
    valid_metrics = evaluate(run.model.breed_head, run.valid_features, num_classes, args.test_time_flip)
    metrics = {
        "backbone": args.backbone,
        "labels": run.labels,
        "world_size": run.world_size,
        "threads_per_rank": run.threads,
        "training_seconds": time.monotonic() - started,
        "feature_seconds": run.feature_seconds,
        "hyperparameters": {
            key: value if isinstance(value, int | float | str | bool) else str(value)
            for key, value in vars(args).items()
        },
        "splits": {"train": train_metrics, "valid": valid_metrics},
        "per_class_valid_top1": dict(zip(run.labels, valid_metrics.pop("per_class_top1"), strict=True)),
        "history": history,
    }
    if folds_summary is not None:
        metrics["cross_validation"] = folds_summary
    save_model(
        run.model,
        args.model_dir,
        run.labels,
        name=args.model_name,
        version=args.model_version,
        preprocessing=run.preprocessing,
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
    if folds_summary is not None:
        print(
            f"folds: top1_mean={folds_summary['top1_mean']:.4f}; top1_std={folds_summary['top1_std']:.4f}; "
            f"breed_temperature={run.model.calibration['breed_temperature']:.4f}; "
            f"confidence_threshold={run.model.calibration['confidence_threshold']:.4f};",
            flush=True,
        )
    return metrics


def train(args: argparse.Namespace) -> dict | None:
    started = time.monotonic()
    run = setup(args)
    recipe = Recipe.from_mapping(args)
    head = initial_head(run.model, run.train_features.features, run.train_features.targets).to(run.device)
    weights = class_weights(run.train_features.targets, len(run.labels)) if args.class_balanced else None
    loader = loader_for(training_set(run.train_features, recipe), recipe, run.world_size, run.rank)
    network = DistributedDataParallel(head) if run.world_size > 1 else head
    trainer = Trainer(head, loader, recipe, weights, run.device, network)
    start_epoch, history = resume(args, run, head, trainer)
    stop_epoch = (
        args.epochs
        if args.stop_after_epochs is None
        else min(args.epochs, start_epoch + args.stop_after_epochs)
    )
    checkpoint_path = args.checkpoint_dir / CHECKPOINT_FILE if args.checkpoint_dir else None
    for epoch in range(start_epoch, stop_epoch):
        history.append(run_epoch(args, run, head, trainer, epoch))
        if run.is_writer and checkpoint_path is not None:
            state = {"signature": checkpoint_signature(args, run), "epoch": epoch, "history": history}
            save_checkpoint(checkpoint_path, {**state, "head": head.state_dict(), **trainer.state_dict()})
    head.eval().cpu()
    metrics = None
    if stop_epoch < args.epochs:
        log.info(
            "stopping after epoch %d of %d; run again to resume from %s",
            stop_epoch,
            args.epochs,
            checkpoint_path,
        )
    elif run.is_writer:
        metrics = finish(args, run, history, started)
    if run.world_size > 1:
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
