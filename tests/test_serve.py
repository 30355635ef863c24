"""boto3's invoke_endpoint against a real `python -m serving.server` process serving the committed model."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.parsers import create_parser
from conftest import DEFAULT_MODEL, PROJECT, EndpointProcess
from PIL import Image

from classifier import graph
from serving import contract
from serving.server import (
    DEFAULT_ENDPOINT_NAME,
    DEFAULT_MAX_WAIT_S,
    MAX_BODY_BYTES,
    PRODUCTION_VARIANT,
    ContainerAnswer,
    model_error,
)


@pytest.fixture
def runtime(runtime_env):
    # No retries: a test must see the first answer, as the Lambda's error mapping would.
    return boto3.client("sagemaker-runtime", config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def invoke(runtime, body, content_type=contract.JPEG, **extra):
    response = runtime.invoke_endpoint(
        EndpointName=DEFAULT_ENDPOINT_NAME, Body=body, ContentType=content_type, **extra
    )
    return response, json.loads(response["Body"].read())


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_labrador_comes_back_as_labrador(runtime, labrador):
    response, answer = invoke(runtime, labrador, Accept=contract.JSON)

    assert response["ContentType"] == contract.JSON
    assert response["InvokedProductionVariant"] == PRODUCTION_VARIANT
    assert answer["predictions"][0]["label"] == "Labrador_retriever"
    assert answer["predictions"][0]["breed"] == "Labrador retriever"
    assert len(answer["predictions"]) == contract.DEFAULT_TOP_K
    assert answer["is_dog"] is True
    assert answer["model"]["name"] == json.loads((DEFAULT_MODEL / "config.json").read_text())["name"]


def test_batch_answers_in_order(runtime, labrador, spaniel):
    body = json.dumps(
        {"instances": [{"b64": base64.b64encode(image).decode()} for image in (labrador, spaniel)]}
    )
    _, answers = invoke(runtime, body.encode(), contract.JSON)
    _, alone = invoke(runtime, spaniel)

    assert len(answers) == 2
    assert answers[0]["predictions"][0]["label"] == "Labrador_retriever"
    assert answers[1]["predictions"][0]["label"] == alone["predictions"][0]["label"]


def test_top_k_through_custom_attributes(runtime, labrador):
    _, answer = invoke(runtime, labrador, CustomAttributes="top_k=3")
    assert [p["label"] for p in answer["predictions"]][:1] == ["Labrador_retriever"]
    assert len(answer["predictions"]) == 3


def test_png_with_alpha(runtime, labrador):
    picture = Image.open(io.BytesIO(labrador)).convert("RGBA")
    picture.putalpha(Image.linear_gradient("L").resize(picture.size).point(lambda value: 128 + value // 2))
    png = io.BytesIO()
    picture.save(png, format="PNG")

    _, answer = invoke(runtime, png.getvalue(), contract.PNG)
    assert answer["predictions"][0]["label"] == "Labrador_retriever"


def test_garbage_bytes_raise_model_error(runtime):
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        invoke(runtime, b"this is not a picture")
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 400
    assert "cannot decode the image" in error["OriginalMessage"]


@pytest.mark.parametrize("size", [(8000, 2), (65000, 1), (2, 8000)])
def test_tiny_pngs_of_extreme_dimensions_are_refused_by_the_endpoint(runtime, endpoint, size):
    # A few hundred bytes each; scaling up their short side used to cost about 1 GB (8000 x 2) and would
    # have needed about 17 GB (65000 x 1).
    png = io.BytesIO()
    Image.new("L", size, 90).save(png, format="PNG")
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        invoke(runtime, png.getvalue(), contract.PNG)
    assert raised.value.response["OriginalStatusCode"] == 400
    assert f"image of {size[0]} x {size[1]}" in raised.value.response["OriginalMessage"]

    status, body = post(f"{endpoint.url}/invocations", png.getvalue(), {"Content-Type": contract.PNG})
    assert status == 400
    assert b"at most" in body


def test_unsupported_content_type_raises_model_error_naming_it(runtime, labrador):
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        invoke(runtime, labrador, "text/csv")
    assert raised.value.response["OriginalStatusCode"] == 415
    assert "text/csv" in raised.value.response["OriginalMessage"]


def test_unknown_endpoint_name_raises_validation_error(runtime, labrador):
    with pytest.raises(runtime.exceptions.ValidationError, match="Endpoint no-such-endpoint .* not found"):
        runtime.invoke_endpoint(EndpointName="no-such-endpoint", Body=labrador, ContentType=contract.JPEG)


def test_missing_content_type_raises_validation_error(runtime, labrador):
    with pytest.raises(runtime.exceptions.ValidationError, match="ContentType"):
        runtime.invoke_endpoint(EndpointName=DEFAULT_ENDPOINT_NAME, Body=labrador)


def test_body_over_6_mb_is_413(runtime):
    with pytest.raises(ClientError) as raised:
        invoke(runtime, b"\0" * (MAX_BODY_BYTES + 1))
    # SageMaker's own answer carries no error type, so botocore names the error after the status.
    assert raised.value.response["Error"]["Code"] == "413"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_body_of_exactly_6_mb_reaches_the_model(runtime):
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        invoke(runtime, b"\0" * MAX_BODY_BYTES)
    assert raised.value.response["OriginalStatusCode"] == 400


def test_container_contract_invocations(endpoint, labrador):
    status, body = post(f"{endpoint.url}/invocations", labrador, {"Content-Type": contract.JPEG})
    assert status == 200
    assert json.loads(body)["predictions"][0]["label"] == "Labrador_retriever"

    status, body = post(f"{endpoint.url}/invocations", labrador, {"Content-Type": "text/plain"})
    assert status == 415
    assert b"unsupported content type" in body

    status, _ = post(
        f"{endpoint.url}/invocations", labrador, {"Content-Type": contract.JPEG, "Accept": "text/csv"}
    )
    assert status == 406


def test_oversized_body_is_refused_without_a_content_length(endpoint):
    # Chunked transfer declares no size: the server counts as it reads and stops at the limit.
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=60)
    chunk = b"\0" * 1024 * 1024
    connection.request(
        "POST",
        f"/endpoints/{DEFAULT_ENDPOINT_NAME}/invocations",
        body=(chunk for _ in range(MAX_BODY_BYTES // len(chunk) + 1)),
        headers={"Content-Type": contract.JPEG},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"message": f"HTTP content length exceeded {MAX_BODY_BYTES} bytes."}
    connection.close()

    status, _ = post(
        f"{endpoint.url}/invocations", b"\0" * (MAX_BODY_BYTES + 1), {"Content-Type": contract.JPEG}
    )
    assert status == 413


def test_concurrent_requests_each_get_their_own_answer(runtime, labrador, spaniel):
    _, expected_spaniel = invoke(runtime, spaniel)
    images = [labrador, spaniel] * 8

    def classify(image):
        return invoke(runtime, image)[1]["predictions"][0]

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        answers = list(pool.map(classify, images))

    for image, top in zip(images, answers, strict=True):
        expected = "Labrador_retriever" if image is labrador else expected_spaniel["predictions"][0]["label"]
        assert top["label"] == expected
    spaniel_probabilities = [
        top["probability"] for image, top in zip(images, answers, strict=True) if image is spaniel
    ]
    assert spaniel_probabilities == pytest.approx(
        [expected_spaniel["predictions"][0]["probability"]] * 8, abs=1e-4
    )


def test_ping_is_503_while_loading_then_200_and_sigterm_stops_cleanly(tmp_path, monkeypatch, labrador):
    # A fresh ONNX cache makes every worker wait for an export, so loading takes seconds, not milliseconds.
    monkeypatch.setenv(graph.CACHE_ENV, str(tmp_path / "cache"))
    log_file = tmp_path / "serve.log"
    server = EndpointProcess(DEFAULT_MODEL, "--workers", "2", "--endpoint-name", "two-workers", log=log_file)
    try:
        statuses = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and statuses[-1:] != [200] and server.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{server.url}/ping", timeout=2) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as error:
                statuses.append(error.code)
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        assert 503 in statuses, statuses
        assert statuses[-1] == 200
        assert set(statuses) <= {200, 503}

        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        # /ping may have been answered by the worker that loaded first: one still loading holds the request
        # until its own model is ready, so every invocation succeeds.
        for _ in range(4):
            response = client.invoke_endpoint(
                EndpointName="two-workers", Body=labrador, ContentType=contract.JPEG
            )
            assert json.loads(response["Body"].read())["predictions"][0]["label"] == "Labrador_retriever"
    finally:
        server.process.terminate()
        returncode = server.process.wait(timeout=60)
    assert returncode == 0
    log = log_file.read_text()
    request_lines = re.findall(
        r"POST /endpoints/two-workers/invocations 200 in=(\d+)B out=(\d+)B [\d.]+ms", log
    )
    assert len(request_lines) == 4
    assert all(int(bytes_in) == len(labrador) and int(bytes_out) > 0 for bytes_in, bytes_out in request_lines)
    assert log.count("Application shutdown complete") == 2, "both workers shut down cleanly"


def test_a_failing_handler_is_relayed_as_model_error():
    # The shape SageMaker relays a container's 500 in, read back by botocore's own parser for the service.
    response = model_error(ContainerAnswer(500, b"inference failed: RuntimeError", "text/plain"))
    operation = boto3.client("sagemaker-runtime", region_name="us-east-1").meta.service_model.operation_model(
        "InvokeEndpoint"
    )
    parsed = create_parser("rest-json").parse(
        {"status_code": response.status_code, "headers": dict(response.headers), "body": response.body},
        operation.output_shape,
    )
    assert response.status_code == 424
    assert parsed["Error"]["Code"] == "ModelError"
    assert "Received server error (500)" in parsed["Error"]["Message"]


# One worker, and two under uvicorn's worker supervisor.
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_cannot_load_stops_the_server_with_the_reason(tmp_path, workers):
    model_dir = tmp_path / "broken"
    shutil.copytree(DEFAULT_MODEL, model_dir)
    labels = json.loads((model_dir / "labels.json").read_text())
    (model_dir / "labels.json").write_text(json.dumps(labels[:-1]))  # one label short of the model's outputs
    log = tmp_path / "server.log"
    server = EndpointProcess(model_dir, "--workers", workers, log=log)
    try:
        server.process.wait(timeout=180)
    finally:
        server.stop()
    assert server.process.returncode != 0
    last_line = log.read_text().splitlines()[-1]
    assert last_line.startswith(f"serving.server: model failed to load from {model_dir}")
    assert "labels" in last_line


FAST_MODEL = PROJECT / "models" / "fast"


def test_a_burst_past_the_queue_limit_is_shed_with_retry_after_and_the_rest_answered(labrador):
    # One image queued at a time: of a burst of simultaneous requests, those that find the model busy are
    # refused at once instead of waiting.
    server = EndpointProcess(FAST_MODEL, "--max-queue", "1").wait_ready()
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        # One retry, as the API makes: botocore's standard mode must take a shed request for a retryable one.
        config=Config(retries={"total_max_attempts": 2, "mode": "standard"}, max_pool_connections=16),
    )
    start = threading.Barrier(16)

    def container_call(_):
        start.wait()
        request = urllib.request.Request(
            f"{server.url}/invocations", labrador, {"Content-Type": contract.JPEG}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), error.headers

    def runtime_call(_):
        start.wait()
        try:
            response = client.invoke_endpoint(
                EndpointName=DEFAULT_ENDPOINT_NAME, Body=labrador, ContentType=contract.JPEG
            )
            return 200, json.loads(response["Body"].read()), response["ResponseMetadata"]
        except ClientError as error:
            error_response = error.response
            return (
                error_response["Error"]["Code"],
                error_response["Error"]["Message"],
                error_response["ResponseMetadata"],
            )

    try:
        with ThreadPoolExecutor(16) as pool:
            container = list(pool.map(container_call, range(16)))
            runtime = list(pool.map(runtime_call, range(16)))
        with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as response:
            backlog = json.loads(response.read())["queue"]
    finally:
        server.stop()

    for answers, shed_status in ((container, 503), (runtime, "ServiceUnavailable")):
        statuses = [status for status, _, _ in answers]
        assert statuses.count(200) >= 1
        assert statuses.count(shed_status) >= 1
        assert set(statuses) == {200, shed_status}
        for status, answer, _ in answers:
            if status == 200:
                assert answer["predictions"][0]["label"] == "Labrador_retriever"
            else:
                assert "overloaded" in answer
    for status, _, headers in container:
        assert (headers["Retry-After"] is not None) == (status == 503)
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
    for status, _, metadata in runtime:
        if status != 200:
            assert metadata["HTTPStatusCode"] == 503
            assert metadata["RetryAttempts"] == 1
            assert int(metadata["HTTPHeaders"]["retry-after"]) >= 1
            assert "x-amz-retry-after" not in metadata["HTTPHeaders"]
    shed = [status for status, _, _ in container].count(503)
    shed += sum(metadata["RetryAttempts"] + (status != 200) for status, _, metadata in runtime)
    assert backlog == {"images": 0, "limit": 1, "shed": shed}


@pytest.mark.slow
def test_endpoint_benchmark_runs_and_prints_its_figures(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.endpoint_speed", "--seconds", "1", "--runs", "10", "--rounds", "1"]
        + ["--results-dir", str(tmp_path)],  # not the committed results
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"endpoint, whole request .* speed-up over best eager: [\d.]+x", result.stdout)
    assert re.search(r"endpoint / best eager +[\d.]+x +[\d.]+x +[\d.]+x", result.stdout)


@pytest.mark.slow
def test_overload_benchmark_runs_and_prints_its_figures(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.overload",
            "--model-dir",
            str(FAST_MODEL),
            "--clients",
            "8",
            "--seconds",
            "2",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^no shedding +none +[\d.]+", result.stdout, re.MULTILINE)
    assert re.search(r"^shedding +\d+ +[\d.]+", result.stdout, re.MULTILINE)
    assert re.search(r"shedding / no shedding: goodput [\d.]+x, p99 [\d.]+x, wasted", result.stdout)


# A flood of this many clients per image the endpoint queues: past what it may admit, so most are shed.
FLOOD_PER_QUEUED_IMAGE = 4
# How long each flooding client waits for its answer before it gives up and closes its connection. The
# endpoint admits about DEFAULT_MAX_WAIT_S of model work; without shedding the flood queues twice this.
FLOOD_PATIENCE_S = 2.5 * DEFAULT_MAX_WAIT_S


async def _call_once(port: int, body: bytes) -> tuple[int | str, dict[str, str], bytes]:
    """One POST /invocations on its own connection: (status, headers, body), or "gave up" when no answer came
    within FLOOD_PATIENCE_S, after which the connection is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /invocations HTTP/1.1\r\nHost: endpoint\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            async with asyncio.timeout(FLOOD_PATIENCE_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, *lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines if line)
                answer = await reader.readexactly(int(headers["content-length"]))
        except TimeoutError:
            return "gave up", {}, b""
        return int(status_line.split()[1]), headers, answer
    finally:
        writer.close()


