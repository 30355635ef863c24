"""The breed classifier and its artifact, with the real pretrained backbone and real photos."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DEFAULT_MODEL, LABRADOR

from classifier.model import (
    CONFIG_FILE,
    IMAGENET_DOG_CLASSES,
    WEIGHTS_FILE,
    BreedClassifier,
    backbone_names,
    breed_name,
    combine_flips,
    init_breed_head_from_imagenet,
    label_from_folder,
    load_model,
    read_config,
    resize_inside,
    save_model,
)
from classifier.preprocessing import Preprocessing, open_image

IMAGENET_LABRADOR = 208  # ImageNet-1k class "Labrador retriever"


@pytest.fixture(scope="module")
def lite0() -> BreedClassifier:
    return BreedClassifier("efficientnet-lite0", num_classes=3).eval()


@pytest.fixture(scope="module")
def labrador(samples) -> torch.Tensor:
    image = open_image((samples / LABRADOR).read_bytes())
    return torch.from_numpy(Preprocessing.for_backbone("efficientnet-lite0")(image))[None]


def test_labels_come_from_folder_names():
    assert label_from_folder("042.Labrador_retriever") == "Labrador_retriever"
    assert label_from_folder("n02099712-Labrador_retriever") == "n02099712-Labrador_retriever"
    assert breed_name("German_short-haired_pointer") == "German short-haired pointer"


def test_features_and_heads_have_the_promised_shapes(lite0, labrador):
    batch = torch.cat([labrador, labrador.flip(3)])
    with torch.inference_mode():
        features = lite0.features(batch)
        logits, dog_probability = lite0.heads(features)
    assert features.shape == (2, 1280)
    assert logits.shape == (2, 3)
    assert dog_probability.shape == (2,)
    assert ((dog_probability > 0.9) & (dog_probability <= 1.0)).all()  # a Labrador is a dog


def test_breed_head_starts_from_the_best_matching_imagenet_rows(lite0, labrador):
    mean_probabilities = torch.zeros(3, 1000)
    mean_probabilities[0, 151] = mean_probabilities[1, IMAGENET_LABRADOR] = mean_probabilities[2, 207] = 1.0
    assert init_breed_head_from_imagenet(lite0, mean_probabilities) == [151, IMAGENET_LABRADOR, 207]
    with torch.inference_mode():
        logits, _ = lite0(labrador)
    assert logits.argmax().item() == 1
    assert IMAGENET_DOG_CLASSES.start == 151 and IMAGENET_DOG_CLASSES.stop == 276


def test_artifact_round_trip_stores_only_the_head(lite0, labrador, tmp_path):
    labels = ["Chihuahua", "Labrador_retriever", "golden_retriever"]
    save_model(lite0, tmp_path, labels, version="7")
    stored = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert set(stored) == {"breed_head.weight", "breed_head.bias"}
    config, read_labels, preprocessing = read_config(tmp_path)
    assert (config["backbone"], config["version"], read_labels) == ("efficientnet-lite0", "7", labels)
    assert preprocessing == Preprocessing.for_backbone("efficientnet-lite0")

    loaded, _, _, _ = load_model(tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(labrador)[0], lite0(labrador)[0])


def test_labels_and_outputs_must_agree(lite0, tmp_path):
    save_model(lite0, tmp_path, ["a", "b", "c"])
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "num_classes": 4}))
    with pytest.raises(ValueError, match="3 labels for 4 outputs"):
        read_config(tmp_path)


@pytest.fixture(scope="module")
def ensemble() -> BreedClassifier:
    return BreedClassifier("efficientnet-lite0,efficientnet-lite1", num_classes=3).eval()


def test_backbone_specs_name_one_backbone_or_several():
    assert backbone_names("efficientnet-lite2") == ("efficientnet-lite2",)
    assert backbone_names("efficientnet-lite0, efficientnet-lite2") == (
        "efficientnet-lite0",
        "efficientnet-lite2",
    )
    with pytest.raises(ValueError, match="unknown backbone 'efficientnet-lite9'"):
        backbone_names("efficientnet-lite0,efficientnet-lite9")
    with pytest.raises(ValueError, match="twice"):
        backbone_names("efficientnet-lite0,efficientnet-lite0")


def test_an_ensemble_concatenates_its_members_features(ensemble, lite0, labrador):
    with torch.inference_mode():
        features = ensemble.features(labrador)
        alone = lite0.features(labrador)
        _, dog_probability = ensemble.heads(features)
    assert features.shape == (1, 2 * 1280)
    torch.testing.assert_close(features[:, :1280], alone)  # the same pretrained lite0 is its first member
    assert 0.9 < dog_probability.item() <= 1.0
    assert Preprocessing.for_backbones(backbone_names(ensemble.backbone_name)).image_size == 240


def test_an_ensemble_head_starts_from_every_members_imagenet_rows(ensemble, labrador):
    mean_probabilities = torch.zeros(3, 1000)
    mean_probabilities[0, 151] = mean_probabilities[1, IMAGENET_LABRADOR] = mean_probabilities[2, 207] = 1.0
    init_breed_head_from_imagenet(ensemble, mean_probabilities)
    with torch.inference_mode():
        logits, _ = ensemble(labrador)
        features = ensemble.features(labrador).split(1280, dim=1)
        # The start is the members' mean ImageNet logit of each breed's matching class.
        member_logits = [member._fc(view) for member, view in zip(ensemble.backbones, features, strict=True)]
    expected = torch.stack(member_logits).mean(0)[:, [151, IMAGENET_LABRADOR, 207]]
    torch.testing.assert_close(logits, expected)
    assert logits.argmax().item() == 1


def test_test_time_flip_answers_both_views_combined(lite0, labrador, tmp_path):
    with torch.inference_mode():
        logits, dog = lite0(labrador)
        mirrored_logits, mirrored_dog = lite0(labrador.flip(3))
    flipping = BreedClassifier("efficientnet-lite0", num_classes=3, test_time_flip=True).eval()
    flipping.breed_head.load_state_dict(lite0.breed_head.state_dict())
    with torch.inference_mode():
        combined, combined_dog = flipping(labrador)
    torch.testing.assert_close(combined, combine_flips(logits, mirrored_logits))
    torch.testing.assert_close(combined_dog, (dog + mirrored_dog) / 2)

    save_model(flipping, tmp_path, ["a", "b", "c"])
    loaded, config, _, _ = load_model(tmp_path)
    assert config["test_time_flip"] is True and loaded.test_time_flip


def test_default_model_knows_the_sample_labrador(samples):
    model, config, labels, preprocessing = load_model(DEFAULT_MODEL)
    image = torch.from_numpy(preprocessing(open_image((samples / LABRADOR).read_bytes())))[None]
    with torch.inference_mode():
        logits, dog_probability = model(image)
    probabilities = logits.softmax(1)[0]
    assert labels[probabilities.argmax().item()] == "Labrador_retriever"
    assert probabilities.max().item() > 0.5
    assert dog_probability.item() > 0.5
    assert len(labels) == config["num_classes"] == 120


def test_members_at_their_own_sizes_see_the_one_input_resized_inside(ensemble, labrador, tmp_path):
    native = BreedClassifier(
        "efficientnet-lite0,efficientnet-lite1", num_classes=3, member_sizes=[224, 240]
    ).eval()
    image = resize_inside(labrador, 240)
    with torch.inference_mode():
        features = native.features(image)
        smaller = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear")
        lite0_alone = ensemble.backbones[0]._avg_pooling(ensemble.backbones[0].extract_features(smaller))
        shared = ensemble.features(image)
    torch.testing.assert_close(features[:, :1280], lite0_alone.flatten(1))
    torch.testing.assert_close(features[:, 1280:], shared[:, 1280:])  # lite1's own size is the input's
    assert not torch.allclose(features[:, :1280], shared[:, :1280])

    save_model(native, tmp_path, ["a", "b", "c"])
    loaded, config, _, _ = load_model(tmp_path)
    assert config["member_image_sizes"] == [224, 240] and loaded.member_sizes == (224, 240)
    with pytest.raises(ValueError, match="1 member sizes for 2 backbones"):
        BreedClassifier("efficientnet-lite0,efficientnet-lite1", num_classes=3, member_sizes=[224])
