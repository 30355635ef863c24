"""Training on a few real dog photos: data listing, the artifact, two SageMaker hosts on loopback, resume."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PROJECT, free_port

from classifier.graph import INPUT_NAME, graph_is_current
from classifier.model import CONFIG_FILE, LABELS_FILE, METRICS_FILE, ONNX_FILE, WEIGHTS_FILE, load_model
from classifier.preprocessing import Preprocessing
from classifier.runtime import cpu_session
from training.data import PreprocessedImages, load_image, read_image_folder
from training.jobs.source_bundle import TRAIN_ENTRY, source_archive
from training.options import parse_args

# Deliberately not in alphabetical order of breed name: the label order must follow the folder names.
FOLDERS = ("007.Shih-Tzu", "012.Beagle", "044.Labrador_retriever")
TRAIN_PER_CLASS, VALID_PER_CLASS = 6, 3


def copy_dogs(dogs: Path, destination: Path) -> Path:
    """A miniature dogs/{train,valid} tree of real photos."""
    for split, count in (("train", TRAIN_PER_CLASS), ("valid", VALID_PER_CLASS)):
        for folder in FOLDERS:
            source = next((dogs / split).glob(f"*.{folder.split('.', 1)[1]}"))
            (destination / split / folder).mkdir(parents=True)
            for image in sorted(source.glob("*.jpg"))[:count]:
                shutil.copy(image, destination / split / folder / image.name)
    return destination


def run_training(
    data: Path,
    model_dir: Path,
    *extra: str,
    env: dict | None = None,
    entry: str = "module",
    graph: bool = False,
):
    # "module": python -m training.train in the project; else `entry` is a folder holding the training job's
    # unpacked source archive, started as SageMaker starts it: python sagemaker_train.py in that folder.
    command = [sys.executable, "-m", "training.train"] if entry == "module" else [sys.executable, TRAIN_ENTRY]
    command += [
        "--backbone", "efficientnet-lite0", "--train", str(data / "train"), "--valid", str(data / "valid"),
        "--model-dir", str(model_dir), "--epochs", "3", "--batch-size", "8", "--lr", "3e-3",
        "--threads", "1", "--workers", "0", *extra,
    ]  # fmt: skip
    if not graph:  # the export costs seconds; one run (single_rank) checks it
        command.append("--no-onnx-graph")
    # Strip any SageMaker/torchrun settings of the calling shell: each test states its own.
    base = {
        key: value for key, value in os.environ.items() if not key.startswith(("SM_", "RANK", "WORLD_SIZE"))
    }
    return subprocess.Popen(
        command,
        cwd=PROJECT if entry == "module" else entry,
        env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def head_weights(model_dir: Path) -> torch.Tensor:
    return torch.load(model_dir / WEIGHTS_FILE, weights_only=True)["breed_head.weight"]


@pytest.fixture(scope="module")
def data(dogs, tmp_path_factory) -> Path:
    return copy_dogs(dogs, tmp_path_factory.mktemp("dogs"))


@pytest.fixture(scope="module")
def single_rank(data, tmp_path_factory) -> tuple[Path, str]:
    """One rank, PyTorch features (no cache), run from the training job's source archive the way SageMaker
    starts it: only what the archive holds is importable."""
    model_dir = tmp_path_factory.mktemp("single")
    source = tmp_path_factory.mktemp("sourcedir")
    with tarfile.open(fileobj=io.BytesIO(source_archive())) as archive:
        archive.extractall(source, filter="data")
    output = finish(run_training(data, model_dir, "--no-cache", entry=str(source), graph=True))
    return model_dir, output


def test_labels_follow_folder_order_and_images_are_preprocessed(data):
    train = read_image_folder(data / "train")
    assert train.folders == FOLDERS
    assert train.labels == ["Shih-Tzu", "Beagle", "Labrador_retriever"]
    assert len(train) == len(FOLDERS) * TRAIN_PER_CLASS
    assert list(train.targets) == [0] * 6 + [1] * 6 + [2] * 6

    images = PreprocessedImages(train, Preprocessing.for_backbone("efficientnet-lite2"), positions=[7])
    image, flipped, target = images[0]
    assert image.shape == flipped.shape == (3, 260, 260) and image.dtype == np.float32
    assert target == 1
    np.testing.assert_array_equal(flipped, image[:, :, ::-1])


def test_other_splits_are_indexed_like_the_training_split(data, tmp_path):
    train = read_image_folder(data / "train")
    shutil.copytree(data / "valid" / FOLDERS[2], tmp_path / FOLDERS[2])
    valid = read_image_folder(tmp_path, train.folders)
    assert set(valid.targets) == {2}

    (tmp_path / "999.Unknown_breed").mkdir()
    with pytest.raises(ValueError, match="999.Unknown_breed"):
        read_image_folder(tmp_path, train.folders)


def test_training_writes_a_small_loadable_artifact(single_rank, data, samples):
    model_dir, output = single_rank
    # One tuner-parsable line per epoch, plus the final one.
    assert len(re.findall(r"^epoch=\d+;.*valid_accuracy=[0-9.]+;", output, re.MULTILINE)) == 3
    assert {path.name for path in model_dir.iterdir()} == {
        CONFIG_FILE,
        LABELS_FILE,
        WEIGHTS_FILE,
        METRICS_FILE,
        ONNX_FILE,
    }
    assert (model_dir / WEIGHTS_FILE).stat().st_size < 100_000  # the head only, not the backbone
    # The graph the endpoint runs, checked against these weights when they were made.
    assert "max probability gap to PyTorch" in output
    assert graph_is_current(model_dir / ONNX_FILE, model_dir)

    model, config, labels, preprocessing = load_model(model_dir)
    assert labels == ["Shih-Tzu", "Beagle", "Labrador_retriever"]
    assert config["backbone"] == "efficientnet-lite0" and preprocessing.image_size == 224
    # Calibrated on out-of-fold answers of heads trained the same way on the other folds.
    assert config["calibration"]["breed_temperature"] > 0
    assert 0 <= config["calibration"]["confidence_threshold"] <= 1
    assert re.search(r"^folds: top1_mean=[0-9.]+; top1_std=[0-9.]+;", output, re.MULTILINE)
    image = torch.from_numpy(preprocessing(load_image(samples / "Labrador_retriever_06455.jpg")))[None]
    with torch.inference_mode():
        logits, dog_probability = model(image)
    assert logits.shape == (1, 3)
    assert labels[logits.argmax().item()] == "Labrador_retriever"
    assert dog_probability.item() > 0.5

    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    assert metrics["world_size"] == 1 and metrics["backbone"] == "efficientnet-lite0"
    assert set(metrics["splits"]) == {"train", "valid"}
    assert metrics["splits"]["valid"]["images"] == len(FOLDERS) * VALID_PER_CLASS
    assert set(metrics["per_class_valid_top1"]) == set(labels)
    assert metrics["training_seconds"] > 0
    assert len(metrics["cross_validation"]["fold_top1"]) == 5
    # The reloaded artifact reproduces the accuracy training reported.
    valid = read_image_folder(data / "valid", FOLDERS)
    batch = torch.from_numpy(np.stack([preprocessing(load_image(path)) for path in valid.paths]))
    with torch.inference_mode():
        predicted = model(batch)[0].argmax(1)
    accuracy = (predicted == torch.tensor(valid.targets)).float().mean().item()
    assert accuracy == pytest.approx(metrics["splits"]["valid"]["top1"], abs=1e-6)
    assert accuracy >= 2 / 3  # three breeds the ImageNet backbone knows well


def test_two_sagemaker_hosts_train_as_well_as_one(single_rank, data, tmp_path):
    """Two processes that each believe they are a separate SageMaker instance, joined over loopback."""
    model_dir = tmp_path / "model"
    hosts = {"SM_HOSTS": json.dumps(["algo-1", "algo-2"]), "SM_NUM_GPUS": "0"}
    # algo-1 does not resolve here: --master-addr points both at loopback; all else is as on SageMaker.
    extra = ("--no-cache", "--master-addr", "127.0.0.1", "--master-port", str(free_port()))
    processes = [
        run_training(data, model_dir, *extra, env={**hosts, "SM_CURRENT_HOST": host})
        for host in ("algo-1", "algo-2")
    ]
    outputs = [finish(process) for process in processes]

    assert "rank 0/2" in outputs[0] and "rank 1/2" in outputs[1]
    assert "valid_accuracy=" in outputs[0] and "valid_accuracy=" not in outputs[1]  # rank 0 alone reports
    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    single_metrics = json.loads((single_rank[0] / METRICS_FILE).read_text())
    assert metrics["world_size"] == 2
    assert metrics["splits"]["valid"]["top1"] == pytest.approx(single_metrics["splits"]["valid"]["top1"])
    # Same global batches, gradients averaged across ranks: the same head as one rank, up to rounding.
    torch.testing.assert_close(head_weights(model_dir), head_weights(single_rank[0]), atol=2e-4, rtol=1e-3)
    model, _, labels, _ = load_model(model_dir)
    assert labels == ["Shih-Tzu", "Beagle", "Labrador_retriever"]


def test_resumes_from_the_last_checkpoint(single_rank, data, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    model_dir = tmp_path / "model"
    common = ("--no-cache", "--checkpoint-dir", str(checkpoints))

    first = finish(run_training(data, model_dir, *common, "--stop-after-epochs", "1"))
    assert re.findall(r"^epoch=(\d+);", first, re.MULTILINE) == ["1"]
    assert (checkpoints / "checkpoint.pt").exists() and not model_dir.exists()

    second = finish(run_training(data, model_dir, *common))
    assert "resuming after epoch 1" in second
    assert re.findall(r"^epoch=(\d+);", second, re.MULTILINE) == ["2", "3"]
    # The interrupted run ends where the uninterrupted one did.
    torch.testing.assert_close(head_weights(model_dir), head_weights(single_rank[0]), atol=1e-5, rtol=1e-4)
    history = json.loads((model_dir / METRICS_FILE).read_text())["history"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]


def test_feature_cache_is_reused_with_onnx_runtime(data, tmp_path):
    cache = tmp_path / "cache"
    first = finish(run_training(data, tmp_path / "a", "--cache-dir", str(cache), "--epochs", "1"))
    assert "cached features" not in first
    assert any(path.suffix == ".onnx" for path in cache.iterdir())
    assert len(list(cache.glob("efficientnet-lite0-*.pt"))) == 2  # train and valid

    second = finish(run_training(data, tmp_path / "b", "--cache-dir", str(cache), "--epochs", "1"))
    assert second.count("cached features") == 2
    metrics = [json.loads((tmp_path / run / METRICS_FILE).read_text()) for run in ("a", "b")]
    assert metrics[0]["splits"] == metrics[1]["splits"]


def test_an_ensemble_trains_into_one_artifact(data, samples, tmp_path):
    model_dir = tmp_path / "model"
    backbones = "efficientnet-lite0,efficientnet-lite1"
    output = finish(run_training(data, model_dir, "--no-cache", "--backbone", backbones, "--epochs", "1"))
    assert "valid_single_view=" in output and "valid_flip_tta=" in output

    model, config, labels, preprocessing = load_model(model_dir)
    assert config["backbone"] == backbones and config["test_time_flip"] is True
    assert preprocessing.image_size == 240  # the members share the larger one's input
    assert head_weights(model_dir).shape == (3, 2 * 1280)
    image = torch.from_numpy(preprocessing(load_image(samples / "Labrador_retriever_06455.jpg")))[None]
    with torch.inference_mode():
        logits, dog_probability = model(image)
    assert labels[logits.argmax().item()] == "Labrador_retriever" and dog_probability.item() > 0.5


def test_bad_backbones_are_refused_before_any_work(data, tmp_path):
    process = run_training(data, tmp_path / "model", "--backbone", "efficientnet-lite0,resnet50")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "unknown backbone 'resnet50'" in output and "Traceback" not in output


def test_boolean_hyperparameters_take_a_value_as_sagemaker_passes_them(capsys):
    common = ["--train", "train", "--valid", "valid"]
    assert parse_args([*common, "--test-time-flip", "False"]).test_time_flip is False
    assert parse_args([*common, "--test-time-flip", "true"]).test_time_flip is True
    with pytest.raises(SystemExit):
        parse_args([*common, "--test-time-flip", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_an_ensemble_at_its_members_own_sizes_trains_into_one_input_graph(data, samples, tmp_path):
    model_dir = tmp_path / "model"
    backbones = "efficientnet-lite0,efficientnet-lite1"
    arguments = ("--no-cache", "--backbone", backbones, "--native-sizes", "true", "--epochs", "1")
    finish(run_training(data, model_dir, *arguments, graph=True))

    model, config, labels, preprocessing = load_model(model_dir)
    assert config["member_image_sizes"] == [224, 240] and preprocessing.image_size == 240
    image = torch.from_numpy(preprocessing(load_image(samples / "Labrador_retriever_06455.jpg")))[None]
    with torch.inference_mode():
        logits, _ = model(image)
    assert labels[logits.argmax().item()] == "Labrador_retriever"
    # The graph the endpoint runs takes the one 240 px input and answers as the model does.
    session = cpu_session(model_dir / ONNX_FILE, threads=1)
    graph_logits = session.run(None, {INPUT_NAME: image.numpy()})[0]
    np.testing.assert_allclose(graph_logits, logits.numpy(), rtol=1e-3, atol=1e-3)
