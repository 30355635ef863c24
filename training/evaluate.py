"""Measure a model artifact on an image folder: accuracy, per class, and how well its probabilities are
calibrated. This module owns the measures; training reports them with the same functions.

    python -m training.evaluate --model-dir models/default --data ../shared/data/dogs/valid

Prints top-1/top-5 of the model's answers (with the artifact's own test-time flip setting; also top-1 with
and without the flip), the expected calibration error (15 bins) of its top-1 probability without and with
the artifact's calibration, and what its confidence and dog thresholds do; writes `evaluation-<folder>.json`,
`per_class_accuracy-<folder>.png` and `reliability-<folder>.png` into --output-dir (default
runs/evaluation/<model folder's name>/), and into the model dir as well only with --write-model-dir (the
committed models carry their valid split's figures there: `make evaluate EVALUATE_FLAGS=--write-model-dir`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from classifier.graph import source_digest
from classifier.logs import run_command
from classifier.model import (
    DOG_THRESHOLD,
    BreedClassifier,
    breed_name,
    calibrate_dog_probability,
    calibrate_logits,
    combine_flips,
    label_from_folder,
    load_model,
)
from training import calibration_stats as cal
from training.data import ImageFolder, read_image_folder
from training.features import SplitFeatures, split_features

log = logging.getLogger("training.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="an image folder: <data>/<class folder>/*.jpg"
    )
    parser.add_argument(
        "--output-dir", type=Path, help="where the figures and charts go (default: runs/evaluation/<model>/)"
    )
    parser.add_argument(
        "--write-model-dir",
        action="store_true",
        help="also write them into the model dir, replacing its evaluation figures",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="reuse/keep features (default: none kept)"
    )
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    parser.add_argument(
        "--no-non-dogs",
        dest="non_dogs",
        action="store_false",
        help="skip the non-dog pictures (training.nondogs) that measure false dog answers",
    )
    args = parser.parse_args(argv)
    if args.output_dir is None:
        args.output_dir = Path("runs") / "evaluation" / args.model_dir.resolve().name
    return args


def breed_logits(
    head: torch.nn.Module, features: SplitFeatures, test_time_flip: bool = False
) -> torch.Tensor:
    """The uncalibrated breed logits the model would answer: with `test_time_flip`, of each image and its
    mirror combined."""
    with torch.no_grad():
        logits = head(features.features)
        if not test_time_flip:
            return logits
        if features.flipped is None:
            raise ValueError("test-time flip needs the mirrored images' features")
        return combine_flips(logits, head(features.flipped))


def dog_probabilities(model: BreedClassifier, features: SplitFeatures) -> torch.Tensor:
    """The uncalibrated dog probability the model would answer (both views' mean with test-time flip)."""
    with torch.no_grad():
        probability = model.heads(features.features)[1]
        if model.test_time_flip and features.flipped is not None:
            probability = (probability + model.heads(features.flipped)[1]) / 2
    return probability


def evaluate(
    head: torch.nn.Module, features: SplitFeatures, num_classes: int, test_time_flip: bool = False
) -> dict:
    """Top-1/top-5 and per-class top-1 of the model's answers: with `test_time_flip`, those of each image and
    its mirror combined, as the model combines them. When the mirrored features are there, also both ways:
    `top1_single_view` and `top1_flip_tta`."""
    logits = breed_logits(head, features, test_time_flip)
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
    if features.flipped is not None:
        for name, flip in (("top1_single_view", False), ("top1_flip_tta", True)):
            metrics[name] = (breed_logits(head, features, flip).argmax(1) == targets).float().mean().item()
    return metrics


def non_dog_probabilities(
    model: BreedClassifier, preprocessing, calibrated: bool = True, batch_size: int = 8
) -> dict[str, float]:
    """name -> the model's dog probability for each picture of training.nondogs."""
    from training.nondogs import non_dog_images

    images = non_dog_images()
    names = list(images)
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(names), batch_size):
            batch = torch.from_numpy(
                np.stack([preprocessing(images[name]) for name in names[start : start + batch_size]])
            )
            logits, dog = model.uncalibrated(batch)
            if calibrated:
                dog = model.calibrate(logits, dog)[1]
            probabilities += dog.tolist()
    return dict(zip(names, probabilities, strict=True))


