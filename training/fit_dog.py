"""Fit an artifact's dog/not-dog answer on real photos and report it on photos it did not see.

    python -m training.fit_dog --model-dir models/default --pets ../shared/data/pets \\
        --train ../shared/data/dogs/train --train-sample 1200

The ImageNet-derived dog probability (the backbones' mass on their dog classes) cannot tell real cats from
real dogs well enough: black kittens are Schipperkes to it. This learns the answer instead, as a dog head on
the pooled features (training.dog_head), from
  - dogs: a seeded sample of the Stanford train dogs and the pet dogs of the fit part (training.pets),
  - not dogs: the cats of the fit part and all the non-dog pictures of training.nondogs,
each side weighing one half. The answer is the head's probability held under the ImageNet classes' say
(classifier.model.dog_head_probability: under `--imagenet-floor`, "not a dog" stands), since the head
saw little besides cats among what is not a dog. The dog threshold is even odds; the confident-dog
threshold lies above the out-of-fold dog probability of every fit picture that is not a dog but got a
confident breed answer.

Writes the head into weights.pt, `"dog_head": true` and the thresholds into config.json's `calibration`, the
fit's report into metrics.json (`dog_head`), and the figures on the held-out part of the pets, before (the
artifact as it was loaded) and after, into `pets-heldout.json`. An artifact that has a dog head already is
refitted only with `--refit` (its `before` is then that head). Rebuild the graph afterwards:
`python -m training.export --model-dir DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from classifier.logs import run_command
from classifier.model import (
    CONFIG_FILE,
    DOG_HEAD_PREFIX,
    DOG_SETTINGS,
    METRICS_FILE,
    WEIGHTS_FILE,
    BreedClassifier,
    Thresholds,
    calibrate_dog_probability,
    calibrate_logits,
    load_model,
)
from training import dog_head, pets
from training.calibrate import sample
from training.crossval import subset
from training.data import read_image_folder
from training.evaluate import breed_logits, dog_probabilities
from training.features import SplitFeatures, split_features

log = logging.getLogger("training.fit_dog")
RESULT_FILE = "pets-heldout.json"
# The head is fitted at even odds: past one half, a dog is the likelier answer.
DOG_THRESHOLD = 0.5
# Under this calibrated ImageNet dog probability, the ImageNet classes' "not a dog" stands whatever the head
# says (classifier.model.dog_head_probability): dogs practically never score that low, other things do.
IMAGENET_FLOOR = 0.001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--pets", type=Path, required=True, help="a folder with cats/ and dogs/")
    parser.add_argument("--train", type=Path, required=True, help="the breed split the artifact trained on")
    parser.add_argument("--train-sample", type=int, default=1200, help="how many train dogs (seeded)")
    parser.add_argument("--dog-threshold", type=float, default=DOG_THRESHOLD)
    parser.add_argument(
        "--imagenet-floor",
        type=float,
        default=IMAGENET_FLOOR,
        help="calibrated ImageNet dog probability under which the answer stays 'not a dog'",
    )
    parser.add_argument("--l2", type=float, default=dog_head.L2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--refit", action="store_true", help="replace the artifact's dog head")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="the feature cache")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    return parser.parse_args(argv)


def picture_features(model: BreedClassifier, preprocessing) -> tuple[list[str], SplitFeatures]:
    """Names and features (and mirrored features) of the non-dog pictures of training.nondogs."""
    from training.nondogs import non_dog_images

    images = non_dog_images()
    names = list(images)
    arrays = torch.from_numpy(np.stack([preprocessing(images[name]) for name in names]))
    with torch.no_grad():
        features = torch.cat([model.features(batch) for batch in arrays.split(8)])
        flipped = torch.cat([model.features(batch.flip(3)) for batch in arrays.split(8)])
    return names, SplitFeatures(features, flipped, torch.zeros(len(names), dtype=torch.long))


def top_breed_probability(model: BreedClassifier, features: SplitFeatures) -> torch.Tensor:
    """The top breed's calibrated probability, as the model answers it."""
    logits = breed_logits(model.breed_head, features, model.test_time_flip)
    return calibrate_logits(logits, model.calibration).softmax(1).max(1).values


def measure(
    model: BreedClassifier, features: SplitFeatures, names: list[str], thresholds: Thresholds
) -> dict:
    dog = calibrate_dog_probability(dog_probabilities(model, features), model.calibration)
    top = top_breed_probability(model, features)
    return pets.heldout_figures(features.targets == 1, dog, top, thresholds, names)


def imagenet_masses(model: BreedClassifier, features: SplitFeatures) -> SplitFeatures:
    """The ImageNet dog mass of each view, as (N,) "features"."""
    with torch.no_grad():
        return SplitFeatures(
            model.imagenet_dog_probability(features.features),
            model.imagenet_dog_probability(features.flipped),
            features.targets,
        )


