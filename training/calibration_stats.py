"""Probabilities that mean what they say, and when to say "not sure".

Fitted on held-out answers (out-of-fold logits for the breeds, see `training.crossval`):
  - a temperature T for the breed logits: softmax(logits / T);
  - a logistic (Platt) map of the dog probability's log-odds, a * logit(p) + b, fitted on dogs and non-dogs
    weighted equally (the share of dogs among what users send is unknown: this states even odds);
  - the confidence threshold: the lowest calibrated top-1 probability at which the answers above it are
    still right at the stated precision;
  - the dog threshold on the calibrated dog probability.
They are stored in the artifact's config under `calibration` (see classifier.model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15
# "Confident" answers are meant to be right this often (out of fold); the threshold follows from it.
CONFIDENT_PRECISION = 0.95


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T)."""
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE over `bins` equal-width bins: the image-weighted mean |accuracy - confidence| of each bin."""
    table = reliability_table(confidence, correct, bins)
    total = sum(row["count"] for row in table)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / max(1, total)


def reliability_table(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty bin: its bounds, the images in it, their mean confidence and accuracy."""
    confidence, correct = confidence.double(), correct.double()
    # Bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 goes into the first.
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            rows.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "count": count,
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return rows


def top1(probabilities: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 probability, whether top-1 is right) per image."""
    confidence, predicted = probabilities.max(1)
    return confidence, predicted == targets


def confidence_threshold(confidence: torch.Tensor, correct: torch.Tensor, precision: float) -> float:
    """The lowest threshold t such that the answers with confidence >= t are right at least `precision` of the
    time (over held-out answers); 1.0 when even the most confident ones fall short."""
    order = confidence.argsort(descending=True)
    right = correct[order].double().cumsum(0)
    answered = torch.arange(1, len(order) + 1, dtype=torch.float64)
    meets = (right / answered >= precision).nonzero()
    if len(meets) == 0:
        return 1.0
    return float(confidence[order][meets[-1, 0]])


def coverage_and_precision(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> dict:
    kept = confidence >= threshold
    return {
        "coverage": float(kept.double().mean()),
        "precision": float(correct[kept].double().mean()) if kept.any() else float("nan"),
    }


def log_odds(probability: torch.Tensor) -> torch.Tensor:
    # The same clamp as the model's calibrate_dog_probability.
    return torch.logit(probability.double(), eps=1e-7)


def fit_platt(probability: torch.Tensor, positive: torch.Tensor) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(p) + b) minimising the log-loss with both classes weighted equally."""
    x, y = log_odds(probability), positive.double()
    weights = torch.where(positive, 0.5 / positive.sum(), 0.5 / (~positive).sum())
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (
            F.binary_cross_entropy_with_logits(params[0] * x + params[1], y, reduction="none") * weights
        ).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = params.tolist()
    return a, b


def dog_threshold_for_recall(dog_probability: torch.Tensor, recall: float) -> float:
    """The highest threshold that still calls at least `recall` of these dog photos a dog."""
    ordered = dog_probability.double().sort().values
    position = min(len(ordered) - 1, max(0, math.floor((1 - recall) * len(ordered))))
    return float(ordered[position])
