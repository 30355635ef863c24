"""A graph the endpoint may start from without checking: exported, run against the PyTorch model on a probe
batch, and stamped with the digest of the config and weights it agreed with (see classifier.graph)."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

from classifier.graph import (
    DIGEST_KEY,
    artifact_digest,
    cache_dir,
    export_onnx,
    graph_is_current,
    source_digest,
    stamp_graph,
)
from classifier.model import ONNX_FILE, load_model
from classifier.runtime import AGREEMENT_TOLERANCE, OnnxRunner, TorchRunner, disagreement

log = logging.getLogger(__name__)


def build_checked_graph(model_dir: str | Path, path: str | Path | None = None) -> tuple[Path, float]:
    """Export the artifact's model to `path` (default DIR/model.onnx), check it against PyTorch and stamp it.

    Returns (path, largest probability gap on the probe batch). Raises ValueError when the graph disagrees
    with the model and ImportError without onnxruntime.
    """
    model, _, _, preprocessing = load_model(model_dir)
    path = Path(path or Path(model_dir) / ONNX_FILE)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        unchecked = export_onnx(model, Path(scratch) / ONNX_FILE, preprocessing.image_size)
        gap = disagreement(TorchRunner(model), OnnxRunner(unchecked, threads=1), preprocessing.image_size)
        if gap > AGREEMENT_TOLERANCE:
            raise ValueError(f"the exported graph disagrees with the PyTorch model (max gap {gap:.2e})")
        stamp_graph(unchecked, DIGEST_KEY, source_digest(model_dir))
        os.replace(unchecked, path)
    return path, gap


def checked_graph_for(model_dir: str | Path) -> Path:
    """DIR/model.onnx when stamped for DIR's weights, else a checked graph exported once into the cache."""
    shipped = Path(model_dir) / ONNX_FILE
    if graph_is_current(shipped, model_dir):
        return shipped
    cached = cache_dir() / f"checked-{artifact_digest(model_dir)}" / ONNX_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.parent / "export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not graph_is_current(cached, model_dir):
            log.info("exporting and checking the model's ONNX graph: %s", cached)
            build_checked_graph(model_dir, cached)
    return cached
