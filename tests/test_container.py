"""The repacked model.tar.gz in an emulation of SageMaker's PyTorch inference container (see
sagemaker_container.py) answers what the local endpoint answers, with ONNX Runtime and without exporting, and
with the int8 graph exactly where its quantization record qualifies and holds for the CPU.

Marked `container`, run by `make test-container` (CI runs it after `make test`): the first run builds the
container's virtual environment (torch, the toolkit and the archive's requirements from the registries), which
later runs reuse while the requirements stay the same (`python tests/sagemaker_container.py` builds it ahead).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import DEFAULT_MODEL, DOGS, PROJECT, wait_for_ping
from local_servers import free_port, stop_process
from sagemaker_container import EMULATOR, container_python

from classifier import cpu
from classifier.checked_graph import checked_graph_for
from classifier.graph import DIGEST_KEY, source_digest, stamp_graph
from classifier.model import (
    CONFIG_FILE,
    LABELS_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    QUANTIZATION_FILE,
    WEIGHTS_FILE,
    read_config,
)
from serving import contract, inference
from training import quantize
from training.jobs.source_bundle import repack_model

pytestmark = pytest.mark.container

FAST_MODEL = PROJECT / "models" / "fast"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback http
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def trained_archive(model_dir: Path) -> bytes:
    """`model_dir`'s files as a training job's model.tar.gz, with the model's checked graph."""
    trained = io.BytesIO()
    with tarfile.open(fileobj=trained, mode="w:gz") as tar:
        for name in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE, QUANTIZATION_FILE, ONNX_INT8_FILE):
            if (model_dir / name).is_file():
                tar.add(model_dir / name, arcname=name)
        tar.add(checked_graph_for(model_dir), arcname=ONNX_FILE)
    return trained.getvalue()


@contextlib.contextmanager
def emulated_container(archive: bytes, root: Path):
    """`archive` repacked for an endpoint, unpacked as /opt/ml/model and served in the emulated container.
    Yields (url, the container's log, the unpacked model, the container's python, what repacking said)."""
    said: list[str] = []
    model_dir = root / "opt-ml-model"
    with tarfile.open(fileobj=io.BytesIO(repack_model(archive, said.append)), mode="r:gz") as tar:
        tar.extractall(model_dir, filter="data")
    assert (model_dir / ONNX_FILE).is_file(), "the archive carries the graph the endpoint runs"

    python = container_python((model_dir / "code" / "requirements.txt").read_text())
    port = free_port()
    log_path = root / "container.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        # What the image's start-up sets: the archive's code on the path, the entry point to import.
        "PYTHONPATH": str(model_dir / "code"),
        "SAGEMAKER_PROGRAM": "inference.py",
        # An empty cache: a graph exported at start would land here.
        "DOGBREEDS_CACHE": str(root / "cache"),
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(python), str(EMULATOR), str(model_dir), str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_ping(url, process, timeout=300)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(f"the container did not start:\n{log_path.read_text()[-3000:]}") from error
        yield url, log_path, model_dir, python, said
    finally:
        stop_process(process, timeout=30)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """The committed default model as a training job leaves it (with its checked graph), repacked for an
    endpoint and served in the emulated container."""
    root = tmp_path_factory.mktemp("container")
    with emulated_container(trained_archive(DEFAULT_MODEL), root) as (url, log_path, _, python, _):
        yield url, log_path, root, python


def test_the_container_answers_what_the_local_endpoint_answers(
    container, endpoint, samples, labrador, spaniel
):  # noqa: E501
    url, log_path, root, _ = container
    photos = sorted(samples.glob("*.jpg"))
    assert len(photos) >= 3
    requests = [(photo.read_bytes(), {"Content-Type": contract.JPEG}) for photo in photos]
    batch = {"instances": [{"b64": base64.b64encode(image).decode()} for image in (spaniel, labrador)]}
    requests += [
        (json.dumps(batch).encode(), {"Content-Type": contract.JSON}),
        (labrador, {"Content-Type": contract.JPEG, inference.CUSTOM_ATTRIBUTES_HEADER: "top_k=2"}),
    ]
    for body, headers in requests:
        expected_status, expected = post(endpoint.url, body, headers)
        status, answer = post(url, body, headers)
        assert (status, json.loads(answer)) == (expected_status, json.loads(expected))
        assert status == 200

    # A request error answers with the same status and message; the image's toolkit (sagemaker-inference's
    # Transformer.handle_error) appends the Python traceback below it, which the local endpoint does not.
    status, answer = post(url, b"garbage", {"Content-Type": contract.JPEG})
    expected_status, expected = post(endpoint.url, b"garbage", {"Content-Type": contract.JPEG})
    message, _, trace = answer.partition(b"\n")
    assert (status, message) == (expected_status, expected) == (400, message)
    assert b"Traceback" in trace

    log = log_path.read_text()
    assert "(onnxruntime on cpu" in log, log
    assert "exporting" not in log and not (root / "cache").exists(), "the graph was exported at start"


