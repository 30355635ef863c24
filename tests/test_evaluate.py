"""`python -m training.evaluate` on a tiny trained model and a few real photos."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT
from PIL import Image

from classifier.graph import source_digest
from classifier.model import BreedClassifier, init_breed_head_from_imagenet, save_model
from training.evaluate import parse_args

# ImageNet-1k rows of the three breeds: a head that is exactly the backbone's own knowledge of them.
BREEDS = {"Beagle": 162, "Labrador_retriever": 208, "Pomeranian": 259}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    model = BreedClassifier("efficientnet-lite0", num_classes=len(BREEDS))
    matches = torch.zeros(len(BREEDS), 1000)
    for position, row in enumerate(BREEDS.values()):
        matches[position, row] = 1.0
    init_breed_head_from_imagenet(model, matches)
    directory = tmp_path_factory.mktemp("model")
    save_model(model, directory, list(BREEDS))
    return directory


@pytest.fixture(scope="module")
def data(dogs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("valid")
    for breed in BREEDS:
        source = next((dogs / "valid").glob(f"*.{breed}"))
        (root / source.name).mkdir()
        for image in sorted(source.glob("*.jpg"))[:4]:
            shutil.copy(image, root / source.name / image.name)
    return root


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--threads", "1", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_prints_accuracy_and_writes_a_chart_where_results_go(model_dir, data, tmp_path):
    before = sorted(path.name for path in model_dir.iterdir())
    output = tmp_path / "evaluation"
    result = evaluate("--model-dir", str(model_dir), "--data", str(data), "--output-dir", str(output))
    assert result.returncode == 0, result.stderr
    top1, top5 = map(float, re.search(r"top1=([0-9.]+) top5=([0-9.]+)", result.stdout).groups())
    assert top5 == 1.0  # only three classes
    assert top1 >= 0.75

    report = json.loads((output / f"evaluation-{data.name}.json").read_text())
    assert report["top1"] == pytest.approx(top1, abs=1e-4) and report["images"] == 12
    assert report["source_digest"] == source_digest(model_dir)
    assert set(report["per_class_top1"]) == set(BREEDS)
    with Image.open(output / f"per_class_accuracy-{data.name}.png") as chart:
        assert chart.format == "PNG" and chart.width > 300 and chart.height > 200
    assert (output / f"per_class_accuracy-{data.name}.png").stat().st_size < 200_000
    assert f"chart: {output}" in result.stdout

    # The calibration figures: this model has none, so both ways are the same.
    before_ece, after_ece = map(
        float, re.search(r"ece_uncalibrated=([0-9.]+) ece_calibrated=([0-9.]+)", result.stdout).groups()
    )
    assert before_ece == after_ece and 0 <= before_ece <= 1
    assert report["calibration"]["uncalibrated"]["ece"] == pytest.approx(before_ece, abs=1e-4)
    with Image.open(output / f"reliability-{data.name}.png") as diagram:
        assert diagram.format == "PNG" and diagram.width > 200
    assert report["non_dogs"]["images"] >= 30
    assert "non-dog pictures called dogs" in result.stdout
    # The model folder is left as it was: its committed figures change only when asked.
    assert sorted(path.name for path in model_dir.iterdir()) == before


def test_writes_into_the_model_dir_only_when_asked(model_dir, data, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    output = tmp_path / "evaluation"
    result = evaluate(
        "--model-dir", str(copy), "--data", str(data), "--output-dir", str(output), "--write-model-dir",
        "--no-non-dogs", "--no-onnx",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = f"evaluation-{data.name}.json"
    assert (copy / report).read_text() == (output / report).read_text()
    assert json.loads((copy / report).read_text())["top1"] >= 0.75
    for chart in (f"per_class_accuracy-{data.name}.png", f"reliability-{data.name}.png"):
        with Image.open(copy / chart) as image:
            assert image.format == "PNG"


def test_the_default_output_is_a_run_folder_not_the_model():
    args = parse_args(["--model-dir", "models/fast", "--data", "../shared/data/dogs/valid"])
    assert args.output_dir == Path("runs/evaluation/fast") and not args.write_model_dir


def test_unknown_classes_are_a_clear_error(model_dir, data, tmp_path):
    shutil.copytree(data, tmp_path / "valid")
    (tmp_path / "valid" / "200.Dingo").mkdir()
    result = evaluate("--model-dir", str(model_dir), "--data", str(tmp_path / "valid"), "--no-onnx")
    assert result.returncode != 0
    assert "classes the model does not know: ['200.Dingo']" in result.stderr
    assert "Traceback" not in result.stderr
