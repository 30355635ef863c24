"""The dog/not-dog answer fitted on real photos: the pets split, the dog head's fitting on small data, the
committed models' held-out figures, and real cat photos through the real models."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import DEFAULT_MODEL, PROJECT, SHARED

from classifier.model import (
    CONFIG_FILE,
    DOG_SETTINGS,
    WEIGHTS_FILE,
    Thresholds,
    dog_head_probability,
    load_model,
    read_config,
)
from serving import contract, inference
from training import dog_head, fit_dog, pets
from training.features import SplitFeatures

PETS = SHARED / "data" / "pets"
MODELS = [DEFAULT_MODEL, PROJECT / "models" / "fast"]
# A black cat in the held-out part that both models, before their dog head, answered as a Schipperke with
# "confident": true.
CONFIDENT_SCHIPPERKE_CAT = "cat.4492.jpg"


def test_the_pets_split_is_deterministic_disjoint_and_about_half():
    photos = pets.read_pets(PETS)
    fit, heldout = pets.part_mask(photos, pets.FIT), pets.part_mask(photos, pets.HELDOUT)
    assert not (fit & heldout).any() and (fit | heldout).all()
    assert torch.equal(fit, pets.part_mask(pets.read_pets(PETS), pets.FIT))
    for label in (0, 1):  # cats and dogs alike
        of_label = torch.tensor(photos.targets) == label
        assert 0.4 < fit[of_label].double().mean() < 0.6
    # By the name alone: the same photo lands on the same side whatever else the folder holds.
    assert pets.part_of(CONFIDENT_SCHIPPERKE_CAT) == pets.HELDOUT
    assert {pets.part_of(f"cat.{n}.jpg") for n in range(50)} == {pets.FIT, pets.HELDOUT}


def test_a_pets_folder_needs_cats_and_dogs(tmp_path):
    (tmp_path / "cats").mkdir()
    shutil.copy(PETS / "cats" / CONFIDENT_SCHIPPERKE_CAT, tmp_path / "cats")
    with pytest.raises(ValueError, match="dogs"):
        pets.read_pets(tmp_path)
    (tmp_path / "horses").mkdir()
    shutil.copy(PETS / "cats" / CONFIDENT_SCHIPPERKE_CAT, tmp_path / "horses")
    with pytest.raises(ValueError, match="horses"):
        pets.read_pets(tmp_path)


SCALES = torch.logspace(-1, 2, 8)


def two_clusters(dogs: int, others: int, seed: int = 0):
    """Dogs around +1 and others around -1 on the first feature (unit spread), noise elsewhere at other
    scales: the best even-odds boundary is 0 on the first feature."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(dogs + others, len(SCALES), generator=generator) * SCALES
    positive = torch.cat([torch.ones(dogs), torch.zeros(others)]).bool()
    features[:, 0] = torch.randn(dogs + others, generator=generator) + torch.where(positive, 1.0, -1.0)
    return features, positive


def test_the_logistic_fit_finds_the_even_odds_boundary_however_unbalanced_the_sides():
    features, positive = two_clusters(dogs=5_000, others=500)
    weights = dog_head.balanced_weights(positive, torch.where(positive, 0, 1))
    assert weights[positive].sum() == pytest.approx(0.5) and weights[~positive].sum() == pytest.approx(0.5)
    weight, bias = dog_head.fit_logistic(features, positive, weights, l2=1e-4)
    # The standardisation is folded back: the head works on the raw features.
    on_boundary = torch.zeros(1, features.shape[1])
    assert torch.sigmoid(on_boundary @ weight.T + bias).item() == pytest.approx(0.5, abs=0.05)
    # Two unit Gaussians 2 apart: log-odds 2x, so the slope on the first feature is about 2.
    assert weight[0, 0].item() == pytest.approx(2.0, rel=0.15)
    # The noise moves the log-odds little, at whatever scale it comes.
    assert (weight[0, 1:] * SCALES[1:]).abs().max() < 0.2


def test_sources_share_their_side_equally():
    positive = torch.tensor([True] * 6 + [False] * 3)
    source = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    weights = dog_head.balanced_weights(positive, source)
    assert weights[:4].sum() == pytest.approx(0.25) and weights[4:6].sum() == pytest.approx(0.25)
    assert weights[6:].sum() == pytest.approx(0.5)