def concatenate(*parts: SplitFeatures) -> SplitFeatures:
    return SplitFeatures(
        torch.cat([part.features for part in parts]),
        torch.cat([part.flipped for part in parts]),
        torch.cat([part.targets for part in parts]),
    )


def imagenet_floor(calibration: dict, calibrated_floor: float) -> float:
    """The raw ImageNet dog mass that the artifact's ImageNet Platt map (training.calibrate) takes to
    `calibrated_floor`; the floor kept in `calibration` when the map is gone (a refit)."""
    if "dog_scale" not in calibration:
        if "dog_imagenet_floor" not in calibration:
            raise ValueError("the artifact has neither the ImageNet dog calibration nor a floor")
        return calibration["dog_imagenet_floor"]
    log_odds = math.log(calibrated_floor) - math.log1p(-calibrated_floor)
    raw = (log_odds - calibration.get("dog_shift", 0.0)) / calibration.get("dog_scale", 1.0)
    return 1 / (1 + math.exp(-raw))


def confident_dog_threshold(
    out_of_fold: torch.Tensor, negative: torch.Tensor, confident_breed: torch.Tensor, dog_threshold: float
) -> float:
    """The lowest dog threshold (at least `dog_threshold`) above every out-of-fold dog probability of a
    picture that is not a dog but got a confident breed answer: none of them would have been confident."""
    risky = out_of_fold[negative & confident_breed]
    if len(risky) == 0:
        return dog_threshold
    return max(dog_threshold, float(np.nextafter(np.float32(risky.max()), np.float32(1))))


