"""The dog head: a logistic regression on the pooled backbone features that says "dog" or "not a dog".

Fitted on dog photos against cats and other pictures, weighted so that the two sides count equally (even
odds, as the Platt map of training.calibration_stats), with an L2 penalty. Each image's mirror is a second
sample of the same weight. The model answers the head's probability held under the ImageNet classes' say
(classifier.model.dog_head_probability), with test-time flip the mean of both views'. The fit runs on
standardised features and folds the standardisation back into one linear layer, so the head is a plain
`nn.Linear` of the model (and of its exported graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from classifier.model import dog_head_probability
from training.crossval import fold_of_each, subset
from training.features import SplitFeatures

# The L2 penalty on the standardised weights: the negatives are a few hundred photos against thousands of
# features, so the head must not learn them one by one.
L2 = 1e-2


def fit_logistic(
    features: torch.Tensor, positive: torch.Tensor, weights: torch.Tensor, l2: float = L2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (1, D), bias (1,)) of sigmoid(features @ weight.T + bias), minimising the weighted log-loss
    plus l2 / 2 * |weight on standardised features|^2."""
    x = features.double()
    w = (weights / weights.sum()).double()
    mean = (w[:, None] * x).sum(0)
    std = ((w[:, None] * (x - mean) ** 2).sum(0)).sqrt().clamp(min=1e-6)
    z = (x - mean) / std
    y = positive.double()
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ params[:-1] + params[-1]
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum()
        loss = loss + l2 / 2 * params[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    coefficients, intercept = params.detach()[:-1], params.detach()[-1]
    weight = coefficients / std
    bias = intercept - (weight * mean).sum()
    return weight[None].float(), bias[None].float()


def training_samples(
    features: SplitFeatures, positive: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, positive, weights) with each image's mirror as a second sample, when there is one."""
    if features.flipped is None:
        return features.features, positive, weights
    return (
        torch.cat([features.features, features.flipped]),
        torch.cat([positive, positive]),
        torch.cat([weights, weights]),
    )


def probability(
    weight: torch.Tensor,
    bias: torch.Tensor,
    features: SplitFeatures,
    imagenet: SplitFeatures,
    floor: float,
    test_time_flip: bool,
) -> torch.Tensor:
    """The dog probability as the model answers it (classifier.model.dog_head_probability): of each image,
    or of both views' mean. `imagenet` holds the ImageNet dog mass of each view as its (N,) features."""
    calibration = {"dog_imagenet_floor": floor}

    def of_view(view: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        return dog_head_probability((view @ weight.T + bias).flatten(), mass, calibration)

    answer = of_view(features.features, imagenet.features)
    if test_time_flip and features.flipped is not None:
        answer = (answer + of_view(features.flipped, imagenet.flipped)) / 2
    return answer


def balanced_weights(positive: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per image: each side (dogs, not dogs) weighs one half, shared equally among its sources (`source`
    numbers them, e.g. Stanford dogs and pet dogs), each source's images equally."""
    weights = torch.zeros(len(positive), dtype=torch.float64)
    for side in (True, False):
        on_side = positive == side
        sources = source[on_side].unique()
        for number in sources:
            members = on_side & (source == number)
            weights[members] = 0.5 / len(sources) / members.sum()
    return weights


def out_of_fold(
    features: SplitFeatures,
    imagenet: SplitFeatures,
    positive: torch.Tensor,
    weights: torch.Tensor,
    floor: float,
    test_time_flip: bool,
    folds: int = 5,
    l2: float = L2,
) -> torch.Tensor:
    """Each image's dog probability from a head fitted on the other folds (stratified by dog/not dog)."""
    fold = fold_of_each(positive.long(), folds)
    answers = torch.empty(len(positive))
    for number in range(folds):
        held = fold == number
        train = subset(features, ~held)
        weight, bias = fit_logistic(*training_samples(train, positive[~held], weights[~held]), l2=l2)
        answers[held] = probability(
            weight, bias, subset(features, held), subset(imagenet, held), floor, test_time_flip
        )
    return answers