def non_dog_metrics(model: BreedClassifier, preprocessing) -> dict:
    """The non-dog pictures the model calls dogs (at its dog threshold)."""
    threshold = model.calibration.get("dog_threshold", DOG_THRESHOLD)
    probabilities = non_dog_probabilities(model, preprocessing)
    return {
        "images": len(probabilities),
        "dog_threshold": threshold,
        "false_dogs": sorted(name for name, p in probabilities.items() if p >= threshold),
        "dog_probability": {name: round(p, 4) for name, p in probabilities.items()},
    }


def calibration_metrics(
    logits: torch.Tensor, targets: torch.Tensor, dog_probability: torch.Tensor, calibration: dict
) -> tuple[dict, dict]:
    """(figures, reliability tables) of the top-1 probability without and with `calibration`, and what its
    confidence and dog thresholds do on these (all dog) images."""
    tables, figures = {}, {}
    for name, calibrated in (("uncalibrated", {}), ("calibrated", calibration)):
        probabilities = calibrate_logits(logits, calibrated).softmax(1)
        confidence, correct = cal.top1(probabilities, targets)
        tables[name] = cal.reliability_table(confidence, correct)
        figures[name] = {
            "ece": cal.expected_calibration_error(confidence, correct),
            "nll": torch.nn.functional.nll_loss(probabilities.clamp(min=1e-12).log(), targets).item(),
            "mean_top1_probability": confidence.mean().item(),
            "mean_dog_probability": calibrate_dog_probability(dog_probability, calibrated).mean().item(),
        }
    figures["settings"] = dict(calibration)
    if "confidence_threshold" in calibration:
        confidence, correct = cal.top1(calibrate_logits(logits, calibration).softmax(1), targets)
        figures["confident"] = cal.coverage_and_precision(
            confidence, correct, calibration["confidence_threshold"]
        )
    if "dog_threshold" in calibration:
        dog = calibrate_dog_probability(dog_probability, calibration)
        figures["missed_dogs"] = (dog < calibration["dog_threshold"]).double().mean().item()
    return figures, tables


def run(args: argparse.Namespace) -> dict:
    """Evaluate; raises ValueError when the data holds a class the model does not know."""
    torch.set_num_threads(args.threads)
    model, config, labels, preprocessing = load_model(args.model_dir)
    split, targets = labelled_split(args.data, labels)
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
    calibration, tables = calibration_metrics(
        breed_logits(model.breed_head, features, model.test_time_flip),
        targets,
        dog_probabilities(model, features),
        model.calibration,
    )
    metrics["calibration"] = calibration
    if args.non_dogs:
        metrics["non_dogs"] = non_dog_metrics(model, preprocessing)
    present = torch.bincount(targets, minlength=len(labels)) > 0
    metrics["per_class_top1"] = {
        label: accuracy
        for label, accuracy, seen in zip(labels, metrics["per_class_top1"], present, strict=True)
        if seen
    }
    metrics.update(
        model_dir=str(args.model_dir),
        source_digest=source_digest(args.model_dir),
        data=str(args.data),
        backbone=config["backbone"],
        test_time_flip=model.test_time_flip,
    )
    name = args.data.resolve().name
    # The output dir last: the summary names its files.
    for folder in ([args.model_dir] if args.write_model_dir else []) + [args.output_dir]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"evaluation-{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
        plot_per_class(metrics, folder / f"per_class_accuracy-{name}.png")
        plot_reliability(
            tables, calibration, f"{config['backbone']} on {name}", folder / f"reliability-{name}.png"
        )
    print_summary(args.data, metrics, model, args.output_dir)
    return metrics


