"""The BreedClassifier as an ONNX graph: the export, and where a model's graph is found or cached.

The runners that execute the graph live in serving/runtime.py.

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

import torch

from training.model import CONFIG_FILE, ONNX_FILE, WEIGHTS_FILE, BreedClassifier

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("breed_logits", "dog_probability")
# The TorchScript exporter handles opset 17 for every op EfficientNet-Lite uses; ONNX Runtime has long run it.
OPSET = 17
# Bump when the export itself changes, so cached graphs from an older exporter are not reused.
EXPORT_FORMAT = "1"
CACHE_ENV = "DOGBREEDS_CACHE"


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


def main() -> None:
    # Checking the graph is the runtime's job; only this command, not the export, needs it.
    from serving.runtime import OnnxRunner, TorchRunner, disagreement
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
