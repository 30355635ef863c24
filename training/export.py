"""The BreedClassifier as an ONNX graph, and the two runners inference chooses between.

Both runners take a float32 NCHW batch and return numpy (breed logits, dog probability). ONNX Runtime runs the
same graph faster than eager PyTorch (1.4x to 3.6x at batch 1 on this project's 2 shared cores, depending on
their other load; `make bench` measures it), so inference prefers it and keeps PyTorch as the fallback when
onnxruntime is missing or the graph does not agree with the model.

`python -m training.export --model-dir DIR` writes DIR/model.onnx for an artifact that should carry its graph.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from training.model import CONFIG_FILE, ONNX_FILE, WEIGHTS_FILE, BreedClassifier

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("breed_logits", "dog_probability")
# The TorchScript exporter handles opset 17 for every op EfficientNet-Lite uses; ONNX Runtime has long run it.
OPSET = 17
# Bump when the export itself changes, so cached graphs from an older exporter are not reused.
EXPORT_FORMAT = "1"
# Largest difference in breed probability or dog probability allowed between the graph and the model on the
# probe batch. Float32 reorderings give ~1e-6; a wrong graph (other weights, say) gives > 1e-2.
AGREEMENT_TOLERANCE = 1e-4
CACHE_ENV = "DOGBREEDS_CACHE"


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


def export_onnx(
    model: torch.nn.Module, path: str | Path, image_size: int, output_names: tuple[str, ...] = OUTPUT_NAMES
) -> Path:
    """Write `model` (by default the whole BreedClassifier, both outputs) as ONNX to `path`, atomically.

    Its input is `INPUT_NAME`, a float32 (batch, 3, image_size, image_size) array; only the batch is dynamic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, image_size, image_size)
    batch_axis = {0: "batch"}
    # Written next to the target, then renamed: a reader never sees half a graph, even with several workers.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".onnx.tmp", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        # The TorchScript exporter needs no extra package (the dynamo one needs onnxscript); its warnings
        # about constant folding are harmless and would drown the server log.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                (example,),
                str(partial_path),
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes={name: batch_axis for name in (INPUT_NAME, *output_names)},
                opset_version=OPSET,
                dynamo=False,
            )
        partial_path.chmod(0o644)  # temporary files are private; the graph is not
        os.replace(partial_path, path)
    finally:
        partial_path.unlink(missing_ok=True)
    return path


def artifact_digest(model_dir: str | Path) -> str:
    """A short hash of what determines the graph: config, trained weights, torch version, export format."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}:{torch.__version__}:{OPSET}".encode())
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "dogbreeds-cache")


def onnx_graph_for(model: BreedClassifier, model_dir: str | Path, image_size: int) -> Path:
    """The artifact's own model.onnx if it has one, else a graph exported once into the cache and reused."""
    shipped = Path(model_dir) / ONNX_FILE
    if shipped.exists():
        return shipped
    cached = cache_dir() / artifact_digest(model_dir) / ONNX_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Several workers start at once: one exports, the others wait for it rather than all exporting.
    with open(cached.parent / "export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.exists():
            log.info("exporting the model to ONNX: %s", cached)
            export_onnx(model, cached, image_size)
    return cached


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


def main() -> None:
    from training.model import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    args = parser.parse_args()
    model, _, _, preprocessing = load_model(args.model_dir)
    path = export_onnx(model, args.model_dir / ONNX_FILE, preprocessing.image_size)
    gap = disagreement(TorchRunner(model), OnnxRunner(path, threads=1), preprocessing.image_size)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), max probability gap to PyTorch {gap:.1e}")


if __name__ == "__main__":
    main()
