"""The default model's cost levers (issue 21) as one table: cost per image, cross-validated and valid top-1.

Reads the features `bench.lever_features` cached (every backbone at the shared 260 px input and at its
own size, train in a breed-balanced order, valid with mirror images) and, for each lever, trains the
default's head recipe on them:

- folds: 5-fold cross-validation over the cached train images (the same folds for every row, so each row's
  difference to today's default is paired fold by fold); single-view answers, as the default's own folds;
- valid: a head trained on all the cached train images answers `valid`, with the row's mirror policy: never,
  always (test-time flip), or only for answers below the out-of-fold confidence threshold;
- calibration: the out-of-fold temperature and confidence threshold (as training.train fits them), the
  calibrated ECE on valid and the out-of-fold coverage of the confident answers;
- cost: each backbone variant's graph (one 260 px input, resized inside where the backbone's own size is
  smaller) timed on this machine in this run, rounds interleaved; a row costs its members' sum per view.

    python -m bench.levers --features runs/levers
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import results
from bench.lever_features import INPUT_SIZE, variant_name
from classifier.graph import INPUT_NAME, export_onnx
from classifier.logs import configure_cli_logging
from classifier.model import ONNX_FILE, BreedClassifier, combine_flips, load_backbone, resize_inside
from classifier.preprocessing import BACKBONE_IMAGE_SIZES
from classifier.runtime import cpu_session
from training import calibration_stats as cal
from training.calibration_stats import CONFIDENT_PRECISION
from training.crossval import Folds, cross_validate
from training.features import SplitFeatures
from training.head import Recipe, fit_head

log = logging.getLogger("bench.levers")
FOLDS = 5
LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
SHARED = {backbone: INPUT_SIZE for backbone in LITE}
NATIVE = dict(BACKBONE_IMAGE_SIZES)
# Issue 21's goals: at least 3x the throughput, valid at most 0.3 points below, calibrated answers.
GOAL_COST = 1 / 3
GOAL_VALID_DROP = 0.003
GOAL_ECE = 0.02


@dataclass(frozen=True)
class Lever:
    name: str
    members: tuple[tuple[str, int], ...]  # (backbone, size)
    mirror: str  # "always", "never" or "unsure" (only answers below the confidence threshold)


def members(backbones: tuple[str, ...], sizes: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple((backbone, sizes[backbone]) for backbone in backbones)


BASELINE = Lever("today's default: lite0+1+2 at 260, mirror", members(LITE, SHARED), "always")
LEVERS = [
    BASELINE,
    Lever("lite0+1+2 at 260, no mirror", members(LITE, SHARED), "never"),
    Lever("lite0+1+2 at 260, mirror when unsure", members(LITE, SHARED), "unsure"),
    Lever("lite0+1+2 native sizes, mirror", members(LITE, NATIVE), "always"),
    Lever("lite0+1+2 native sizes, no mirror", members(LITE, NATIVE), "never"),
    Lever("lite0+1+2 native sizes, mirror when unsure", members(LITE, NATIVE), "unsure"),
    Lever("lite1+2 native sizes, no mirror", members(LITE[1:], NATIVE), "never"),
    Lever("lite1+2 native sizes, mirror when unsure", members(LITE[1:], NATIVE), "unsure"),
    Lever("lite0+2 native sizes, no mirror", members(LITE[::2], NATIVE), "never"),
    Lever("lite0+2 native sizes, mirror when unsure", members(LITE[::2], NATIVE), "unsure"),
    Lever("lite0+1 native sizes, mirror", members(LITE[:2], NATIVE), "always"),
    Lever("lite0+1 native sizes, mirror when unsure", members(LITE[:2], NATIVE), "unsure"),
    Lever("lite2 alone, mirror", members(LITE[2:], NATIVE), "always"),
    Lever("lite2 alone, no mirror", members(LITE[2:], NATIVE), "never"),
    Lever("lite2 alone, mirror when unsure", members(LITE[2:], NATIVE), "unsure"),
]


def split_features(stored: dict, lever: Lever) -> SplitFeatures:
    names = [variant_name(*member) for member in lever.members]
    flipped = stored.get("flipped")
    return SplitFeatures(
        torch.cat([stored["features"][name] for name in names], 1),
        None if flipped is None else torch.cat([flipped[name] for name in names], 1),
        stored["targets"],
    )


class _Member(torch.nn.Module):
    def __init__(self, backbone: str, size: int):
        super().__init__()
        self.member, self.size = load_backbone(backbone), size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.member.extract_features(resize_inside(images, self.size))
        return self.member._avg_pooling(features).flatten(1)


def member_costs(
    variants: set[tuple[str, int]], work: Path, threads: int, rounds: int, baseline: Path
) -> dict[str, float]:
    """Median ms per image of each variant's graph at batch 1, rounds interleaved so load hits all alike; and
    of the baseline model's whole graph (its members and the mirror), which their sum should come near."""
    sessions = {f"{baseline}/{ONNX_FILE}": cpu_session(baseline / ONNX_FILE, threads)}
    for backbone, size in sorted(variants):
        path = work / f"{backbone}-{size}-of-{INPUT_SIZE}.onnx"
        if not path.exists():
            export_onnx(_Member(backbone, size), path, INPUT_SIZE, output_names=("features",))
        sessions[variant_name(backbone, size)] = cpu_session(path, threads)
    image = np.random.default_rng(0).standard_normal((1, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up
        session.run(None, {INPUT_NAME: image})
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {INPUT_NAME: image})
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


@dataclass
class Heads:
    """What one set of members gives, whatever the mirror policy: the folds, their calibration and the
    answers on valid of a head trained on all the cached train images."""

    folds: Folds
    calibration: dict
    single: torch.Tensor  # uncalibrated logits of the valid photos
    mirrored: torch.Tensor  # and of their mirror images
    targets: torch.Tensor


def fit_members(lever: Lever, train: dict, valid: dict, recipe: Recipe) -> Heads:
    backbone = ",".join(backbone for backbone, _ in lever.members)
    model = BreedClassifier(backbone, int(train["targets"].max()) + 1)
    train_features, valid_features = split_features(train, lever), split_features(valid, lever)
    folds = cross_validate(model, train_features, recipe, FOLDS)
    head = fit_head(model, train_features, recipe, model.breed_head.out_features)
    with torch.no_grad():
        single, mirrored = head(valid_features.features), head(valid_features.flipped)
    return Heads(folds, folds.calibration(), single, mirrored, valid_features.targets)


def evaluate(lever: Lever, heads: Heads) -> dict:
    folds, calibration = heads.folds, heads.calibration
    temperature, threshold = calibration["breed_temperature"], calibration["confidence_threshold"]
    confidence, correct = cal.top1((folds.logits / temperature).softmax(1), folds.targets)
    single, mirrored = heads.single, heads.mirrored
    unsure = (single / temperature).softmax(1).max(1).values < threshold
    answers = {"never": single, "always": combine_flips(single, mirrored)}
    answers["unsure"] = torch.where(unsure[:, None], answers["always"], single.log_softmax(1))
    logits = answers[lever.mirror]
    valid_confidence, valid_correct = cal.top1((logits / temperature).softmax(1), heads.targets)
    views = {"never": 1.0, "always": 2.0, "unsure": 1.0 + float(unsure.double().mean())}[lever.mirror]
    return {
        "name": lever.name,
        "members": [variant_name(*member) for member in lever.members],
        "mirror": lever.mirror,
        "views_per_image": views,
        "fold_top1": folds.fold_top1,
        "folds_top1_mean": statistics.mean(folds.fold_top1),
        "folds_top1_std": statistics.stdev(folds.fold_top1),
        "valid_top1": float(valid_correct.double().mean()),
        "valid_ece": cal.expected_calibration_error(valid_confidence, valid_correct),
        "out_of_fold_confident": cal.coverage_and_precision(confidence, correct, threshold),
        "calibration": calibration,
    }


def goals_missed(row: dict) -> list[str]:
    """The goals of issue 21 this row misses: a third of the cost, folds and valid no worse, calibrated."""
    missed = []
    if row["cost_vs_default"] > GOAL_COST:
        missed.append(f"cost {row['cost_vs_default']:.2f}x > {GOAL_COST:.2f}x")
    if row["paired_difference_mean"] < 0:
        missed.append(f"folds {100 * row['paired_difference_mean']:+.2f}")
    if row["valid_difference"] < -GOAL_VALID_DROP:
        missed.append(f"valid {100 * row['valid_difference']:+.2f}")
    if row["valid_ece"] > GOAL_ECE:
        missed.append(f"ECE {100 * row['valid_ece']:.2f}%")
    if row["out_of_fold_confident"]["precision"] < CONFIDENT_PRECISION:
        missed.append("confident answers below their precision")
    return missed


def percent(value: float, sign: bool = False) -> str:
    return f"{100 * value:{'+' if sign else ''}.2f}"


def main(argv: list[str] | None = None) -> None:
    configure_cli_logging()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=Path, default=Path("runs/levers"))
    parser.add_argument("--baseline-model", type=Path, default=Path("models/default"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    results.add_argument(parser)
    args = parser.parse_args(argv)
    run = results.start("bench.levers", "levers", args.results_dir, [args.baseline_model])
    torch.set_num_threads(args.threads)
    train = torch.load(args.features / "train.pt", weights_only=True)
    valid = torch.load(args.features / "valid.pt", weights_only=True)
    log.info("%d train images cached, %d valid", len(train["targets"]), len(valid["targets"]))
    recipe = Recipe()  # the default's head recipe (training.train's defaults)
    fitted: dict[tuple, Heads] = {}
    for lever in LEVERS:  # the levers that differ only by the mirror share their heads
        if lever.members not in fitted:
            fitted[lever.members] = fit_members(lever, train, valid, recipe)
            log.info("%s: folds %s", lever.members, fitted[lever.members].folds.fold_top1)
    rows = [evaluate(lever, fitted[lever.members]) for lever in LEVERS]
    variants = {member for lever in LEVERS for member in lever.members}
    costs = member_costs(variants, args.features, args.threads, args.rounds, args.baseline_model)
    baseline = rows[0]
    for row in rows:
        row["ms_per_image"] = sum(costs[name] for name in row["members"]) * row["views_per_image"]
        row["cost_vs_default"] = row["ms_per_image"] / (
            sum(costs[name] for name in baseline["members"]) * baseline["views_per_image"]
        )
        differences = [a - b for a, b in zip(row["fold_top1"], baseline["fold_top1"], strict=True)]
        row["paired_difference_mean"] = statistics.mean(differences)
        row["paired_difference_std"] = statistics.stdev(differences)
        row["valid_difference"] = row["valid_top1"] - baseline["valid_top1"]
        row["goals_missed"] = goals_missed(row)
    figures = {
        "train_images": len(train["targets"]),
        "train_images_in_split": int(train.get("split_size", len(train["targets"]))),
        "valid_images": len(valid["targets"]),
        "folds": FOLDS,
        "threads": args.threads,
        "ms_per_image": costs,
        "rows": rows,
    }
    table = results.table(
        f"The default's cost levers: {FOLDS} folds over {len(train['targets'])} train images (paired with "
        f"today's default), a head on them answering {len(valid['targets'])} valid images",
        [
            "lever", "ms / image", "cost vs today", "folds top-1 %", "paired difference", "valid top-1 %",
            "valid difference", "valid ECE %", "confident coverage %", "goals missed",
        ],
        [
            [
                row["name"],
                f"{row['ms_per_image']:.1f}",
                f"{row['cost_vs_default']:.2f}x",
                f"{percent(row['folds_top1_mean'])} +- {percent(row['folds_top1_std'])}",
                f"{percent(row['paired_difference_mean'], True)} +- {percent(row['paired_difference_std'])}",
                percent(row["valid_top1"]),
                percent(row["valid_difference"], True),
                percent(row["valid_ece"]),
                percent(row["out_of_fold_confident"]["coverage"]),
                "; ".join(row["goals_missed"]) or "none",
            ]
            for row in rows
        ],
    )  # fmt: skip
    graphs = results.table(
        "Each graph's time per image (batch of one, median of interleaved rounds)",
        ["graph", "ms / image"],
        [[name, f"{ms:.1f}"] for name, ms in costs.items()],
    )
    run.finish(figures, [table, graphs], runtime="onnxruntime", device="cpu")
    for line in table["rows"]:
        print(" | ".join(line))


if __name__ == "__main__":
    main()
