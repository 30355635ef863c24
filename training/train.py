"""Train the breed head on frozen EfficientNet-Lite backbones (one, or several side by side): one script
for SageMaker (one or several instances), torchrun, an EC2 box or a laptop.

    python -m training.train --train DATA/train --valid DATA/valid --model-dir models/default
    torchrun --nproc-per-node 2 -m training.train ...   # or SageMaker: SM_HOSTS / SM_CURRENT_HOST

The backbone's pooled features (and those of the mirrored images) are computed once, each rank doing its
share, and cached; the head starts from the ImageNet rows that fit each breed best and is trained
data-parallel on the cached features. `--batch-size` is the global batch: each of W ranks takes 1/W of it,
so W ranks take the same optimisation steps as one.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from classifier.checked_graph import build_checked_graph
from classifier.logs import configure_cli_logging
from classifier.model import METRICS_FILE, save_model
from training import crossval
from training.evaluate import evaluate
from training.head import Recipe, Trainer, class_weights, initial_head, loader_for, training_set
from training.options import parse_args
from training.session import Run, setup

log = logging.getLogger("training.train")
CHECKPOINT_FILE = "checkpoint.pt"


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
    folds_summary = calibrate(args, run)
    metrics = measure(args, run, history, started)
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
    print_summary(metrics, run)
    return metrics


def calibrate(args: argparse.Namespace, run: Run) -> dict | None:
    """Set the model's calibration from heads trained the same way on the other folds of train; returns the
    folds' summary, or None when the classes are too small for two folds."""
    folds_wanted = crossval.usable_folds(run.train_features.targets, args.calibration_folds)
    if folds_wanted < args.calibration_folds:
        log.warning(
            "the smallest class has %d train images: %d calibration folds instead of %d",
            folds_wanted,
            folds_wanted,
            args.calibration_folds,
        )
    if folds_wanted < 2:
        return None
    recipe = Recipe.from_mapping(args)
    folds = crossval.cross_validate(run.model, run.train_features, recipe, folds_wanted, args.test_time_flip)
    run.model.calibration = folds.calibration(args.confident_precision)
    return folds.summary()


def measure(args: argparse.Namespace, run: Run, history: list, started: float) -> dict:
    """metrics.json: the trained head on both splits, the run's settings and its history."""
    num_classes = len(run.labels)
    train_metrics = evaluate(run.model.breed_head, run.train_features, num_classes)
    train_metrics.pop("per_class_top1")
    valid_metrics = evaluate(run.model.breed_head, run.valid_features, num_classes, args.test_time_flip)
    return {
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


def print_summary(metrics: dict, run: Run) -> None:
    """The lines SageMaker's metric definitions read from the log (training/jobs/training_job.py)."""
    valid = metrics["splits"]["valid"]
    print(
        f"final: valid_accuracy={valid['top1']:.4f}; valid_top5={valid['top5']:.4f}; "
        f"valid_single_view={valid['top1_single_view']:.4f}; valid_flip_tta={valid['top1_flip_tta']:.4f}; "
        f"training_seconds={metrics['training_seconds']:.1f};",
        flush=True,
    )
    if folds := metrics.get("cross_validation"):
        print(
            f"folds: top1_mean={folds['top1_mean']:.4f}; top1_std={folds['top1_std']:.4f}; "
            f"breed_temperature={run.model.calibration['breed_temperature']:.4f}; "
            f"confidence_threshold={run.model.calibration['confidence_threshold']:.4f};",
            flush=True,
        )


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
    configure_cli_logging()
    train(parse_args(argv))


if __name__ == "__main__":
    main()
