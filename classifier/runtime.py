"""The runners that execute a BreedClassifier for inference, and the choice between them and of the device.

Both runners take a float32 NCHW batch and return numpy (breed logits, dog probability). ONNX Runtime runs the
same graph faster than eager PyTorch (`make bench` measures by how much), so inference prefers it and keeps
PyTorch as the fallback when onnxruntime is missing or the graph does not agree with the model.

A model directory's model.onnx stamped for its config and weights (training.export) starts without building
the PyTorch model at all. On a CUDA device the runner is ONNX Runtime's CUDA provider where onnxruntime-gpu
is installed, else PyTorch on CUDA: the SageMaker GPU images' torch is built for their CUDA, while the
onnxruntime that code/requirements.txt installs from PyPI runs on the CPU only (onnxruntime-gpu must match the
image's CUDA and cuDNN versions), so PyTorch is what works on a GPU instance with nothing more installed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classifier.cpu import this_cpu
from classifier.graph import INPUT_NAME, OUTPUT_NAMES, graph_is_current, onnx_graph_for, source_digest
from classifier.model import ONNX_FILE, ONNX_INT8_FILE, QUANTIZATION_FILE, BreedClassifier, load_model

log = logging.getLogger(__name__)

# auto: int8 where the model's quantization figures qualify it (training.quantize), else the fp32 graph,
# else PyTorch; the others run what they name or fail.
RUNTIMES = ("auto", "onnx", "onnx-int8", "pytorch")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Device:
    """Where the model runs: `name` is "cpu" or "cuda"; `onnx` whether ONNX Runtime can run there."""

    name: str
    onnx_providers: tuple[str, ...]
    onnx: bool = True


def choose_device(onnx_providers: list[str] | tuple[str, ...], cuda_available: bool) -> Device:
    """The device and runtime for what this machine has: ONNX Runtime's providers, whether torch sees CUDA."""
    if not cuda_available:
        return Device("cpu", (CPU_PROVIDER,))
    if CUDA_PROVIDER in onnx_providers:
        return Device("cuda", (CUDA_PROVIDER, CPU_PROVIDER))
    return Device("cuda", (CPU_PROVIDER,), onnx=False)


def available_device() -> Device:
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    return choose_device(providers, torch.cuda.is_available())


# Largest difference in breed probability or dog probability allowed between the graph and the model on the
# probe batch. Float32 reorderings give ~1e-6; a wrong graph (other weights, say) gives > 1e-2.
AGREEMENT_TOLERANCE = 1e-4


class TorchRunner:
    """Eager PyTorch: the reference, and the fallback."""

    name = "pytorch"

    def __init__(self, model: BreedClassifier, device: str = "cpu"):
        self.device = device
        self.model = model.eval().to(device)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            breed_logits, dog_probability = self.model(torch.from_numpy(images).to(self.device))
        return breed_logits.cpu().numpy(), dog_probability.cpu().numpy()


class OnnxRunner:
    """ONNX Runtime, on the CPU unless given the CUDA provider."""

    def __init__(
        self,
        onnx_path: str | Path,
        threads: int,
        providers: tuple[str, ...] = (CPU_PROVIDER,),
        name="onnxruntime",
    ):
        self.path = Path(onnx_path)
        self.name = name
        self.session = cpu_session(onnx_path, threads, providers)
        # ONNX Runtime falls back to the CPU when a provider cannot start; say where it really runs.
        self.device = "cuda" if self.session.get_providers()[0] == CUDA_PROVIDER else "cpu"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        breed_logits, dog_probability = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return breed_logits, dog_probability