def test_the_container_lacks_what_only_the_local_endpoint_and_the_project_install(container):
    """Had the handlers needed uvicorn, starlette or the project's tools, the emulation would have failed."""
    python = container[3]
    for module in ("uvicorn", "starlette", "matplotlib", "onnx", "serving", "training"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, cwd=container[2])
        assert found.returncode != 0, f"{module} is importable in the container"


@pytest.fixture(scope="module")
def fast_with_int8(tmp_path_factory) -> Path:
    """A copy of the committed fast model with an int8 graph built here by training.quantize's recipe (its
    default variant; a few calibration images, as what is checked here is which graph ships and serves, not
    its accuracy) and stamped for the model's weights. Its quantization record is each test's to write."""
    model_dir = tmp_path_factory.mktemp("fast") / "model"
    model_dir.mkdir()
    for name in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE):
        shutil.copy(FAST_MODEL / name, model_dir / name)
    shutil.copy(checked_graph_for(model_dir), model_dir / ONNX_FILE)
    preprocessing = read_config(model_dir)[2]
    calibration = quantize.SplitPixels(quantize.calibration_paths(DOGS / "train", count=16), preprocessing)
    variant = quantize.VARIANTS[quantize.DEFAULT_VARIANT]
    quantize.quantize(model_dir / ONNX_FILE, model_dir / ONNX_INT8_FILE, calibration, variant)
    stamp_graph(model_dir / ONNX_INT8_FILE, DIGEST_KEY, source_digest(model_dir))
    return model_dir


def with_record(model_dir: Path, root: Path, qualifies: bool, holds_on: list[str]) -> Path:
    """A copy of `model_dir` with a quantization record for its weights: the fields of training.quantize's
    record that deploy and the endpoint read (whether int8 met the bar, the CPU classes it holds for)."""
    copy = root / "model"
    shutil.copytree(model_dir, copy)
    record = {
        "variant": quantize.DEFAULT_VARIANT,
        "default": qualifies,
        "source_digest": source_digest(copy),
        "holds_on": holds_on,
    }
    (copy / QUANTIZATION_FILE).write_text(json.dumps(record))
    return copy


HERE = cpu.this_cpu()["class"]
ELSEWHERE = next(name for name in cpu.CPU_CLASSES if name != HERE)


@pytest.mark.parametrize(
    ("qualifies", "holds_on", "ships", "serves"),
    [
        (True, [HERE], True, "onnxruntime-int8"),
        # Shipped (it qualified), but measured for another class of CPU than the one the endpoint runs on.
        (True, [ELSEWHERE], True, "onnxruntime"),
        (False, [HERE], False, "onnxruntime"),
    ],
)
def test_the_container_serves_int8_only_where_its_record_qualifies_and_holds(
    fast_with_int8, tmp_path, labrador, qualifies, holds_on, ships, serves
):
    model_dir = with_record(fast_with_int8, tmp_path, qualifies, holds_on)
    with emulated_container(trained_archive(model_dir), tmp_path) as (url, log_path, unpacked, _, said):
        assert (unpacked / ONNX_INT8_FILE).is_file() == ships, said
        assert said[0].startswith(f"int8 graph {'shipped' if ships else 'not shipped'}: "), said
        status, answer = post(url, labrador, {"Content-Type": contract.JPEG})
        log = log_path.read_text()
    assert status == 200 and json.loads(answer)["predictions"][0]["label"] == "Labrador_retriever"
    assert f"({serves} on cpu" in log, log
    if ships and serves == "onnxruntime":
        assert f"its figures hold on {ELSEWHERE}, and this CPU is {HERE}; serving the fp32 graph" in log, log
    if not qualifies:
        assert "did not qualify" in said[0]
