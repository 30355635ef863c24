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

from classifier import cpu, graph, runtime
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


def qualified(model_dir: Path, holds_on: tuple[str, ...] | None = None) -> None:
    """Figures saying its int8 graph met the bar, for this model version, as training.quantize writes, and
    hold on `holds_on` (default: on this machine's class of CPU)."""
    figures = {
        "default": True,
        "source_digest": graph.source_digest(model_dir),
        "holds_on": list(holds_on or (cpu.this_cpu()["class"],)),
    }
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


def test_int8_is_not_served_on_a_cpu_its_figures_do_not_hold_for(fast_model, tmp_path, caplog):
    model_dir = tmp_path / "model"
    shutil.copytree(fast_model, model_dir)
    here = cpu.this_cpu()["class"]
    elsewhere = next(name for name in cpu.CPU_CLASSES if name != here)
    qualified(model_dir, holds_on=(elsewhere,))
    assert runtime.int8_is_default(model_dir) and not runtime.int8_is_default(model_dir, here)
    with caplog.at_level(logging.INFO):
        predictor = inference.load_predictor(model_dir, runtime="auto", threads=1)
    assert predictor.runtime == "onnxruntime"
    assert f"its figures hold on {elsewhere}, and this CPU is {here}; serving the fp32 graph" in caplog.text


LINUX_FLAGS = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx fma"


@pytest.mark.parametrize(
    ("flags", "machine", "features", "expected"),
    [
        # Sapphire Rapids: VNNI twice over and AMX.
        (
            f"{LINUX_FLAGS} avx2 avx512f avx512_vnni avx_vnni amx_tile amx_int8",
            "x86_64",
            ["avx2", "avx512_vnni", "avx_vnni", "amx_int8"],
            cpu.X86_VNNI,
        ),
        # Skylake-SP: AVX-512 without VNNI, whose int8 pairs still add up in 16 bits.
        (f"{LINUX_FLAGS} avx2 avx512f avx512bw", "x86_64", ["avx2"], cpu.X86_NO_VNNI),
        # AMD EPYC (Zen 2/3): AVX2 only.
        (f"{LINUX_FLAGS} avx2", "x86_64", ["avx2"], cpu.X86_NO_VNNI),
        ("fp asimd asimddp", "aarch64", [], cpu.OTHER),
    ],
)
def test_the_cpu_class_follows_the_int8_features(flags, machine, features, expected):
    cpuinfo = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert cpu.cpu_features(cpuinfo) == features
    assert cpu.cpu_class(features, machine) == expected


def test_this_cpu_reads_the_machine_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    here = cpu.this_cpu()
    assert here["features"] == [feature for feature in cpu.INT8_FEATURES if feature in flags]
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert here["class"] == (cpu.X86_VNNI if vnni else cpu.X86_NO_VNNI)


def test_only_a_graph_that_cannot_saturate_holds_on_both_x86_classes():
    assert cpu.holds_on(cpu.X86_VNNI, saturation_free=False) == [cpu.X86_VNNI]
    assert cpu.holds_on(cpu.X86_NO_VNNI, saturation_free=False) == [cpu.X86_NO_VNNI]
    assert cpu.holds_on(cpu.X86_VNNI, saturation_free=True) == [cpu.X86_VNNI, cpu.X86_NO_VNNI]
    assert cpu.holds_on(cpu.OTHER, saturation_free=True) == [cpu.OTHER]
    assert quantize.VARIANTS["qdq-float-stem-heads-reduce-range"].saturation_free
    assert quantize.VARIANTS["qdq-float-stem-heads-u8u8"].saturation_free
    assert not quantize.VARIANTS["qdq-per-channel-float-stem-heads"].saturation_free


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
    here = cpu.this_cpu()["class"]
    qualified(model_dir, holds_on=tuple(name for name in cpu.CPU_CLASSES if name != here))
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
