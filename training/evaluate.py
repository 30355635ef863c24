"""Measure a model artifact on an image folder and chart its per-class accuracy.

    python -m training.evaluate --model-dir models/default --data ../shared/data/dogs/valid

Prints top-1/top-5 of the model's answers (with the artifact's own test-time flip setting; also top-1 with
and without the flip), writes `evaluation-<folder>.json` and `per_class_accuracy-<folder>.png` into the
model dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from training.data import read_image_folder  # noqa: E402
from training.features import split_features  # noqa: E402
from training.model import label_from_folder, load_model  # noqa: E402
from training.train import evaluate  # noqa: E402

log = logging.getLogger("training.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="an image folder: <data>/<class folder>/*.jpg"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="reuse/keep features (default: none kept)"
    )
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Evaluate; raises ValueError when the data holds a class the model does not know."""
    torch.set_num_threads(args.threads)
    model, config, labels, preprocessing = load_model(args.model_dir)
    found = sorted(
        entry.name for entry in args.data.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    by_label = {label: index for index, label in enumerate(labels)}
    unknown = [folder for folder in found if label_from_folder(folder) not in by_label]
    if unknown:
        raise ValueError(f"{args.data}: classes the model does not know: {unknown[:5]}")
    # Index folders in the model's output order, whatever their prefixes.
    folders = tuple(sorted(found, key=lambda folder: by_label[label_from_folder(folder)]))
    split = read_image_folder(args.data, folders)
    targets = torch.tensor([by_label[label_from_folder(folders[target])] for target in split.targets])

    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or Path(scratch)
        features = split_features(
            split,
            model,
            preprocessing,
            cache_dir,
            batch_size=args.batch_size,
            threads=args.threads,
            use_onnx=args.onnx,
            write_cache=args.cache_dir is not None,
            description=args.data.name,
        )
    features.targets = targets
    metrics = evaluate(model.breed_head, features, len(labels), model.test_time_flip)
    present = torch.bincount(targets, minlength=len(labels)) > 0
    metrics["per_class_top1"] = {
        label: accuracy
        for label, accuracy, seen in zip(labels, metrics["per_class_top1"], present, strict=True)
        if seen
    }
    metrics.update(
        model_dir=str(args.model_dir),
        data=str(args.data),
        backbone=config["backbone"],
        test_time_flip=model.test_time_flip,
    )
    name = args.data.resolve().name
    (args.model_dir / f"evaluation-{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
    chart = args.model_dir / f"per_class_accuracy-{name}.png"
    plot_per_class(metrics, chart)
    print(
        f"{args.data}: {metrics['images']} images, top1={metrics['top1']:.4f} top5={metrics['top5']:.4f} "
        f"(test-time flip {'on' if model.test_time_flip else 'off'}; top1 single view "
        f"{metrics['top1_single_view']:.4f}, with flip {metrics['top1_flip_tta']:.4f}); chart: {chart}"
    )
    return metrics


def plot_per_class(metrics: dict, path: Path) -> None:
    """Horizontal bars of per-class top-1, worst class on top, overall top-1 as a line."""
    ranked = sorted(metrics["per_class_top1"].items(), key=lambda item: item[1])
    height = max(3.0, 0.14 * len(ranked))
    figure, axes = plt.subplots(figsize=(7, height))
    axes.barh(range(len(ranked)), [accuracy for _, accuracy in ranked], color="#4c72b0", height=0.8)
    axes.set_yticks(range(len(ranked)), [label.replace("_", " ") for label, _ in ranked], fontsize=5)
    axes.invert_yaxis()
    axes.axvline(metrics["top1"], color="#c44e52", linewidth=1, label=f"overall top-1 {metrics['top1']:.3f}")
    axes.set_xlim(0, 1)
    axes.set_xlabel("top-1 accuracy")
    axes.set_title(f"{metrics['backbone']} on {Path(metrics['data']).name}: per-class top-1", fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(parse_args(argv))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
