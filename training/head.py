"""The breed head's recipe on cached features: its start, one epoch, and a whole fit.

`training.train` runs these data-parallel for the artifact; `training.crossval` runs the same recipe on k-1
folds at a time, so the figures the folds give are those of the recipe the artifact is made with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from classifier.model import BreedClassifier, init_breed_head_from_imagenet
from training.features import SplitFeatures


@dataclass(frozen=True)
class Recipe:
    """How the head is trained: the hyperparameters `training.train` takes of the same names."""

    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    feature_dropout: float = 0.0
    flip: bool = False
    class_balanced: bool = False
    mixup: float = 0.0
    seed: int = 0

    @classmethod
    def from_mapping(cls, values) -> Recipe:
        """From argparse's namespace or a dict (metrics.json's hyperparameters); other keys are ignored."""
        values = vars(values) if not isinstance(values, dict) else values
        return cls(**{field.name: values[field.name] for field in fields(cls) if field.name in values})


def imagenet_match_probabilities(
    model: BreedClassifier, features: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(classes, 1000): each breed's mean ImageNet probability over its training images."""
    with torch.no_grad():
        probabilities = model.imagenet_probabilities(features)
    sums = torch.zeros(num_classes, probabilities.shape[1]).index_add_(0, targets, probabilities)
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1)
    return sums / counts[:, None]


def initial_head(model: BreedClassifier, features: torch.Tensor, targets: torch.Tensor) -> torch.nn.Linear:
    """Set the model's breed head to its ImageNet start for these training features, and return it."""
    num_classes = model.breed_head.out_features
    init_breed_head_from_imagenet(model, imagenet_match_probabilities(model, features, targets, num_classes))
    return model.breed_head


def training_set(features: SplitFeatures, recipe: Recipe) -> TensorDataset:
    inputs, targets = features.features, features.targets
    if recipe.flip:
        inputs, targets = torch.cat([inputs, features.flipped]), torch.cat([targets, targets])
    return TensorDataset(inputs, targets)


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so that the mean weight per image is one."""
    counts = torch.bincount(targets, minlength=num_classes).float().clamp(min=1)
    weights = 1.0 / counts
    return weights * len(targets) / weights[targets].sum()


class Trainer:
    """The optimiser, schedule and loss of one head over `loader`'s batches (of this rank's share)."""

    def __init__(
        self,
        head: torch.nn.Module,
        loader: DataLoader,
        recipe: Recipe,
        weights: torch.Tensor | None = None,
        device: torch.device | None = None,
        network: torch.nn.Module | None = None,
    ):
        self.head, self.loader, self.recipe = head, loader, recipe
        self.network = network or head  # DistributedDataParallel's wrapper when there are several ranks
        self.device = device or torch.device("cpu")
        self.weights = None if weights is None else weights.to(self.device)
        self.dropout = torch.nn.Dropout(recipe.feature_dropout)
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, recipe.epochs * len(loader))
        )

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        smoothing = self.recipe.label_smoothing
        if self.recipe.mixup <= 0:
            logits = self.network(self.dropout(inputs))
            return F.cross_entropy(logits, targets, weight=self.weights, label_smoothing=smoothing)
        # Mixup of the cached features: the head sees blends of two images and answers the same blend of
        # their labels.
        share = torch.distributions.Beta(self.recipe.mixup, self.recipe.mixup).sample().item()
        order = torch.randperm(len(targets), device=inputs.device)
        logits = self.network(self.dropout(share * inputs + (1 - share) * inputs[order]))
        return share * F.cross_entropy(logits, targets, weight=self.weights, label_smoothing=smoothing) + (
            1 - share
        ) * F.cross_entropy(logits, targets[order], weight=self.weights, label_smoothing=smoothing)

    def one_epoch(self, epoch: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Train one epoch; (summed loss, images seen) of this rank."""
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        # Seeded per epoch and rank so a resumed run draws the same masks and blends as an uninterrupted one.
        torch.manual_seed(self.recipe.seed * 100_003 + epoch * 101 + rank)
        self.head.train()
        total, seen = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for inputs, targets in self.loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            loss = self.loss(inputs, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total += loss.detach() * len(targets)
            seen += len(targets)
        self.head.eval()
        return total, seen


def loader_for(dataset: TensorDataset, recipe: Recipe, world_size: int = 1, rank: int = 0) -> DataLoader:
    """Each of `world_size` ranks takes 1/world_size of the global batch, so W ranks take one rank's steps."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=recipe.seed)
    return DataLoader(dataset, batch_size=max(1, recipe.batch_size // world_size), sampler=sampler)


def fit_head(
    model: BreedClassifier, features: SplitFeatures, recipe: Recipe, num_classes: int
) -> torch.nn.Linear:
    """A fresh head trained by `recipe` on `features` in this process; the model's head stays as it was."""
    saved = copy.deepcopy(model.breed_head.state_dict())
    head = copy.deepcopy(initial_head(model, features.features, features.targets))
    model.breed_head.load_state_dict(saved)
    weights = class_weights(features.targets, num_classes) if recipe.class_balanced else None
    trainer = Trainer(head, loader_for(training_set(features, recipe), recipe), recipe, weights)
    for epoch in range(recipe.epochs):
        trainer.one_epoch(epoch)
    return head.eval()