def logged_invocations(log) -> list[str]:
    return re.findall(r"POST /invocations (\d{3}) in=", log.read_text())


def test_a_flood_with_the_default_max_wait_is_shed_and_nothing_is_answered_after_its_client_gave_up(
    labrador, tmp_path
):
    # The endpoint as `make run` and the container start it: its own default --max-wait.
    log = tmp_path / "serve.log"
    server = EndpointProcess(FAST_MODEL, log=log).wait_ready()
    try:
        with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as response:
            limit = json.loads(response.read())["queue"]["limit"]
        flood = FLOOD_PER_QUEUED_IMAGE * limit

        async def flood_once():
            return await asyncio.gather(*(_call_once(server.port, labrador) for _ in range(flood)))

        answers = asyncio.run(flood_once())
        # Every request reaches the log once the endpoint is done with it, answered in time or not.
        deadline = time.monotonic() + 120
        while len(logged_invocations(log)) < flood and time.monotonic() < deadline:
            time.sleep(0.2)
        logged = logged_invocations(log)
    finally:
        server.stop()

    statuses = [status for status, _, _ in answers]
    assert statuses.count("gave up") == 0, f"{statuses.count('gave up')} of {flood} clients gave up"
    assert set(statuses) == {200, 503}
    for status, headers, body in answers:
        if status == 503:
            assert int(headers["retry-after"]) >= 1
            assert b"overloaded" in body
        else:
            assert json.loads(body)["predictions"][0]["label"] == "Labrador_retriever"
    # What the endpoint answered is what its clients read: no answer went to a client that had given up.
    assert len(logged) == flood
    assert logged.count("200") == statuses.count(200)
    assert logged.count("503") == statuses.count(503)


