"""The runners that execute a BreedClassifier for inference, and the choice between them.

Both runners take a float32 NCHW batch and return numpy (breed logits, dog probability). ONNX Runtime runs the
same graph faster than eager PyTorch (`make bench` measures by how much), so inference prefers it and keeps
PyTorch as the fallback when onnxruntime is missing or the graph does not agree with the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.export import INPUT_NAME, OUTPUT_NAMES, onnx_graph_for
from training.model import BreedClassifier

# Largest difference in breed probability or dog probability allowed between the graph and the model on the
# probe batch. Float32 reorderings give ~1e-6; a wrong graph (other weights, say) gives > 1e-2.
AGREEMENT_TOLERANCE = 1e-4


class TorchRunner:
    """Eager PyTorch: the reference, and the fallback."""

    name = "pytorch"

    def __init__(self, model: BreedClassifier):
        self.model = model.eval()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            breed_logits, dog_probability = self.model(torch.from_numpy(images))
        return breed_logits.numpy(), dog_probability.numpy()


class OnnxRunner:
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, threads: int):
        self.path = Path(onnx_path)
        self.session = cpu_session(onnx_path, threads)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        breed_logits, dog_probability = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return breed_logits, dog_probability


def cpu_session(onnx_path: str | Path, threads: int):
    """An ONNX Runtime session on the CPU with `threads` intra-op threads. Raises ImportError without
    onnxruntime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads otherwise spin for work, taking the CPU from the threads decoding the next
    # requests' images; measured here with the CPUs shared, spinning doubled the time of a batch of one.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def disagreement(reference: TorchRunner, candidate: OnnxRunner, image_size: int) -> float:
    """Largest difference in breed and dog probabilities between two runners on a fixed probe batch."""
    probe = np.random.default_rng(0).standard_normal((2, 3, image_size, image_size), dtype=np.float32)
    expected_logits, expected_dog = reference(probe)
    logits, dog = candidate(probe)
    breed_gap = np.abs(softmax(expected_logits) - softmax(logits)).max()
    return float(max(breed_gap, np.abs(expected_dog - dog).max()))


def onnx_runner_for(
    model: BreedClassifier, model_dir: str | Path, image_size: int, threads: int
) -> OnnxRunner:
    """An ONNX Runtime runner checked against the PyTorch model.

    Raises ImportError when onnxruntime is not installed and ValueError when the graph does not agree with the
    model (for example a stale model.onnx shipped beside newer weights).
    """
    runner = OnnxRunner(onnx_graph_for(model, model_dir, image_size), threads=threads)
    gap = disagreement(TorchRunner(model), runner, image_size)
    if gap > AGREEMENT_TOLERANCE:
        raise ValueError(f"{runner.path} disagrees with the PyTorch model (max probability gap {gap:.2e})")
    return runner


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