@dataclasses.dataclass
class FitData:
    """What the dog head is fitted on: Stanford train dogs, the fit part's pet dogs and cats, the non-dog
    pictures; `source` says which (0 Stanford dogs, 1 pet dogs, 2 not dogs), `weights` balance them."""

    data: SplitFeatures
    positive: torch.Tensor
    source: torch.Tensor
    weights: torch.Tensor
    train_dogs: int
    fit_pets: SplitFeatures
    picture_names: list[str]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, config, labels, preprocessing = load_model(args.model_dir)
    if model.dog_head is not None and not args.refit:
        raise ValueError(f"{args.model_dir} has a dog head already; --refit replaces it")

    def features_of(split, description):
        return split_features(
            split,
            model,
            preprocessing,
            args.cache_dir,
            flipped=True,
            threads=args.threads,
            use_onnx=args.onnx,
            description=description,
        )

    photos = pets.read_pets(args.pets)
    photo_features = features_of(photos, "pets")
    heldout = pets.part_mask(photos, pets.HELDOUT)
    heldout_names = [path.name for path, kept in zip(photos.paths, heldout.tolist(), strict=True) if kept]
    heldout_features = subset(photo_features, heldout)
    before = {
        "dog_answer": "imagenet" if model.dog_head is None else "dog head",
        **measure(model, heldout_features, heldout_names, thresholds_before(model)),
    }

    train = sample(read_image_folder(args.train), args.train_sample)
    fit = fit_data(
        model,
        preprocessing,
        features_of(train, "train dogs"),
        subset(photo_features, pets.part_mask(photos, pets.FIT)),
    )
    calibration, weight, bias, out_of_fold = fit_head(model, fit, args)
    model.dog_head = torch.nn.Linear(model.feature_dim, 1)
    with torch.no_grad():
        model.dog_head.weight.copy_(weight)
        model.dog_head.bias.copy_(bias)
    model.calibration = calibration
    after = {
        "dog_answer": "dog head",
        **measure(model.eval(), heldout_features, heldout_names, Thresholds.of(calibration)),
    }
    report = fit_report(fit, out_of_fold, calibration, args)
    result = {
        "model": {"name": config["name"], "version": str(config["version"]), "backbone": config["backbone"]},
        "pets": str(args.pets),
        "split": "by the first byte of the file name's SHA-256 (training.pets.part_of); "
        "the non-dog pictures are all on the fit side",
        "before": before,
        "after": after,
    }
    save(args.model_dir, config, calibration, weight, bias, report)
    (args.model_dir / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    print(pets.render_table([result]))
    return result


def thresholds_before(model: BreedClassifier) -> Thresholds:
    """The thresholds the model answered with before this fit; without a dog head `confident` looked at the
    breed alone."""
    thresholds = Thresholds.of(model.calibration)
    if model.dog_head is None:
        thresholds = dataclasses.replace(thresholds, confident_dog=0.0)
    return thresholds


def fit_data(
    model: BreedClassifier, preprocessing, train_features: SplitFeatures, fit_pets: SplitFeatures
) -> FitData:
    picture_names, pictures = picture_features(model, preprocessing)
    dogs = torch.ones(len(train_features.targets), dtype=torch.long)
    data = concatenate(
        SplitFeatures(train_features.features, train_features.flipped, dogs), fit_pets, pictures
    )
    positive = data.targets == 1
    cats_and_dogs = torch.where(fit_pets.targets == 1, 1, 2)
    source = torch.cat([dogs * 0, cats_and_dogs, torch.full((len(picture_names),), 2)])
    weights = dog_head.balanced_weights(positive, source)
    return FitData(data, positive, source, weights, len(dogs), fit_pets, picture_names)


def fit_head(
    model: BreedClassifier, fit: FitData, args: argparse.Namespace
) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the calibration with the dog head's settings, its weight and bias, the out-of-fold dog answers)."""
    floor = imagenet_floor(model.calibration, args.imagenet_floor)
    out_of_fold = dog_head.out_of_fold(
        fit.data,
        imagenet_masses(model, fit.data),
        fit.positive,
        fit.weights,
        floor,
        model.test_time_flip,
        args.folds,
        args.l2,
    )
    confident_breed = top_breed_probability(model, fit.data) >= model.calibration.get(
        "confidence_threshold", Thresholds().confidence
    )
    confident_dog = confident_dog_threshold(out_of_fold, ~fit.positive, confident_breed, args.dog_threshold)
    weight, bias = dog_head.fit_logistic(
        *dog_head.training_samples(fit.data, fit.positive, fit.weights), l2=args.l2
    )
    calibration = {key: value for key, value in model.calibration.items() if key not in DOG_SETTINGS}
    calibration.update(
        dog_imagenet_floor=floor,
        dog_threshold=args.dog_threshold,
        confident_dog_threshold=confident_dog,
        dog_fitted_on=(
            f"{fit.train_dogs} {args.train.name} dogs, {int(fit.fit_pets.targets.sum())} pet dogs and "
            f"{int((fit.fit_pets.targets == 0).sum())} cats of the fit part, {len(fit.picture_names)} "
            f"non-dog pictures; confident-dog threshold from {args.folds}-fold out-of-fold answers"
        ),
    )
    return calibration, weight, bias, out_of_fold


def fit_report(fit: FitData, out_of_fold: torch.Tensor, calibration: dict, args: argparse.Namespace) -> dict:
    """metrics.json's `dog_head`: what it was fitted on, and its out-of-fold misses on each source."""

    def share(chosen: torch.Tensor) -> float:
        return float(chosen.double().mean())

    pets_from, pets_to = fit.train_dogs, fit.train_dogs + len(fit.fit_pets.targets)
    return {
        "images": {
            "train_dogs": fit.train_dogs,
            "fit_pet_dogs": int((fit.source == 1).sum()),
            "fit_cats": int((fit.fit_pets.targets == 0).sum()),
            "pictures": len(fit.picture_names),
        },
        "l2": args.l2,
        "out_of_fold": {
            "train_dogs_not_a_dog": share(out_of_fold[fit.source == 0] < args.dog_threshold),
            "pet_dogs_not_a_dog": share(out_of_fold[fit.source == 1] < args.dog_threshold),
            "cats_called_dogs": share(
                out_of_fold[pets_from:pets_to][fit.fit_pets.targets == 0] >= args.dog_threshold
            ),
            "pictures_called_dogs": sorted(
                name
                for name, p in zip(
                    fit.picture_names, out_of_fold[-len(fit.picture_names) :].tolist(), strict=True
                )
                if p >= args.dog_threshold
            ),
        },
        "settings": {key: calibration[key] for key in DOG_SETTINGS if key in calibration},
    }


def save(
    model_dir: Path, config: dict, calibration: dict, weight: torch.Tensor, bias: torch.Tensor, report: dict
) -> None:
    """The head into weights.pt, its settings into config.json, its report into metrics.json."""
    stored = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    stored.update({f"{DOG_HEAD_PREFIX}weight": weight.clone(), f"{DOG_HEAD_PREFIX}bias": bias.clone()})
    torch.save(stored, model_dir / WEIGHTS_FILE)
    config["dog_head"] = True
    if DOG_HEAD_PREFIX not in config["trained_prefixes"]:
        config["trained_prefixes"].append(DOG_HEAD_PREFIX)
    config["calibration"] = calibration
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    metrics_path = model_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["dog_head"] = report
    if "calibration" in metrics:
        metrics["calibration"]["settings"] = calibration
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_command(run, parse_args, argv)


if __name__ == "__main__":
    main()