def test_out_of_fold_answers_come_from_heads_that_did_not_see_them():
    features, positive = two_clusters(dogs=200, others=200)
    # One mislabelled image: a head that saw it may learn it, one that did not cannot.
    features[0, 0] = -6.0
    split = SplitFeatures(features, None, positive.long())
    masses = SplitFeatures(torch.full((400,), 0.9), None, positive.long())
    weights = dog_head.balanced_weights(positive, torch.where(positive, 0, 1))
    answers = dog_head.out_of_fold(split, masses, positive, weights, 0.0, False, folds=5, l2=1e-4)
    assert answers[0] < 0.01
    # The best any head can do on two unit Gaussians 2 apart is 84% right.
    assert ((answers >= 0.5) == positive)[1:].double().mean() > 0.8


def test_the_imagenet_floor_keeps_not_a_dog_whatever_the_head_says():
    calibration = {"dog_imagenet_floor": 0.1}
    head_logit = torch.tensor([6.0, 6.0, -6.0])
    masses = torch.tensor([0.001, 0.999, 0.999])
    probability = dog_head_probability(head_logit, masses, calibration)
    assert probability[0] < 0.5  # far under the floor: not a dog
    assert probability[1] == pytest.approx(torch.sigmoid(torch.tensor(6.0)).item())  # the head decides
    assert probability[2] < 0.01
    assert torch.equal(dog_head_probability(head_logit, masses, {}), torch.sigmoid(head_logit))


def test_the_confident_dog_threshold_lies_above_every_risky_non_dog():
    out_of_fold = torch.tensor([0.9, 0.7, 0.6, 0.3, 0.95])
    negative = torch.tensor([False, True, True, True, False])
    confident_breed = torch.tensor([True, False, True, True, True])
    threshold = fit_dog.confident_dog_threshold(out_of_fold, negative, confident_breed, 0.5)
    assert 0.6 < threshold < 0.6001  # the non-dog at 0.7 got no confident breed answer
    assert fit_dog.confident_dog_threshold(out_of_fold, negative, ~confident_breed & False, 0.5) == 0.5
    thresholds = Thresholds(confidence=0.7, dog=0.5, confident_dog=threshold)
    assert not thresholds.is_confident(0.99, 0.6) and thresholds.is_confident(0.99, 0.61)
    assert not thresholds.is_confident(0.69, 0.99)


def test_the_floor_follows_the_imagenet_calibration():
    calibration = {"dog_scale": 3.0, "dog_shift": -1.5}
    floor = fit_dog.imagenet_floor(calibration, 0.001)
    log_odds = math.log(floor / (1 - floor))
    assert 1 / (1 + math.exp(-(3.0 * log_odds - 1.5))) == pytest.approx(0.001)
    assert fit_dog.imagenet_floor({"dog_imagenet_floor": 0.2}, 0.001) == 0.2
    with pytest.raises(ValueError, match="floor"):
        fit_dog.imagenet_floor({}, 0.001)


@pytest.mark.parametrize("model_dir", MODELS, ids=lambda path: path.name)
def test_committed_models_meet_the_held_out_goals(model_dir):
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert config["dog_head"] is True
    assert "dog_head.weight" in torch.load(model_dir / WEIGHTS_FILE, weights_only=True)
    settings = config["calibration"]
    assert set(DOG_SETTINGS) - {"dog_scale", "dog_shift", "dog_recall"} <= set(settings)
    assert settings["confident_dog_threshold"] >= settings["dog_threshold"]
    result = json.loads((model_dir / fit_dog.RESULT_FILE).read_text())
    after = result["after"]
    assert after["thresholds"]["dog"] == settings["dog_threshold"]
    assert after["cats_called_dogs_share"] <= 0.01 and after["cats_confident"] == 0
    assert after["dogs_not_a_dog_share"] <= 0.015
    # Measured on the held-out part only.
    for name in after["cats_called_dogs_files"] + after["dogs_not_a_dog_files"]:
        assert pets.part_of(name) == pets.HELDOUT
    assert CONFIDENT_SCHIPPERKE_CAT in result["before"]["cats_confident_files"]


