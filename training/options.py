"""The options of `python -m training.train` (and `python -m training.crossval`, which trains the same way):
hyperparameters as SageMaker passes them (`--name value`), the data channels and where things are written."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from classifier.graph import cache_dir
from classifier.model import BACKBONE_SEPARATOR, backbone_names
from classifier.preprocessing import BACKBONE_IMAGE_SIZES
from training.calibration_stats import CONFIDENT_PRECISION

DEFAULT_MASTER_PORT = 29531
# The three Lite backbones side by side with test-time flip: the most accurate recipe measured on the dogs
# data (see docs/models.md); one backbone alone is the fast model.
DEFAULT_BACKBONE = "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2"
SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")


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


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """training.train's options (training.crossval takes the same); `description` heads --help."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
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
        "--native-sizes",
        type=parse_bool,
        default=False,
        help="true/false: each backbone of an ensemble sees the input resized inside the model to its own "
        "size (lite0 224, lite1 240) instead of all at the largest member's (see bench.levers)",
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
        default=CONFIDENT_PRECISION,
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
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache (default: DOGBREEDS_CACHE/features, else ~/.cache/dogbreeds/features)",
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
        args.cache_dir = cache_dir() / "features"
    if not args.cache:
        args.cache_dir = None
    return args
