"""k-fold cross-validation of the head's recipe over the cached train features.

Each of k heads trains by the recipe on k-1 folds (stratified by breed) and answers the fold it did not see:
the folds' top-1 says how well the recipe does, with its spread, without looking at `valid`, and the
out-of-fold answers are what the calibration is fitted on (answers of a head on its own training images
would be over-confident).

    python -m training.crossval --train DATA/train --valid DATA/valid [training.train's options] --folds 5

prints each fold's top-1, their mean and spread, and the calibration the out-of-fold answers give.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from dataclasses import dataclass

import torch

from classifier.logs import configure_cli_logging
from classifier.model import BreedClassifier
from training import calibration_stats as cal
from training.calibration_stats import CONFIDENT_PRECISION
from training.evaluate import breed_logits
from training.features import SplitFeatures
from training.head import Recipe, fit_head
from training.options import parse_args
from training.session import setup

log = logging.getLogger("training.crossval")


def fold_of_each(targets: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold number per image, each breed's images dealt round-robin in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    assignment = torch.empty(len(targets), dtype=torch.long)
    for label in targets.unique():
        members = (targets == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        assignment[members] = torch.arange(len(members)) % folds
    return assignment


def subset(features: SplitFeatures, keep: torch.Tensor) -> SplitFeatures:
    return SplitFeatures(
        features.features[keep],
        None if features.flipped is None else features.flipped[keep],
        features.targets[keep],
    )


@dataclass
class Folds:
    """Out-of-fold uncalibrated logits (in the order of the features) and each fold's top-1."""

    logits: torch.Tensor
    targets: torch.Tensor
    fold_top1: list[float]
    test_time_flip: bool

    def summary(self) -> dict:
        return {
            "folds": len(self.fold_top1),
            "fold_top1": self.fold_top1,
            "top1_mean": statistics.mean(self.fold_top1),
            "top1_std": statistics.stdev(self.fold_top1) if len(self.fold_top1) > 1 else 0.0,
            "test_time_flip": self.test_time_flip,
        }

    def calibration(self, precision: float = CONFIDENT_PRECISION) -> dict:
        """The breed temperature and the confidence threshold for `precision`, from out-of-fold answers."""
        temperature = cal.fit_temperature(self.logits, self.targets)
        confidence, correct = cal.top1((self.logits / temperature).softmax(1), self.targets)
        threshold = cal.confidence_threshold(confidence, correct, precision)
        return {
            "breed_temperature": temperature,
            "confidence_threshold": threshold,
            "confident_precision": precision,
            "fitted_on": f"out-of-fold answers of {len(self.fold_top1)} folds of train",
        }


def usable_folds(targets: torch.Tensor, folds: int) -> int:
    """At most `folds`, and no more than the smallest class has images: a fold every class is in."""
    smallest = int(targets.unique(return_counts=True)[1].min())
    return min(folds, smallest)


def cross_validate(
    model: BreedClassifier, features: SplitFeatures, recipe: Recipe, folds: int, test_time_flip: bool = False
) -> Folds:
    """Train `folds` heads by `recipe`, each without one fold, and collect their answers on it.

    With `test_time_flip` the answers combine each image and its mirror as the model does, when the mirrored
    features are there; otherwise they are single-view answers.
    """
    num_classes = model.breed_head.out_features
    flip = test_time_flip and features.flipped is not None
    if usable_folds(features.targets, folds) < folds:
        raise ValueError(f"{folds} folds need at least {folds} images of every class")
    assignment = fold_of_each(features.targets, folds, recipe.seed)
    logits = torch.empty(len(features.targets), num_classes)
    fold_top1 = []
    for fold in range(folds):
        held_out = assignment == fold
        head = fit_head(model, subset(features, ~held_out), recipe, num_classes)
        answers = breed_logits(head, subset(features, held_out), flip)
        logits[held_out] = answers
        fold_top1.append((answers.argmax(1) == features.targets[held_out]).float().mean().item())
        log.info("fold %d/%d: top1 %.4f", fold + 1, folds, fold_top1[-1])
    return Folds(logits, features.targets, fold_top1, flip)


def main(argv: list[str] | None = None) -> None:
    configure_cli_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    folds = 5
    if "--folds" in argv:
        position = argv.index("--folds")
        folds = int(argv[position + 1])
        del argv[position : position + 2]
    args = parse_args(argv, description=__doc__)
    run = setup(args)
    result = cross_validate(
        run.model, run.train_features, Recipe.from_mapping(args), folds, args.test_time_flip
    )
    summary = {**result.summary(), "calibration": result.calibration(args.confident_precision)}
    print(json.dumps(summary, indent=1))
    print(
        f"folds: top1_mean={summary['top1_mean']:.4f}; top1_std={summary['top1_std']:.4f}; "
        f"breed_temperature={summary['calibration']['breed_temperature']:.4f};",
        flush=True,
    )


if __name__ == "__main__":
    main()