@pytest.fixture(scope="module", params=MODELS, ids=lambda path: path.name)
def predictor(request) -> inference.BreedPredictor:
    # The shipped graph: it must carry the dog head as the PyTorch model does.
    return inference.load_predictor(request.param, runtime="onnx", threads=2)


def test_a_cat_once_a_confident_schipperke_is_neither_a_dog_nor_confident(predictor):
    body = (PETS / "cats" / CONFIDENT_SCHIPPERKE_CAT).read_bytes()
    answer = json.loads(
        inference.output_fn(inference.predict_fn(inference.input_fn(body, contract.JPEG), predictor), None)
    )
    assert answer["is_dog"] is False and answer["confident"] is False
    assert answer["dog_probability"] < predictor.thresholds.dog


def test_real_dog_snapshots_are_dogs(predictor):
    # Held-out dogs the ImageNet-derived answer called "not a dog" for both models.
    result = json.loads((PROJECT / "models" / "fast" / fit_dog.RESULT_FILE).read_text())
    default = json.loads((DEFAULT_MODEL / fit_dog.RESULT_FILE).read_text())
    recovered = sorted(
        (set(result["before"]["dogs_not_a_dog_files"]) & set(default["before"]["dogs_not_a_dog_files"]))
        - set(result["after"]["dogs_not_a_dog_files"])
        - set(default["after"]["dogs_not_a_dog_files"])
    )
    assert recovered
    for name in recovered[:2]:
        body = (PETS / "dogs" / name).read_bytes()
        answer = inference.predict_fn(inference.input_fn(body, contract.JPEG), predictor)
        assert answer["is_dog"] is True, name


def test_fit_dog_on_a_handful_of_photos(tmp_path):
    """The command end to end on the fast model and a few photos: the head lands in the artifact, the
    graph-free model loads with it, and the result names its held-out photos."""
    model_dir = tmp_path / "model"
    shutil.copytree(PROJECT / "models" / "fast", model_dir, ignore=shutil.ignore_patterns("*.onnx", "*.png"))
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    with pytest.raises(SystemExit, match="--refit"):
        fit_dog.main(["--model-dir", str(model_dir), "--pets", str(PETS), "--train", str(PETS)])
    # Start from an ImageNet-derived artifact, as the committed ones did.
    config.pop("dog_head")
    config["trained_prefixes"] = ["breed_head."]
    config["calibration"].update(dog_scale=3.0, dog_shift=-1.5, dog_threshold=0.1)
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    weights = torch.load(model_dir / WEIGHTS_FILE, weights_only=True)
    torch.save({k: v for k, v in weights.items() if k.startswith("breed_head.")}, model_dir / WEIGHTS_FILE)

    photos, train = tmp_path / "pets", tmp_path / "train"
    names = {"cats": sorted((PETS / "cats").iterdir())[:8], "dogs": sorted((PETS / "dogs").iterdir())[:8]}
    for folder, paths in names.items():
        (photos / folder).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, photos / folder)
    breed = sorted((SHARED / "data" / "dogs" / "train").iterdir())[0]
    (train / breed.name).mkdir(parents=True)
    for path in sorted(breed.iterdir())[:6]:
        shutil.copy(path, train / breed.name)

    result = fit_dog.run(
        fit_dog.parse_args(
            ["--model-dir", str(model_dir), "--pets", str(photos), "--train", str(train), "--folds", "2"]
            + ["--cache-dir", str(tmp_path / "cache"), "--threads", "2", "--no-onnx"]
        )
    )
    config, _, _ = read_config(model_dir)
    assert config["dog_head"] and "dog_head." in config["trained_prefixes"]
    assert not {"dog_scale", "dog_shift"} & set(config["calibration"])
    model = load_model(model_dir)[0]
    assert model.dog_head is not None
    assert result["before"]["dog_answer"] == "imagenet" and result["after"]["dog_answer"] == "dog head"
    every = [path.name for paths in names.values() for path in paths]
    heldout = [name for name in every if pets.part_of(name) == pets.HELDOUT]
    assert result["after"]["cats"] + result["after"]["dogs"] == len(heldout)
    assert json.loads((model_dir / fit_dog.RESULT_FILE).read_text()) == result
