"""Calibrate a trained artifact and store its thresholds, without changing its weights.

    python -m training.calibrate --model-dir models/default --train ../shared/data/dogs/train

  - breeds: k heads trained by the artifact's own recipe (metrics.json's hyperparameters) on k-1 folds of
    train answer the fold they did not see; the temperature and the confidence threshold (for the stated
    precision) are fitted on those out-of-fold answers (see training.crossval);
  - dog probability: a log-odds map fitted on the train dogs and the non-dog pictures of training.nondogs,
    the two weighted equally; the dog threshold keeps `--dog-recall` of the train dogs. An artifact with a
    dog head keeps the dog settings training.fit_dog fitted with it.
The settings go into config.json's `calibration` (the model applies them in forward, so the endpoint's
answers are calibrated), the figures into metrics.json's `calibration`. `valid` is not used: measure the
result with `python -m training.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from classifier.graph import cache_dir
from classifier.logs import run_command
from classifier.model import (
    CONFIG_FILE,
    DOG_SETTINGS,
    METRICS_FILE,
    calibrate_dog_probability,
    load_model,
)
from training import calibration_stats as cal
from training.calibration_stats import CONFIDENT_PRECISION
from training.crossval import cross_validate
from training.data import ImageFolder, read_image_folder
from training.evaluate import non_dog_probabilities
from training.features import split_features
from training.head import Recipe

log = logging.getLogger("training.calibrate")
# Share of the train dogs the dog threshold still calls dogs. The non-dog pictures are few and far from
# the dogs (all but one below 0.01 once calibrated), so they cannot place the threshold: the dogs do, missing
# about as many as the uncalibrated threshold of 0.5 did.
DOG_RECALL = 0.997


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True, help="the split the artifact was trained on")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--confident-precision", type=float, default=CONFIDENT_PRECISION)
    parser.add_argument("--dog-recall", type=float, default=DOG_RECALL)
    parser.add_argument(
        "--train-sample",
        type=int,
        default=None,
        help="use a random N of the train images (seeded), when computing the whole split's features is "
        "too slow; the folds' heads then train on less than the artifact's did",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="the feature cache (default: DOGBREEDS_CACHE/features, else ~/.cache/dogbreeds/features)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    args = parser.parse_args(argv)
    if args.cache_dir is None:
        args.cache_dir = cache_dir() / "features"
    return args


def sample(split: ImageFolder, count: int | None, seed: int = 0) -> ImageFolder:
    """A seeded random `count` of the split's images, in the split's order."""
    if count is None or count >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    keep = sorted(order.tolist())
    return ImageFolder(
        split.root, split.folders, tuple(split.paths[i] for i in keep), tuple(split.targets[i] for i in keep)
    )


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, config, labels, preprocessing = load_model(args.model_dir)
    metrics_path = args.model_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text())
    recipe = Recipe.from_mapping(metrics["hyperparameters"])
    split = read_image_folder(args.train)
    if split.labels != labels:
        raise ValueError(f"{args.train}: its breeds are not the model's")
    split = sample(split, args.train_sample)
    features = split_features(
        split,
        model,
        preprocessing,
        args.cache_dir,
        flipped=recipe.flip,
        threads=args.threads,
        use_onnx=args.onnx,
        description="train features",
    )
    folds = cross_validate(model, features, recipe, args.folds, model.test_time_flip)
    settings = folds.calibration(args.confident_precision)
    if args.train_sample:
        settings["fitted_on"] += f" (a random {len(split)} of its images)"

    non_dogs = non_dog_probabilities(model, preprocessing, calibrated=False)
    names = list(non_dogs)
    others = torch.tensor([non_dogs[name] for name in names])
    settings.update(dog_settings(model, features, others, args.dog_recall))
    calibrated_others = calibrate_dog_probability(others, settings)
    report = calibration_report(folds, settings, dict(zip(names, calibrated_others.tolist(), strict=True)))
    temperature = settings["breed_temperature"]

    config["calibration"] = settings
    (args.model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    metrics["calibration"] = report
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"folds: top1_mean={report['folds']['top1_mean']:.4f} top1_std={report['folds']['top1_std']:.4f}; "
        f"out-of-fold ECE {report['out_of_fold_ece_uncalibrated']:.4f} -> "
        f"{report['out_of_fold_ece_calibrated']:.4f} "
        f"(temperature {temperature:.4f}); confidence threshold {settings['confidence_threshold']:.4f}: "
        f"{report['out_of_fold_confident']['coverage']:.4f} of answers at "
        f"{report['out_of_fold_confident']['precision']:.4f}; dog threshold {settings['dog_threshold']:.4f}, "
        f"false dogs {len(report['non_dogs']['false_dogs'])}/{len(names)}"
    )
    return report


def dog_settings(model, features, others: torch.Tensor, dog_recall: float) -> dict:
    """The dog probability's calibration: fitted here on train dogs against the non-dog pictures (weighted
    equally), or a dog head's own, which training.fit_dog fitted with it on real photos and which stay."""
    if model.dog_head is not None:
        return {key: value for key, value in model.calibration.items() if key in DOG_SETTINGS}
    with torch.no_grad():
        dogs = model.heads(features.features)[1]
    scale, shift = cal.fit_platt(
        torch.cat([dogs, others]), torch.cat([torch.ones(len(dogs)), torch.zeros(len(others))]).bool()
    )
    settings = {"dog_scale": scale, "dog_shift": shift}
    calibrated_dogs = calibrate_dog_probability(dogs, settings)
    settings["dog_threshold"] = cal.dog_threshold_for_recall(calibrated_dogs, dog_recall)
    settings["dog_recall"] = dog_recall
    return settings


def calibration_report(folds, settings: dict, non_dogs: dict[str, float]) -> dict:
    """metrics.json's `calibration`: the folds, out-of-fold ECE before and after, the confident answers, and
    the non-dog pictures' calibrated dog probabilities."""
    temperature = settings["breed_temperature"]
    report = {"folds": folds.summary()}
    for name, logits in (("uncalibrated", folds.logits), ("calibrated", folds.logits / temperature)):
        confidence, correct = cal.top1(logits.softmax(1), folds.targets)
        report[f"out_of_fold_ece_{name}"] = cal.expected_calibration_error(confidence, correct)
    confidence, correct = cal.top1((folds.logits / temperature).softmax(1), folds.targets)
    report["out_of_fold_confident"] = cal.coverage_and_precision(
        confidence, correct, settings["confidence_threshold"]
    )
    report["non_dogs"] = {
        "images": len(non_dogs),
        "false_dogs": [name for name, p in non_dogs.items() if p >= settings["dog_threshold"]],
        "dog_probability": {name: round(p, 4) for name, p in non_dogs.items()},
    }
    report["settings"] = settings
    return report


def main(argv: list[str] | None = None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