def test_a_shed_request_is_refused_before_its_body_is_read(labrador, tmp_path):
    # One image queued at a time: while a batch of pictures is in the model's queue, any other is shed.
    log = tmp_path / "serve.log"
    server = EndpointProcess(FAST_MODEL, "--max-queue", "1", log=log).wait_ready()
    batch = json.dumps(
        {"instances": [{"b64": base64.b64encode(labrador).decode()}] * contract.MAX_INSTANCES}
    ).encode()
    try:
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(post, f"{server.url}/invocations", batch, {"Content-Type": contract.JSON})
            while not busy.done():
                with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as response:
                    if json.loads(response.read())["queue"]["images"]:
                        break
                time.sleep(0.01)
            # Headers that announce the largest body the endpoint takes, and then not one byte of it: only an
            # answer decided before reading the body can come back.
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as probe:
                probe.sendall(
                    b"POST /invocations HTTP/1.1\r\nHost: endpoint\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {MAX_BODY_BYTES}\r\n\r\n".encode()
                )
                response = http.client.HTTPResponse(probe)
                response.begin()
                refusal = response.status, response.getheader("Retry-After"), response.getheader("Connection")
                refusal_body = response.read()
                assert probe.recv(1) == b"", "the endpoint closes the connection whose body it did not read"
            assert busy.result()[0] == 200
    finally:
        server.stop()
    assert refusal[0] == 503
    assert int(refusal[1]) >= 1
    assert refusal[2] == "close"
    assert b"overloaded" in refusal_body
    assert re.search(r"POST /invocations 503 in=0B", log.read_text())
