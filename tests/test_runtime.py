"""Which runner and device the handlers choose, and the checked graphs they start from."""

from __future__ import annotations

import json
import logging
import shutil
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import DOGS, PROJECT

from classifier import graph, runtime
from classifier.checked_graph import checked_graph_for
from classifier.model import ONNX_FILE, ONNX_INT8_FILE, QUANTIZATION_FILE, WEIGHTS_FILE
from classifier.runtime import CPU_PROVIDER, CUDA_PROVIDER, Device, choose_device
from serving import contract, inference
from training import quantize

FAST_MODEL = PROJECT / "models" / "fast"


@pytest.mark.parametrize(
    ("providers", "cuda", "expected"),
    [
        ([CPU_PROVIDER], False, Device("cpu", (CPU_PROVIDER,))),
        # onnxruntime-gpu on a machine without a usable GPU: still the CPU.
        ([CUDA_PROVIDER, CPU_PROVIDER], False, Device("cpu", (CPU_PROVIDER,))),
        ([CUDA_PROVIDER, CPU_PROVIDER], True, Device("cuda", (CUDA_PROVIDER, CPU_PROVIDER))),
        # The PyPI onnxruntime the archive installs has no CUDA provider: PyTorch runs on the GPU.
        ([CPU_PROVIDER], True, Device("cuda", (CPU_PROVIDER,), onnx=False)),
        ([], True, Device("cuda", (CPU_PROVIDER,), onnx=False)),
    ],
)
def test_the_device_follows_what_the_machine_has(providers, cuda, expected):
    assert choose_device(providers, cuda) == expected


def test_the_available_device_is_what_torch_sees():
    assert runtime.available_device().name == ("cuda" if torch.cuda.is_available() else "cpu")


def qualified(model_dir: Path) -> None:
    """Figures saying its int8 graph met the bar, for this model version, as training.quantize writes."""
    figures = {"default": True, "source_digest": graph.source_digest(model_dir)}
    (model_dir / QUANTIZATION_FILE).write_text(json.dumps(figures))


@pytest.fixture(scope="module")
def fast_model(tmp_path_factory) -> Path:
    """A copy of the committed fast model with its checked graph (built here when `make setup` has not)."""
    model_dir = tmp_path_factory.mktemp("fast") / "model"
    shutil.copytree(FAST_MODEL, model_dir, ignore=shutil.ignore_patterns("*.onnx", QUANTIZATION_FILE))
    shutil.copy(checked_graph_for(FAST_MODEL), model_dir / ONNX_FILE)
    return model_dir


def test_a_stamped_graph_starts_without_building_the_pytorch_model(fast_model, monkeypatch, labrador):
    def no_pytorch_model(*_):
        raise AssertionError("the PyTorch model was built")

    monkeypatch.setattr(runtime, "load_model", no_pytorch_model)
    predictor = inference.load_predictor(fast_model, runtime="auto", threads=1)
    assert (predictor.runtime, predictor.device) == ("onnxruntime", "cpu")
    assert predictor.runner.path == fast_model / ONNX_FILE
    answer = inference.predict_fn(inference.input_fn(labrador, contract.JPEG), predictor)
    assert answer["predictions"][0]["label"] == "Labrador_retriever"


def test_the_stamp_follows_the_weights(fast_model, tmp_path):
    assert graph.graph_is_current(fast_model / ONNX_FILE, fast_model)
    retrained = tmp_path / "model"
    shutil.copytree(fast_model, retrained)
    weights = torch.load(retrained / WEIGHTS_FILE, weights_only=True)
    weights["breed_head.bias"] += 1.0
    torch.save(weights, retrained / WEIGHTS_FILE)
    assert not graph.graph_is_current(retrained / ONNX_FILE, retrained)


def test_int8_without_its_graph_is_refused_and_auto_keeps_fp32(fast_model, tmp_path, caplog):
    model_dir = tmp_path / "model"
    shutil.copytree(fast_model, model_dir)
    with pytest.raises(ValueError, match="training.quantize"):
        inference.load_predictor(model_dir, runtime="onnx-int8", threads=1)
    qualified(model_dir)
    with caplog.at_level(logging.WARNING):
        predictor = inference.load_predictor(model_dir, runtime="auto", threads=1)
    assert predictor.runtime == "onnxruntime"
    assert "serving the fp32 graph" in caplog.text


@pytest.mark.slow  # calibrates and quantizes a real graph: a minute or more on 2 shared cores
def test_int8_graph_serves_when_its_figures_qualify(fast_model, tmp_path, labrador):
    model_dir = tmp_path / "model"
    shutil.copytree(fast_model, model_dir)
    preprocessing = inference.load_predictor(model_dir, runtime="onnx", threads=1).preprocessing
    calibration = quantize.SplitPixels(quantize.calibration_paths(DOGS / "train", count=16), preprocessing)
    variant = quantize.VARIANTS[quantize.DEFAULT_VARIANT]
    quantize.quantize(model_dir / ONNX_FILE, model_dir / ONNX_INT8_FILE, calibration, variant)
    graph.stamp_graph(model_dir / ONNX_INT8_FILE, graph.DIGEST_KEY, graph.source_digest(model_dir))

    assert inference.load_predictor(model_dir, runtime="auto", threads=1).runtime == "onnxruntime"
    # Figures measured for another version of the model (say, before it was recalibrated) do not count.
    (model_dir / QUANTIZATION_FILE).write_text(
        json.dumps({"default": True, "source_digest": "0123456789abcdef"})
    )
    assert inference.load_predictor(model_dir, runtime="auto", threads=1).runtime == "onnxruntime"
    qualified(model_dir)
    predictor = inference.load_predictor(model_dir, runtime="auto", threads=1)
    assert predictor.runtime == "onnxruntime-int8"
    answer = inference.predict_fn(inference.input_fn(labrador, contract.JPEG), predictor)
    assert answer["predictions"][0]["label"] == "Labrador_retriever"


def test_ping_names_the_runtime_and_the_device(endpoint):
    with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=10) as response:  # noqa: S310 - loopback
        body = json.loads(response.read())
    assert body["status"] == "ready"
    assert body["device"] == runtime.available_device().name
    assert body["runtime"] in ("onnxruntime", "onnxruntime-int8")
