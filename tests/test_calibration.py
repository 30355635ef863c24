"""Calibration: the fitting on answers whose true calibration is known, and the committed models' own
settings, non-dog pictures and photos through the real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PROJECT

from classifier.model import CONFIG_FILE, METRICS_FILE, load_model
from classifier.preprocessing import open_image
from training import calibration_stats as cal
from training.crossval import fold_of_each
from training.evaluate import non_dog_metrics
from training.nondogs import non_dog_images

MODELS = [PROJECT / "models" / "default", PROJECT / "models" / "fast"]


def sampled_answers(temperature: float, images: int = 20_000, classes: int = 10):
    """Logits and labels drawn from softmax(logits / temperature): that temperature is the true one."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(images, classes, generator=generator) * 3
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=generator).flatten()
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_the_fitted_temperature_is_the_true_one_and_removes_the_miscalibration(temperature):
    logits, labels = sampled_answers(temperature)
    fitted = cal.fit_temperature(logits, labels)
    assert fitted == pytest.approx(temperature, rel=0.05)

    before = cal.expected_calibration_error(*cal.top1(logits.softmax(1), labels))
    after = cal.expected_calibration_error(*cal.top1((logits / fitted).softmax(1), labels))
    assert before > 0.05 and after < 0.015


def test_ece_and_reliability_bins_by_hand():
    confidence = torch.tensor([0.05, 0.95, 0.95, 0.95, 0.95])
    correct = torch.tensor([False, True, True, True, False])
    table = cal.reliability_table(confidence, correct)
    assert [(row["count"], row["accuracy"]) for row in table] == [(1, 0.0), (4, 0.75)]
    # |0 - 0.05| for one image, |0.75 - 0.95| for four.
    assert cal.expected_calibration_error(confidence, correct) == pytest.approx((0.05 + 4 * 0.2) / 5)


def test_the_confidence_threshold_is_the_lowest_that_keeps_the_precision():
    confidence = torch.tensor([0.99, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = torch.tensor([True, True, True, False, True, False])
    # Down to 0.8: 3/3 right; to 0.7: 3/4; to 0.6: 4/5 = 0.8.
    assert cal.confidence_threshold(confidence, correct, 0.8) == pytest.approx(0.6)
    assert cal.confidence_threshold(confidence, correct, 0.95) == pytest.approx(0.8)
    assert cal.coverage_and_precision(confidence, correct, 0.6) == {"coverage": 5 / 6, "precision": 0.8}
    assert cal.confidence_threshold(confidence, torch.zeros(6, dtype=torch.bool), 0.5) == 1.0


def test_platt_scaling_separates_two_classes_at_even_odds():
    generator = torch.Generator().manual_seed(1)
    # Dogs around log-odds +1, others around -3 (equal spread), ten times as many dogs: weighted equally, the
    # two are equally likely halfway, at -1.
    dogs = torch.sigmoid(torch.randn(20_000, generator=generator) + 1)
    others = torch.sigmoid(torch.randn(2_000, generator=generator) - 3)
    positive = torch.cat([torch.ones(len(dogs)), torch.zeros(len(others))]).bool()
    scale, shift = cal.fit_platt(torch.cat([dogs, others]), positive)
    middle = torch.sigmoid(torch.tensor(-1.0))
    assert torch.sigmoid(scale * torch.logit(middle) + shift).item() == pytest.approx(0.5, abs=0.05)


def test_folds_are_stratified_by_breed():
    targets = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    folds = fold_of_each(targets, 3)
    for label in range(3):
        counts = torch.bincount(folds[targets == label], minlength=3)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("model_dir", MODELS, ids=lambda path: path.name)
def test_committed_models_carry_their_calibration_and_its_figures(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    settings = config["calibration"]
    assert 0 < settings["breed_temperature"] < 1  # label smoothing made the heads under-confident
    assert 0 < settings["confidence_threshold"] < 1 and settings["confident_precision"] == 0.95
    # A dog head's probability is its own (training.fit_dog); the ImageNet one's has a log-odds map.
    assert 0 < settings["dog_threshold"] < 1
    assert config.get("dog_head") or settings["dog_scale"] > 0
    evaluation = json.loads((model_dir / "evaluation-valid.json").read_text())["calibration"]
    assert evaluation["calibrated"]["ece"] <= 0.02 < evaluation["uncalibrated"]["ece"]
    assert evaluation["confident"]["precision"] >= 0.9
    assert (model_dir / "reliability-valid.png").stat().st_size > 1000
    assert "calibration" in json.loads((model_dir / METRICS_FILE).read_text())


@pytest.fixture(scope="module")
def fast_model():
    model, _, _, preprocessing = load_model(PROJECT / "models" / "fast")
    return model, preprocessing


def test_the_model_applies_its_calibration_in_forward(fast_model, samples):
    model, preprocessing = fast_model
    image = torch.from_numpy(
        preprocessing(open_image((samples / "Labrador_retriever_06455.jpg").read_bytes()))
    )
    with torch.no_grad():
        logits, dog = model(image[None])
        raw_logits, raw_dog = model.uncalibrated(image[None])
    torch.testing.assert_close(logits, raw_logits / model.calibration["breed_temperature"])
    assert logits.softmax(1).max() > raw_logits.softmax(1).max()  # sharper: the heads were under-confident
    # A dog head's probability is fitted as it is (training.fit_dog): no log-odds map on top of it.
    assert model.dog_head is not None and "dog_scale" not in model.calibration
    torch.testing.assert_close(dog, raw_dog)


def test_non_dog_pictures_are_rarely_called_dogs(fast_model):
    model, preprocessing = fast_model
    assert len(non_dog_images()) >= 30  # scikit-image's and matplotlib's samples plus the drawn ones
    report = non_dog_metrics(model, preprocessing)
    # The committed figure: evaluation-valid.json holds what `training.evaluate` measured.
    committed = json.loads((PROJECT / "models" / "fast" / "evaluation-valid.json").read_text())["non_dogs"]
    assert report["false_dogs"] == committed["false_dogs"]
    assert len(report["false_dogs"]) <= 3
    assert all(name.startswith(("skimage", "matplotlib")) for name in report["false_dogs"])
    for name in ("drawn/grey", "drawn/noise", "skimage/coffee.png", "skimage/rocket.jpg"):
        assert report["dog_probability"][name] < report["dog_threshold"], name
    assert np.isfinite(list(report["dog_probability"].values())).all()
