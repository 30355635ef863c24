"""GET /openapi.json: a valid OpenAPI 3.1 document for every route, built from the one schema and the error
classes, that the real answers of the real local stack match, error answers included; then schemathesis
fuzzes the stack from it."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import jsonschema
import pytest
import referencing
from api_calls import client_for, post_json
from chalice.test import Client
from conftest import LABRADOR, ChaliceLocal, SampleFiles, file_server, write_stage_project
from local_servers import free_port
from openapi_spec_validator import validate
from pictures import encoded
from PIL import Image
from referencing.jsonschema import DRAFT202012

import app as api
from chalicelib import batch_request, errors, health, openapi
from chalicelib.batch_request import BatchTimeout
from chalicelib.gateway_responses import GATEWAY_RESPONSES
from chalicelib.settings import (
    BATCH_PREPARE_TIMEOUT_S,
    FETCH_READ_TIMEOUT_S,
    FETCH_TOTAL_TIMEOUT_S,
    MAX_PIXELS_BY_FORMAT,
    MAX_UPLOAD_BYTES,
    UPLOAD_CONTENT_TYPES,
)

# Examples per operation and phase; the whole fuzz run stays within seconds.
FUZZ_EXAMPLES = 10


@pytest.fixture(scope="module")
def document(api_stack) -> dict:
    with urllib.request.urlopen(api_stack.url + "/openapi.json") as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.load(response)


def call(url: str, method: str = "GET", body: bytes | None = None, content_type: str | None = None):
    """(status, content type, body bytes, headers) of a real HTTP request."""
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get_content_type(), response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read(), error.headers


def assert_matches(document: dict, path: str, method: str, status: int, content_type: str, body: bytes):
    """The answer is one the document lists for the route, in a listed content type, valid by its schema;
    a method the route does not have answers 405 with the error schema."""
    operation = document["paths"][path].get(method.lower())
    if operation is None:
        assert status == 405 and content_type == "application/json"
        return assert_valid(document, {"$ref": "#/components/schemas/Error"}, body)
    assert str(status) in operation["responses"], f"{method} {path} answered {status}, not in the document"
    content = operation["responses"][str(status)]["content"]
    assert content_type in content, f"{method} {path} {status} answered {content_type}"
    if content_type == "application/json":
        assert_valid(document, content[content_type]["schema"], body)


def assert_valid(document: dict, schema: dict, body: bytes):
    registry = referencing.Registry().with_resource(
        "urn:openapi", referencing.Resource.from_contents(document, default_specification=DRAFT202012)
    )
    validator = jsonschema.Draft202012Validator(_rebased(schema), registry=registry)
    validator.validate(json.loads(body))


def _rebased(schema):
    """`schema` with its document-relative references ("#/components/...") pointing into urn:openapi."""
    if isinstance(schema, dict):
        return {
            key: ("urn:openapi" + value if key == "$ref" and value.startswith("#") else _rebased(value))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rebased(item) for item in schema]
    return schema


# --- the document ---


def test_the_document_is_valid_openapi_3_1_and_describes_every_route(document):
    validate(document)
    assert document["openapi"].startswith("3.1")
    described = {(path, method.upper()) for path, methods in document["paths"].items() for method in methods}
    assert described == {(path, method) for path, methods in api.app.routes.items() for method in methods}
    upload = document["paths"]["/predict/image"]["post"]
    assert set(upload["requestBody"]["content"]) == set(UPLOAD_CONTENT_TYPES)
    assert [parameter["name"] for parameter in upload["parameters"]] == ["top_k", "min_confidence"]


def test_the_accepted_formats_and_their_limits_are_described(document):
    upload = document["paths"]["/predict/image"]["post"]
    schemas = document["components"]["schemas"]
    descriptions = [
        upload["description"],
        schemas["PredictRequest"]["properties"]["image"]["description"],
        schemas["BatchRequest"]["properties"]["images"]["items"]["description"],
    ]
    for media_type in ("image/jpeg", "image/png", "image/webp", "image/gif", "image/heic", "image/avif"):
        assert media_type in upload["requestBody"]["content"]
        assert all(media_type in description for description in descriptions), media_type
    for format, pixels in MAX_PIXELS_BY_FORMAT.items():
        assert all(f"{format} {pixels:,}" in description for description in descriptions), format


def test_every_error_class_is_described_with_its_status(document):
    classes = openapi.error_classes()
    assert {"BadRequest", "UnsupportedImage", "EndpointUnavailable", "Misconfigured"} <= {
        cls.__name__ for cls in classes
    }
    for cls in classes:
        if cls is errors.NotFound:
            continue  # no classifying route names a thing that may be missing
        for path in ("/predict", "/predict/image"):
            response = document["paths"][path]["post"]["responses"][str(cls.status)]
            assert cls.code in documented_codes(response), (cls, path)
    results = document["paths"]["/predict/results/{inference_id}"]["get"]["responses"]
    for cls in (errors.NotFound, errors.BadRequest, errors.ModelFailed, errors.BadModelAnswer):
        assert cls.code in documented_codes(results[str(cls.status)]), cls
    assert "404" not in document["paths"]["/predict"]["post"]["responses"]
    assert results["202"]["headers"]["Retry-After"]


def documented_codes(response: dict) -> set[str]:
    """The error codes a documented response allows."""
    found, pending = set(), [response["content"]["application/json"]["schema"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            found.update(node.get("enum", []))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def test_routes_that_need_a_key_say_so_and_the_page_never_does():
    """As on prod, where app.py declares the classifying routes with api_key_required."""
    routes = {path: dict(methods) for path, methods in api.app.routes.items()}
    for path in ("/predict", "/predict/image"):
        routes[path]["POST"] = copy.copy(routes[path]["POST"])
    for path in ("/predict", "/predict/image"):
        routes[path]["POST"].api_key_required = True
    document = openapi.describe_api(routes, "/api")
    validate(document)
    for path in ("/predict", "/predict/image"):
        operation = document["paths"][path]["post"]
        assert operation["security"] == [{"apiKey": []}]
        # Every answer API Gateway gives itself for a route, as the packaged template maps them.
        for response_type, status, code, _ in GATEWAY_RESPONSES:
            if status is not None and status != 404:
                assert code in documented_codes(operation["responses"][str(status)]), response_type
    for path in ("/", "/openapi.json", "/breeds"):
        assert "security" not in document["paths"][path]["get"]
        assert "403" not in document["paths"][path]["get"]["responses"]
    assert document["servers"] == [{"url": "/api"}]


def test_the_document_knows_the_stage_path_it_is_served_under():
    assert openapi.stage_base_path({"path": "/api/openapi.json", "resourcePath": "/openapi.json"}) == "/api"
    assert openapi.stage_base_path({"path": "/openapi.json", "resourcePath": "/openapi.json"}) == ""
    assert openapi.stage_base_path({}) == ""


# --- real answers of every route against it ---


def test_every_route_answers_as_described(document, api_stack, sample_files, labrador):
    image = "/predict/image"
    by_url = json.dumps({"url": f"{sample_files}/Labrador_retriever_06455.jpg"})
    by_base64 = json.dumps({"image": base64.b64encode(labrador).decode(), "top_k": 2})
    cases = [
        ("/", "GET", None, None, 200),
        ("/openapi.json", "GET", None, None, 200),
        ("/breeds", "GET", None, None, 200),
        ("/health", "GET", None, None, 200),
        ("/predict", "POST", by_url, "json", 200),
        ("/predict", "POST", by_base64, "json", 200),
        ("/predict", "POST", "{not json", "json", 400),
        ("/predict", "POST", json.dumps({"url": "file:///etc/passwd"}), "json", 400),
        ("/predict", "POST", json.dumps({"url": f"{sample_files}/missing.jpg"}), "json", 400),
        ("/predict", "POST", json.dumps({"image": "AAAA", "top_k": 0}), "json", 400),
        ("/predict", "POST", json.dumps({"url": "x"}), "text/plain", 415),
        ("/predict", "GET", None, None, 405),
        (image, "POST", labrador, "image/jpeg", 200),
        (image + "?top_k=99", "POST", labrador, "image/jpeg", 400),
        (image, "POST", b"not an image", "image/png", 400),
        (image, "POST", b"", "image/png", 400),
        (image, "POST", labrador, "image/jpg", 415),
        (image, "POST", b"\0" * (MAX_UPLOAD_BYTES + 1), "application/octet-stream", 413),
        (image, "POST", encoded(Image.new("L", (9000, 9000)), "PNG"), "image/png", 422),
        (image, "POST", encoded(Image.new("RGB", (4000, 20), (120, 90, 60)), "JPEG"), "image/jpeg", 422),
        ("/health", "POST", b"{}", "json", 405),
        # The local stage's endpoint answers at once: nothing is queued, so no result is known.
        (f"/predict/results/{'0' * 32}", "GET", None, None, 404),
    ]
    for path, method, body, content_type, expected in cases:
        data = body.encode() if isinstance(body, str) else body
        kind = "application/json" if content_type == "json" else content_type
        status, answered_type, answer, _ = call(api_stack.url + path, method, data, kind)
        assert status == expected, (path, method, expected, answer[:300])
        described_path = "/predict/results/{inference_id}" if path.startswith("/predict/results/") else path
        assert_matches(document, described_path.split("?")[0], method, status, answered_type, answer)


# Less than a fetch's read timeout, and more than half the batch's prepare limit: two URLs fetched one after
# the other would already overrun it.
GATE_S = BATCH_PREPARE_TIMEOUT_S / 2 + 0.5
# Longer than a fetch's own limits: only a timeout, the batch's or the fetch's, ends the wait for a held URL.
HOLD_S = 2 * FETCH_TOTAL_TIMEOUT_S


class GatedFiles(SampleFiles):
    """The sample photos, each answered only once `gate`'s parties are in flight together (or, failing that,
    after GATE_S): fetching one at a time costs GATE_S per URL. A path under /held/ is the same photo answered
    only once `released` is set (or after HOLD_S). Records the most requests in flight at once."""

    gate: threading.Barrier
    released: threading.Event
    lock: threading.Lock
    in_flight = 0
    most_in_flight = 0

    @classmethod
    def new(cls, parties: int) -> type[GatedFiles]:
        """A server class of its own, whose gate opens once `parties` requests are in flight."""
        fields = {"gate": threading.Barrier(parties), "released": threading.Event(), "lock": threading.Lock()}
        return type("Files", (cls,), {**fields, "in_flight": 0, "most_in_flight": 0})

    def do_GET(self):
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            if self.path.startswith("/held/"):
                cls.released.wait(HOLD_S)
                self.path = self.path.removeprefix("/held")
            else:
                with contextlib.suppress(threading.BrokenBarrierError):
                    cls.gate.wait(GATE_S)
            super().do_GET()
        finally:
            with cls.lock:
                cls.in_flight -= 1


def test_a_batch_of_urls_is_fetched_at_once_and_every_item_answers_as_described(document, api_stack, samples):
    names = [
        "Labrador_retriever_06455.jpg",
        "American_water_spaniel_00648.jpg",
        "people_with_dog.jpg",
        "no.jpg",
    ]
    files = GatedFiles.new(len(names))
    with file_server(samples, files) as url:
        body = json.dumps({"urls": [f"{url}/{name}" for name in names], "top_k": 2}).encode()
        status, answered_type, answer, _ = call(
            api_stack.url + "/predict/batch", "POST", body, "application/json"
        )

    # Every URL was being fetched at the same time: the batch took one fetch's time, not the sum of them.
    assert files.most_in_flight == len(names)
    assert status == 200, answer[:300]
    assert_matches(document, "/predict/batch", "POST", status, answered_type, answer)
    items = json.loads(answer)["urls"]
    assert [item.get("error", {}).get("code") for item in items] == [None, None, None, "url_fetch_failed"]
    assert items[0]["predictions"][0]["label"] == "Labrador_retriever"
    for item in items:
        schema = "Error" if "error" in item else "BatchItemAnswer"
        assert_valid(document, {"$ref": f"#/components/schemas/{schema}"}, json.dumps(item).encode())


# A stage's shorter prepare limit, well under a fetch's read timeout: a URL that never answers is then cut
# short by the batch's limit, where without it the fetch's own timeout would end it, as url_fetch_failed.
SHORT_PREPARE_S = 3.0


def test_a_url_held_past_the_prepare_limit_times_out_alone(document, endpoint, samples, tmp_path):
    assert SHORT_PREPARE_S + 1 < FETCH_READ_TIMEOUT_S < HOLD_S
    stage = ChaliceLocal(tmp_path, endpoint.url, BATCH_PREPARE_TIMEOUT_S=f"{SHORT_PREPARE_S:g}").wait_ready()
    files = GatedFiles.new(1)
    try:
        with file_server(samples, files) as url:
            try:
                body = json.dumps({"urls": [f"{url}/{LABRADOR}", f"{url}/held/{LABRADOR}"]}).encode()
                status, answered_type, answer, _ = call(
                    stage.url + "/predict/batch", "POST", body, "application/json"
                )
                # The held URL was still being fetched when the batch answered.
                held_at_answer = files.in_flight
            finally:
                files.released.set()
    finally:
        stage.stop()

    assert held_at_answer == 1
    assert status == 200, answer[:300]
    assert_matches(document, "/predict/batch", "POST", status, answered_type, answer)
    fast, held = json.loads(answer)["urls"]
    assert fast["predictions"][0]["label"] == "Labrador_retriever"
    assert held["error"]["code"] == BatchTimeout.code and held["error"]["status"] == BatchTimeout.status
    assert f"longer than {SHORT_PREPARE_S:g} s" in held["error"]["message"]
    # The code is one the document lists for the batch's own timeout.
    batch_responses = document["paths"]["/predict/batch"]["post"]["responses"]
    assert BatchTimeout.code in documented_codes(batch_responses[str(BatchTimeout.status)])
    assert_valid(document, {"$ref": "#/components/schemas/BatchItemAnswer"}, json.dumps(fast).encode())
    assert_valid(document, {"$ref": "#/components/schemas/Error"}, json.dumps(held).encode())


def test_an_item_fetched_after_the_limit_is_never_decoded(
    runtime_env, new_container, labrador, samples, tmp_path, monkeypatch
):
    """Its timeout is already answered: decoding it afterwards would only take memory and time from the
    requests after it (in a Lambda, the next one runs while it does)."""
    fetched, decoded = [], []
    real_fetch_image, real_prepare_image = batch_request.fetch_image, batch_request.prepare_image

    def counted_fetch(url, **options):
        data = real_fetch_image(url, **options)
        fetched.append(len(data))
        return data

    def counted_prepare(data, **options):
        decoded.append(len(data))
        return real_prepare_image(data, **options)

    monkeypatch.setattr(batch_request, "fetch_image", counted_fetch)
    monkeypatch.setattr(batch_request, "prepare_image", counted_prepare)
    project = write_stage_project(
        tmp_path,
        AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=runtime_env.url,
        BATCH_PREPARE_TIMEOUT_S=f"{SHORT_PREPARE_S:g}",
    )
    client = Client(api.app, stage_name="local", project_dir=str(project))
    files = GatedFiles.new(1)
    with file_server(samples, files) as url:
        before = set(threading.enumerate())
        body = {"images": [base64.b64encode(labrador).decode()], "urls": [f"{url}/held/{LABRADOR}"]}
        try:
            response = post_json(client, body, "/predict/batch")
        finally:
            files.released.set()
        # The held photo now comes: wait for the batch's threads that were left to fetch it.
        left = set(threading.enumerate()) - before
        for thread in left:
            thread.join(HOLD_S)
    assert not any(thread.is_alive() for thread in left)
    answer = response.json_body
    assert answer["images"][0]["predictions"][0]["label"] == "Labrador_retriever"
    assert answer["urls"][0]["error"]["code"] == BatchTimeout.code
    # The held photo did come, after the answer; only the uploaded one was decoded.
    assert fetched == [len(labrador)] and decoded == [len(labrador)]


@pytest.fixture
def stopped_endpoint_client(tmp_path, monkeypatch, new_container):
    """The local stage in-process, with its endpoint address pointing at a port nothing listens on."""
    # A fresh container has a fresh boto3 session too: one made by an earlier test, with that test's
    # environment, would not see the region the stage's environment sets.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    health.clear_cache()
    yield client_for(tmp_path, f"http://127.0.0.1:{free_port()}")
    health.clear_cache()


def test_an_endpoint_that_is_down_answers_as_described(document, stopped_endpoint_client, labrador):
    response = stopped_endpoint_client.http.post(
        "/predict/image", headers={"Content-Type": "image/jpeg"}, body=labrador
    )
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert_matches(document, "/predict/image", "POST", 503, "application/json", response.body)
    response = stopped_endpoint_client.http.get("/health")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert_matches(document, "/health", "GET", 503, "application/json", response.body)


# --- fuzzing ---


def test_fuzzed_requests_get_described_answers_and_never_a_5xx(api_stack, tmp_path):
    """schemathesis generates requests from the document, valid and invalid, for every operation: every
    answer must be one the document describes, and none a 5xx. The seed is fixed so that a run repeats."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            f"--config-file={Path(__file__).with_name('schemathesis.toml')}",
            "run",
            api_stack.url + "/openapi.json",
            "--checks=all",
            f"--max-examples={FUZZ_EXAMPLES}",
            "--seed=1",
            "--workers=1",
            "--phases=examples,coverage,fuzzing",
            "--generation-database=none",
            "--request-timeout=30",
            "--no-color",
            "--report=junit",
            f"--report-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