def cpu_session(onnx_path: str | Path, threads: int, providers: tuple[str, ...] = (CPU_PROVIDER,)):
    """An ONNX Runtime session with `threads` intra-op threads for the CPU's share of the work. Raises
    ImportError without onnxruntime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads otherwise spin for work, taking the CPU from the threads decoding the next
    # requests' images; measured here with the CPUs shared, spinning doubled the time of a batch of one.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=list(providers))


def disagreement(reference: TorchRunner, candidate: OnnxRunner, image_size: int) -> float:
    """Largest difference in breed and dog probabilities between two runners on a fixed probe batch."""
    probe = np.random.default_rng(0).standard_normal((2, 3, image_size, image_size), dtype=np.float32)
    expected_logits, expected_dog = reference(probe)
    logits, dog = candidate(probe)
    breed_gap = np.abs(softmax(expected_logits) - softmax(logits)).max()
    return float(max(breed_gap, np.abs(expected_dog - dog).max()))


def onnx_runner_for(
    model: BreedClassifier,
    model_dir: str | Path,
    image_size: int,
    threads: int,
    providers: tuple[str, ...] = (CPU_PROVIDER,),
) -> OnnxRunner:
    """An ONNX Runtime runner checked against the PyTorch model.

    Raises ImportError when onnxruntime is not installed and ValueError when the graph does not agree with the
    model (for example a stale model.onnx shipped beside newer weights).
    """
    runner = OnnxRunner(onnx_graph_for(model, model_dir, image_size), threads=threads, providers=providers)
    gap = disagreement(TorchRunner(model), runner, image_size)
    if gap > AGREEMENT_TOLERANCE:
        raise ValueError(f"{runner.path} disagrees with the PyTorch model (max probability gap {gap:.2e})")
    return runner


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def int8_refusal(model_dir: str | Path, cpu_class: str | None = None) -> str | None:
    """Why the model's int8 graph is not its default runtime, or None when it is.

    Its figures on the valid split (training.quantize's record) must qualify, for this very config and these
    weights (a recalibrated or retrained model is measured again), and, given `cpu_class` (classifier.cpu),
    hold for that class of CPU: ONNX Runtime's int8 kernels compute differently on x86 CPUs without VNNI.
    """
    path = Path(model_dir) / QUANTIZATION_FILE
    if not path.is_file():
        return f"no {QUANTIZATION_FILE}"
    record = json.loads(path.read_text())
    if record.get("source_digest") != source_digest(model_dir):
        return f"{QUANTIZATION_FILE} was measured for other weights"
    if record.get("default") is not True:
        return f"int8 did not qualify on the valid split ({QUANTIZATION_FILE})"
    held = record.get("holds_on") or []
    if cpu_class is not None and cpu_class not in held:
        return (
            f"its figures hold on {', '.join(held) or 'no recorded CPU class'}, and this CPU is {cpu_class}"
        )
    return None


def int8_is_default(model_dir: str | Path, cpu_class: str | None = None) -> bool:
    """Whether the int8 graph is the model's default runtime (on a CPU of `cpu_class`; None: on some CPU)."""
    return int8_refusal(model_dir, cpu_class) is None


def load_runner(
    model_dir: str | Path, image_size: int, runtime: str, threads: int, device: Device | None = None
) -> OnnxRunner | TorchRunner:
    """The runner for `runtime` (one of RUNTIMES) on `device` (default: what this machine has).

    Raises ValueError for an unknown runtime, a missing or stale int8 graph, or an fp32 graph that disagrees
    with the model; ImportError for ONNX Runtime without onnxruntime ("auto" falls back to PyTorch instead).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    device = device or available_device()
    model_dir = Path(model_dir)
    if runtime == "pytorch" or (runtime == "auto" and not device.onnx):
        return TorchRunner(load_model(model_dir)[0], device.name)
    int8 = model_dir / ONNX_INT8_FILE
    if runtime == "onnx-int8":
        if graph_is_current(int8, model_dir):
            return OnnxRunner(int8, threads, device.onnx_providers, name="onnxruntime-int8")
        raise ValueError(f"{int8} is missing or built for other weights: run python -m training.quantize")
    if runtime == "auto" and device.name == "cpu":
        cpu = this_cpu()["class"]
        refusal = int8_refusal(model_dir, cpu)
        if refusal is None and graph_is_current(int8, model_dir):
            return OnnxRunner(int8, threads, device.onnx_providers, name="onnxruntime-int8")
        if refusal is None:
            log.warning("%s is missing or stale; serving the fp32 graph", int8)
        elif int8.exists() or (model_dir / QUANTIZATION_FILE).exists():
            log.info("not serving %s: %s; serving the fp32 graph", int8.name, refusal)
    try:
        shipped = model_dir / ONNX_FILE
        if graph_is_current(shipped, model_dir):
            return OnnxRunner(shipped, threads, device.onnx_providers)
        log.warning(
            "%s is missing or not stamped for these weights: exporting and checking it now, which slows "
            "this start (python -m training.export --model-dir %s builds it once)",
            shipped,
            model_dir,
        )
        model = load_model(model_dir)[0]
        return onnx_runner_for(model, model_dir, image_size, threads, device.onnx_providers)
    # Whatever keeps the graph from running (no onnxruntime, a read-only cache, an export or runtime
    # failure, a graph that disagrees), PyTorch still can: serve slower rather than not at all.
    except Exception as error:
        if runtime != "auto":
            raise
        log.warning("ONNX Runtime unavailable (%s: %s); serving with PyTorch", type(error).__name__, error)
        return TorchRunner(load_model(model_dir)[0], device.name)
