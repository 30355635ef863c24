"""The default model's cost levers (issue 21) as one table: cost per image, cross-validated and valid top-1.

Reads the features `bench.lever_features` cached (every backbone at the shared 260 px input and at its
own size, train in a breed-balanced order, valid with mirror images) and, for each lever, trains the
default's head recipe on them:

- folds: 5-fold cross-validation over the cached train images (the same folds for every row, so each row's
  difference to today's default is paired fold by fold); single-view answers, as the default's own folds;
- valid: a head trained on all the cached train images answers `valid`, with the row's mirror policy: never,
  always (test-time flip), or only for answers below the out-of-fold confidence threshold;
- heads on two views: the same recipe trained on each train photo and its mirror image (`Recipe.flip`);
- cascades: a cheaper first pass whose answers below its confidence threshold are answered again by today's
  default (its other members, and the mirror image), out of fold and on valid alike;
- calibration: the out-of-fold temperature and confidence threshold (as training.train fits them), the
  calibrated ECE on valid and the out-of-fold coverage of the confident answers;
- cost: each backbone variant's graph (one 260 px input, resized inside where the backbone's own size is
  smaller) timed on this machine in this run, rounds interleaved; a row costs its members' sum per view,
  and the second views or passes for the share of valid photos that needed them.

    python -m bench.levers --features runs/levers
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass, replace
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
from training.crossval import Folds, cross_validate, fold_of_each
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
    views: int = 1  # training views of each photo: 1 (the photo) or 2 (and its mirror image)
    # A cascade: answers below the confidence threshold are answered again by today's default (its members,
    # the mirror image), whose features of the members both share are computed once.
    escalate: bool = False
    # With a cascade: the share of photos (out of fold) sent to the second pass, by the first pass's least
    # confident answers, instead of those below its confidence threshold.
    escalate_share: float | None = None


def members(backbones: tuple[str, ...], sizes: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple((backbone, sizes[backbone]) for backbone in backbones)


PAIR = members(LITE[1:], NATIVE)
BASELINE = Lever("today's default: lite0+1+2 at 260, mirror", members(LITE, SHARED), "always")
LEVERS = [
    BASELINE,
    Lever("lite0+1+2 at 260, no mirror", members(LITE, SHARED), "never"),
    Lever("lite0+1+2 at 260, mirror when unsure", members(LITE, SHARED), "unsure"),
    Lever("lite0+1+2 at 260, mirror, heads on two views", members(LITE, SHARED), "always", views=2),
    Lever("lite0+1+2 native sizes, mirror", members(LITE, NATIVE), "always"),
    Lever("lite0+1+2 native sizes, no mirror", members(LITE, NATIVE), "never"),
    Lever("lite0+1+2 native sizes, mirror when unsure", members(LITE, NATIVE), "unsure"),
    Lever("lite1+2 native sizes, no mirror", PAIR, "never"),
    Lever("lite1+2 native sizes, mirror when unsure", PAIR, "unsure"),
    Lever("lite1+2 native sizes, no mirror, heads on two views", PAIR, "never", views=2),
    Lever("lite1+2 native sizes, mirror when unsure, heads on two views", PAIR, "unsure", views=2),
    Lever("lite1+2 native sizes, today's default when unsure", PAIR, "never", escalate=True),
    Lever("lite0+2 native sizes, no mirror", members(LITE[::2], NATIVE), "never"),
    Lever("lite0+2 native sizes, mirror when unsure", members(LITE[::2], NATIVE), "unsure"),
    Lever("lite0+1 native sizes, mirror", members(LITE[:2], NATIVE), "always"),
    Lever("lite0+1 native sizes, mirror when unsure", members(LITE[:2], NATIVE), "unsure"),
    Lever("lite2 alone, mirror", members(LITE[2:], NATIVE), "always"),
    Lever("lite2 alone, no mirror", members(LITE[2:], NATIVE), "never"),
    Lever("lite2 alone, mirror when unsure", members(LITE[2:], NATIVE), "unsure"),
    Lever("lite2 alone, no mirror, heads on two views", members(LITE[2:], NATIVE), "never", views=2),
    Lever("lite2 alone, today's default when unsure", members(LITE[2:], NATIVE), "never", escalate=True),
    Lever(
        "lite2 alone, today's default for its least sure sixth",
        members(LITE[2:], NATIVE),
        "never",
        escalate=True,
        escalate_share=1 / 6,
    ),
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
    if lever.views == 2 and "flipped" not in train:
        raise ValueError("heads on two views need the train photos' mirror views: extract them again")
    recipe = replace(recipe, flip=lever.views == 2)
    backbone = ",".join(backbone for backbone, _ in lever.members)
    model = BreedClassifier(backbone, int(train["targets"].max()) + 1)
    train_features, valid_features = split_features(train, lever), split_features(valid, lever)
    folds = cross_validate(model, train_features, recipe, FOLDS)
    head = fit_head(model, train_features, recipe, model.breed_head.out_features)
    with torch.no_grad():
        single, mirrored = head(valid_features.features), head(valid_features.flipped)
    return Heads(folds, folds.calibration(), single, mirrored, valid_features.targets)


@dataclass
class Answers:
    """A lever's calibrated answers, out of fold (single view, as the folds are) and on valid, each with
    whether it is confident, and the share of valid photos that needed more than the first pass."""

    targets: torch.Tensor  # of the out-of-fold answers
    out_of_fold: torch.Tensor
    out_of_fold_confident: torch.Tensor
    valid: torch.Tensor
    valid_confident: torch.Tensor
    unsure_share: float = 0.0


def answers(heads: Heads, mirror: str) -> Answers:
    temperature = heads.calibration["breed_temperature"]
    threshold = heads.calibration["confidence_threshold"]
    out_of_fold = (heads.folds.logits / temperature).softmax(1)
    single = (heads.single / temperature).softmax(1)
    both = (combine_flips(heads.single, heads.mirrored) / temperature).softmax(1)
    unsure = single.max(1).values < threshold
    valid = {"never": single, "always": both, "unsure": torch.where(unsure[:, None], both, single)}[mirror]
    return Answers(
        heads.folds.targets,
        out_of_fold,
        out_of_fold.max(1).values >= threshold,
        valid,
        valid.max(1).values >= threshold,
        float(unsure.double().mean()) if mirror == "unsure" else 0.0,
    )


def escalated(first: Answers, second: Answers, share: float | None = None) -> Answers:
    """The first pass's answers where they are confident, the second's where they are not; with `share`, the
    second's for the first pass's least confident `share` of photos out of fold (the same confidence cut on
    valid).

    The second pass's own threshold was fitted on every photo; on the hard ones the first pass leaves it, its
    confident answers are right less often, so its threshold is fitted again on those out of fold."""
    oof_unsure, valid_unsure = ~first.out_of_fold_confident, ~first.valid_confident
    if share is not None:
        cut = torch.quantile(first.out_of_fold.max(1).values, share)
        oof_unsure, valid_unsure = first.out_of_fold.max(1).values < cut, first.valid.max(1).values < cut
    confidence, correct = cal.top1(second.out_of_fold[oof_unsure], first.targets[oof_unsure])
    threshold = cal.confidence_threshold(confidence, correct, CONFIDENT_PRECISION)
    return Answers(
        first.targets,
        torch.where(oof_unsure[:, None], second.out_of_fold, first.out_of_fold),
        torch.where(oof_unsure, second.out_of_fold.max(1).values >= threshold, first.out_of_fold_confident),
        torch.where(valid_unsure[:, None], second.valid, first.valid),
        torch.where(valid_unsure, second.valid.max(1).values >= threshold, first.valid_confident),
        float(valid_unsure.double().mean()),
    )


def ms_per_image(lever: Lever, share: float, costs: dict[str, float]) -> float:
    """The members' graphs per photo: the mirror image, or the cascade's second pass, for `share` of them."""
    own = [variant_name(*member) for member in lever.members]
    if lever.escalate:
        baseline = [variant_name(*member) for member in BASELINE.members]
        again = [name for name in baseline if name not in own] + baseline  # and the mirror image of all
        return sum(costs[name] for name in own) + share * sum(costs[name] for name in again)
    views = {"never": 1.0, "always": 2.0, "unsure": 1.0 + share}[lever.mirror]
    return sum(costs[name] for name in own) * views


def evaluate(lever: Lever, fitted: dict, targets: torch.Tensor, valid_targets: torch.Tensor) -> dict:
    heads = fitted[lever.members, lever.views]
    given = answers(heads, lever.mirror)
    if lever.escalate:
        second = answers(fitted[BASELINE.members, BASELINE.views], BASELINE.mirror)
        given = escalated(given, second, lever.escalate_share)
    correct = given.out_of_fold.argmax(1) == targets
    assignment = fold_of_each(targets, FOLDS, Recipe().seed)  # the folds training.crossval used
    fold_top1 = [float(correct[assignment == fold].double().mean()) for fold in range(FOLDS)]
    valid_confidence, valid_correct = cal.top1(given.valid, valid_targets)
    confident = given.out_of_fold_confident
    return {
        "name": lever.name,
        "members": [variant_name(*member) for member in lever.members],
        "mirror": lever.mirror,
        "training_views": lever.views,
        "escalates_to_default": lever.escalate,
        "second_pass_share": given.unsure_share,
        "fold_top1": fold_top1,
        "folds_top1_mean": statistics.mean(fold_top1),
        "folds_top1_std": statistics.stdev(fold_top1),
        "valid_top1": float(valid_correct.double().mean()),
        "valid_ece": cal.expected_calibration_error(valid_confidence, valid_correct),
        "out_of_fold_confident": {
            "coverage": float(confident.double().mean()),
            "precision": float(correct[confident].double().mean()),
        },
        "calibration": heads.calibration,
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
    for lever in LEVERS:  # the levers that differ only by how they answer share their heads
        if (lever.members, lever.views) not in fitted:
            fitted[lever.members, lever.views] = heads = fit_members(lever, train, valid, recipe)
            log.info("%s, %d view(s): folds %s", lever.members, lever.views, heads.folds.fold_top1)
    rows = [evaluate(lever, fitted, train["targets"], valid["targets"]) for lever in LEVERS]
    variants = {member for lever in LEVERS for member in lever.members}
    costs = member_costs(variants, args.features, args.threads, args.rounds, args.baseline_model)
    baseline = rows[0]
    for lever, row in zip(LEVERS, rows, strict=True):
        row["ms_per_image"] = ms_per_image(lever, row["second_pass_share"], costs)
        row["cost_vs_default"] = row["ms_per_image"] / ms_per_image(BASELINE, 0.0, costs)
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