def labelled_split(data: Path, labels: list[str]) -> tuple[ImageFolder, torch.Tensor]:
    """The images of `data` and their targets in the model's output order, whatever the folders' prefixes.
    Raises ValueError when `data` holds a class the model does not know."""
    found = sorted(
        entry.name for entry in data.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    by_label = {label: index for index, label in enumerate(labels)}
    unknown = [folder for folder in found if label_from_folder(folder) not in by_label]
    if unknown:
        raise ValueError(f"{data}: classes the model does not know: {unknown[:5]}")
    folders = tuple(sorted(found, key=lambda folder: by_label[label_from_folder(folder)]))
    split = read_image_folder(data, folders)
    targets = torch.tensor([by_label[label_from_folder(folders[target])] for target in split.targets])
    return split, targets


def print_summary(data: Path, metrics: dict, model: BreedClassifier, output_dir: Path) -> None:
    calibration = metrics["calibration"]
    name = data.resolve().name
    print(
        f"{data}: {metrics['images']} images, top1={metrics['top1']:.4f} top5={metrics['top5']:.4f} "
        f"(test-time flip {'on' if model.test_time_flip else 'off'}; top1 single view "
        f"{metrics['top1_single_view']:.4f}, with flip {metrics['top1_flip_tta']:.4f}); "
        f"chart: {output_dir / f'per_class_accuracy-{name}.png'}"
    )
    print(
        f"ece_uncalibrated={calibration['uncalibrated']['ece']:.4f} "
        f"ece_calibrated={calibration['calibrated']['ece']:.4f} "
        f"(temperature {model.calibration.get('breed_temperature', 1.0):.3f}); "
        f"diagram: {output_dir / f'reliability-{name}.png'}"
    )
    if "confident" in calibration:
        print(
            f"confident: {calibration['confident']['coverage']:.4f} of the images at "
            f"{calibration['confident']['precision']:.4f} top-1 "
            f"(threshold {model.calibration['confidence_threshold']:.3f})"
        )
    if "non_dogs" in metrics:
        false_dogs = metrics["non_dogs"]["false_dogs"]
        print(f"non-dog pictures called dogs: {len(false_dogs)}/{metrics['non_dogs']['images']} {false_dogs}")
    if "missed_dogs" in calibration:
        print(
            f"missed_dogs={calibration['missed_dogs']:.4f} "
            f"(dog threshold {model.calibration['dog_threshold']:.3f})"
        )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(tables: dict, figures: dict, title: str, path: Path) -> None:
    """Accuracy against mean top-1 probability per bin, without and with calibration; the diagonal is a
    model whose probabilities mean what they say."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="#999999", linewidth=1, linestyle="--")
    for name, colour in (("uncalibrated", "#c44e52"), ("calibrated", "#4c72b0")):
        rows = tables[name]
        axes.plot(
            [row["confidence"] for row in rows],
            [row["accuracy"] for row in rows],
            marker="o",
            markersize=3,
            color=colour,
            label=f"{name}: ECE {figures[name]['ece']:.3f}",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean top-1 probability (15 bins)")
    axes.set_ylabel("top-1 accuracy")
    axes.set_title(f"{title}: reliability", fontsize=9)
    axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_per_class(metrics: dict, path: Path) -> None:
    """Horizontal bars of per-class top-1, worst class on top, overall top-1 as a line."""
    plt = _pyplot()
    ranked = sorted(metrics["per_class_top1"].items(), key=lambda item: item[1])
    height = max(3.0, 0.14 * len(ranked))
    figure, axes = plt.subplots(figsize=(7, height))
    axes.barh(range(len(ranked)), [accuracy for _, accuracy in ranked], color="#4c72b0", height=0.8)
    axes.set_yticks(range(len(ranked)), [breed_name(label) for label, _ in ranked], fontsize=5)
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
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
