"""The repacked model.tar.gz in an emulation of SageMaker's PyTorch inference container (see
sagemaker_container.py) answers what the local endpoint answers, with ONNX Runtime and without exporting.

Marked slow: the first run builds the container's virtual environment (torch, the toolkit and the archive's
requirements from pip's cache), which took 17 minutes on the 2 shared cores here (load ~18); later runs reuse
it while the requirements stay the same (`python tests/sagemaker_container.py` builds it ahead).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.request

import pytest
from conftest import DEFAULT_MODEL, wait_for_ping
from local_servers import free_port, stop_process
from sagemaker_container import EMULATOR, container_python

from classifier.checked_graph import checked_graph_for
from classifier.model import CONFIG_FILE, LABELS_FILE, ONNX_FILE, WEIGHTS_FILE
from serving import contract, inference
from training.jobs.source_bundle import repack_model

pytestmark = pytest.mark.slow


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback http
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """The committed default model as a training job leaves it (with its checked graph), repacked for an
    endpoint and served in the emulated container."""
    root = tmp_path_factory.mktemp("container")
    trained = io.BytesIO()
    with tarfile.open(fileobj=trained, mode="w:gz") as tar:
        for name in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE):
            tar.add(DEFAULT_MODEL / name, arcname=name)
        tar.add(checked_graph_for(DEFAULT_MODEL), arcname=ONNX_FILE)
    model_dir = root / "opt-ml-model"
    with tarfile.open(fileobj=io.BytesIO(repack_model(trained.getvalue())), mode="r:gz") as tar:
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
        yield url, log_path, root, python
    finally:
        stop_process(process, timeout=30)


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
