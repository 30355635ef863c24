"""An emulation of SageMaker's PyTorch inference container: a virtual environment with only what the image
provides, plus the archive's code/requirements.txt, serving /opt/ml/model through the real toolkit.

Target image: pytorch-inference:2.6.0-cpu-py312 (training/jobs' FRAMEWORK_VERSION and PY_VERSION), whose
Python is 3.12 and torch 2.6.0. This machine has Python 3.11 and torch 2.13.0 (CPU) only, so the emulation
runs those; the rest of what the handlers can reach in the image is installed at the image's toolkit
versions (sagemaker-inference, sagemaker-pytorch-inference, TorchServe's Python side). Not emulated: the
TorchServe Java front end and its worker protocol, the image's other packages (torchvision, opencv, ...),
CUDA, and the /opt/ml paths themselves.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
IMAGE = "pytorch-inference:2.6.0-cpu-py312"
# The image's toolkit: only the container emulation installs it (its sdist carries a copy of
# sagemaker-inference that would shadow the pinned one in .venv).
PYTORCH_TOOLKIT = "sagemaker-pytorch-inference==2.0.25"


def image_packages() -> tuple[str, ...]:
    """What the image provides that the handlers and the toolkit in front of them import: torch and the
    toolkit pins from requirements-dev.txt (one place for versions), numpy, Pillow and PyYAML at the versions
    the project resolves to here (so pip takes everything from its cache), and the PyTorch toolkit."""
    pins = {
        line.split("==")[0].lower(): line.strip()
        for line in (PROJECT / "requirements-dev.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    return (
        pins["torch"],
        f"numpy=={metadata.version('numpy')}",
        f"pillow=={metadata.version('pillow')}",
        # TorchServe's worker imports yaml without declaring it; the image installs PyYAML.
        f"pyyaml=={metadata.version('pyyaml')}",
        pins["sagemaker-inference"],
        PYTORCH_TOOLKIT,
        pins["torchserve"],
    )


EMULATOR = Path(__file__).resolve().parent / "container_emulator.py"


def cache_root() -> Path:
    """Where the environments are kept: the temp dir outlives a checkout, so a fresh clone (CI's) on the same
    machine reuses what an earlier run built."""
    default = Path(tempfile.gettempdir()) / "dogbreeds-sagemaker-container"
    return Path(os.environ.get("DOGBREEDS_CONTAINER_CACHE") or default)


def container_python(code_requirements: str) -> Path:
    """The python of a virtual environment with the image's packages and `code_requirements` (the archive's
    code/requirements.txt), built once per set of requirements and reused."""
    key = hashlib.sha256(
        "\n".join([sys.version.split()[0], *image_packages(), code_requirements]).encode()
    ).hexdigest()[:12]
    root = cache_root() / key
    python = root / "bin" / "python"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        # As in the image: its packages first, then the container's start-up installs code/requirements.txt.
        subprocess.run([*pip, *image_packages()], check=True)
        requirements = root / "code-requirements.txt"
        requirements.write_text(code_requirements)
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        (root / ".complete").touch()
    return python


if __name__ == "__main__":
    # Build the environment ahead of the tests: python tests/sagemaker_container.py
    sys.path.insert(0, str(PROJECT))
    from training.jobs.source_bundle import container_requirements

    print(container_python(container_requirements()))
