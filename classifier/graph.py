"""The BreedClassifier as an ONNX graph: the export, the digest stamped into it, and where a graph is cached.

The runners that execute the graph live in classifier/runtime.py, the check against PyTorch in
classifier/checked_graph.py; `python -m training.export --model-dir DIR` writes DIR/model.onnx for an artifact
that should carry its graph (training and repacking for an endpoint do the same). A checked graph carries the
digest of the config and
weights it was checked against in its metadata, so an endpoint starts from it without loading PyTorch's model
or checking again; a graph without that stamp, or with another artifact's, is checked at start.
"""

from __future__ import annotations

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

from classifier.model import CONFIG_FILE, ONNX_FILE, WEIGHTS_FILE, BreedClassifier

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("breed_logits", "dog_probability")
# The TorchScript exporter handles opset 17 for every op EfficientNet-Lite uses; ONNX Runtime has long run it.
OPSET = 17
# Bump when the export itself changes, so cached graphs from an older exporter are not reused.
EXPORT_FORMAT = "1"
CACHE_ENV = "DOGBREEDS_CACHE"
# The graph's metadata key for the digest of the artifact (config, weights) it was checked against.
DIGEST_KEY = "dogbreeds.source_digest"


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    image_size: int,
    output_names: tuple[str, ...] = OUTPUT_NAMES,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `model` (by default the whole BreedClassifier, both outputs) as ONNX to `path`, atomically.

    Its input is `INPUT_NAME`, a float32 (batch, 3, image_size, image_size) array; only the batch is dynamic.
    `metadata` goes into the graph's metadata_props.
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
        for key, value in (metadata or {}).items():
            stamp_graph(partial_path, key, value)
        partial_path.chmod(0o644)  # temporary files are private; the graph is not
        os.replace(partial_path, path)
    finally:
        partial_path.unlink(missing_ok=True)
    return path


def _protobuf_field(number: int, payload: bytes) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out) + bytes([value])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def stamp_graph(path: str | Path, key: str, value: str) -> None:
    """Add a metadata_props entry to the ONNX file at `path`, in place.

    A repeated protobuf field may be appended to a serialised message, so this writes a few bytes at the end
    of the file instead of parsing and rewriting tens of MB (and needs no `onnx` package).
    """
    entry = _protobuf_field(1, key.encode()) + _protobuf_field(2, value.encode())
    with open(path, "ab") as graph:
        graph.write(_protobuf_field(14, entry))  # ModelProto.metadata_props


def source_digest(model_dir: str | Path) -> str:
    """A short hash of what the graph computes: config, trained weights, export format."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}:{OPSET}".encode())
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()[:16]


def artifact_digest(model_dir: str | Path) -> str:
    """The cache key of an exported graph: the source digest and the torch version that exported it."""
    return hashlib.sha256(f"{source_digest(model_dir)}:{torch.__version__}".encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where exported graphs and training's feature caches are kept: $DOGBREEDS_CACHE, else
    $XDG_CACHE_HOME/dogbreeds, else ~/.cache/dogbreeds (outside the clone, kept between runs); the temp dir
    only where there is no home directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "dogbreeds"
    try:
        return Path.home() / ".cache" / "dogbreeds"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / "dogbreeds-cache"


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


def graph_digest(path: str | Path) -> str | None:
    """The source digest a graph was stamped with, or None (no file, no stamp, not a graph)."""
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - whatever the reason, the graph is not one to trust as is
        return None
    return session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY)


def graph_is_current(path: str | Path, model_dir: str | Path) -> bool:
    return Path(path).is_file() and graph_digest(path) == source_digest(model_dir)
