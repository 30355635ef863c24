"""The API end to end: chalice.test.Client for every route and the Lambda function, against the real local
endpoint process serving the committed model, and `scripts/smoke.sh` against a real `chalice local`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from api_calls import assert_error, client_for, post_image, post_json
from chalice.test import Client
from conftest import (
    DEFAULT_MODEL,
    LABRADOR,
    PROJECT,
    SPANIEL,
    EndpointProcess,
    file_server,
    write_stage_project,
)
from gateway import Gateway, serving_gateway
from local_servers import free_port
from pictures import as_a_phone_stores_it, claiming_size, encoded, in_format, zero_png
from PIL import Image
from scripted_runtime import scripted

import app as api
from chalicelib import invoke
from chalicelib.errors import answers_errors
from chalicelib.invoke import runtime_client
from chalicelib.settings import (
    BATCH_PREPARE_TIMEOUT_S,
    BATCH_WORST_CASE_S,
    MAX_BATCH_ITEMS,
    MAX_UPLOAD_BYTES,
    RETRY_AFTER_S,
    UPLOAD_CONTENT_TYPES,
)

pytestmark = pytest.mark.usefixtures("new_container")


@pytest.fixture
def dev_client(runtime_env) -> Client:
    """The `dev` stage exactly as configured: loopback fetches are refused there."""
    return Client(api.app, stage_name="dev", project_dir=str(PROJECT))


def top_label(answer: dict) -> str:
    return answer["predictions"][0]["label"]


# --- the happy paths ---


def test_health(client):
    response = client.http.get("/health")
    assert response.status_code == 200
    assert response.json_body["status"] == "ok" and response.json_body["endpoint"] == "dogbreeds-local"


def test_local_stage_uses_the_endpoint_name_the_local_server_answers():
    from serving.server import DEFAULT_ENDPOINT_NAME  # test-only import: the API side never imports training

    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    assert config["stages"]["local"]["environment_variables"]["ENDPOINT_NAME"] == DEFAULT_ENDPOINT_NAME


def test_image_bytes_are_classified(client, samples):
    data = (samples / LABRADOR).read_bytes()
    response = post_image(client, data)
    assert response.status_code == 200, response.body
    answer = response.json_body
    assert top_label(answer) == "Labrador_retriever"
    assert answer["predictions"][0]["breed"] == "Labrador retriever"
    assert answer["is_dog"] is True and answer["dog_probability"] > 0.5
    assert len(answer["predictions"]) == 5
    assert answer["model"]["name"] == "dogbreeds"
    assert answer["image"] == {
        "width": 700,
        "height": 487,
        "bytes_received": len(data),
        "bytes_sent": answer["image"]["bytes_sent"],
    }
    assert 0 < answer["image"]["bytes_sent"] < len(data)
    timings = answer["timings_ms"]
    assert set(timings) == {"fetch", "resize", "invoke", "total"}
    assert timings["total"] >= timings["invoke"] > 0


def test_octet_stream_and_top_k_query(client, samples):
    data = (samples / LABRADOR).read_bytes()
    response = post_image(client, data, "application/octet-stream", "?top_k=2")
    assert response.status_code == 200, response.body
    assert [p["label"] for p in response.json_body["predictions"]][:1] == ["Labrador_retriever"]
    assert len(response.json_body["predictions"]) == 2


def test_base64_json_with_top_k(client, samples):
    data = (samples / LABRADOR).read_bytes()
    response = post_json(client, {"image": base64.b64encode(data).decode(), "top_k": 3})
    assert response.status_code == 200, response.body
    assert top_label(response.json_body) == "Labrador_retriever"
    assert len(response.json_body["predictions"]) == 3


def test_base64_data_url_as_browsers_send_it(client, samples):
    data_url = "data:image/jpeg;base64," + base64.encodebytes((samples / LABRADOR).read_bytes()).decode()
    response = post_json(client, {"image": data_url})
    assert response.status_code == 200, response.body
    assert top_label(response.json_body) == "Labrador_retriever"


def test_image_url_is_fetched_and_classified(client, sample_files, samples):
    response = post_json(client, {"url": f"{sample_files}/{LABRADOR}"})
    assert response.status_code == 200, response.body
    answer = response.json_body
    assert top_label(answer) == "Labrador_retriever"
    assert answer["image"]["bytes_received"] == (samples / LABRADOR).stat().st_size
    assert answer["timings_ms"]["fetch"] > 0


def test_a_dog_outside_the_breed_list_is_still_a_dog(client, samples):
    response = post_image(client, (samples / SPANIEL).read_bytes())
    assert response.status_code == 200, response.body
    assert response.json_body["is_dog"] is True


def test_people_with_a_dog(client, samples):
    response = post_image(client, (samples / "people_with_dog.jpg").read_bytes())
    assert response.status_code == 200, response.body
    assert response.json_body["image"]["width"] == 340


def test_lambda_function_gives_the_rest_answer(client, sample_files, samples):
    data = (samples / LABRADOR).read_bytes()
    rest = post_image(client, data).json_body
    by_url = client.lambda_.invoke("classify", {"url": f"{sample_files}/{LABRADOR}"}).payload
    by_bytes = client.lambda_.invoke("classify", {"image": base64.b64encode(data).decode()}).payload
    for answer in (by_url, by_bytes):
        assert answer["predictions"] == rest["predictions"]
        assert answer["is_dog"] == rest["is_dog"] and answer["model"] == rest["model"]
        assert answer["confident"] == rest["confident"]
        assert answer["image"] == rest["image"]


def test_lambda_function_errors_are_answers_not_exceptions(client):
    payload = client.lambda_.invoke("classify", {"url": "http://169.254.169.254/latest/meta-data/"}).payload
    assert payload["error"]["code"] == "url_not_allowed" and payload["error"]["status"] == 400
    payload = client.lambda_.invoke("classify", {"picture": "x"}).payload
    assert payload["error"]["code"] == "bad_request" and payload["error"]["status"] == 400


@pytest.mark.parametrize(
    ("name", "image", "format", "options"),
    [
        ("cmyk", lambda photo: photo.convert("CMYK"), "JPEG", {}),
        ("alpha", lambda photo: photo.convert("RGBA"), "PNG", {}),
        (
            "16-bit grey",
            lambda photo: photo.convert("L").point(lambda v: v * 257, "I").convert("I;16"),
            "PNG",
            {},
        ),
        ("webp", lambda photo: photo, "WEBP", {}),
        (
            "animated gif",
            lambda photo: photo,
            "GIF",
            {"save_all": True, "append_images": [Image.new("RGB", (9, 9))]},
        ),
    ],
)
def test_unusual_but_valid_images_are_classified(client, samples, name, image, format, options):
    photo = Image.open(samples / LABRADOR)
    data = encoded(image(photo), format, **options)
    response = post_image(client, data, "application/octet-stream")
    assert response.status_code == 200, (name, response.body)
    assert response.json_body["is_dog"] is True
    if name != "16-bit grey":  # a grey Labrador is a fair guess at another breed
        assert top_label(response.json_body) == "Labrador_retriever", name


@pytest.mark.parametrize(("format", "content_type"), [("HEIF", "image/heic"), ("AVIF", "image/avif")])
def test_a_phone_photo_in_heic_or_avif_gets_the_upright_jpegs_answer_on_every_route(
    client, samples, tmp_path, format, content_type
):
    # As an iPhone writes it: the sensor's pixels a quarter turn off, EXIF orientation and HEIF's irot.
    upright = Image.open(samples / LABRADOR).convert("RGB")
    data = as_a_phone_stores_it(upright, format)
    jpeg = post_image(client, encoded(upright, "JPEG", quality=95)).json_body
    (tmp_path / "photo").write_bytes(data)
    with file_server(tmp_path) as url:
        answers = {
            "upload": post_image(client, data, content_type),
            "octet-stream": post_image(client, data, "application/octet-stream"),
            "base64": post_json(client, {"image": b64(data)}),
            "url": post_json(client, {"url": f"{url}/photo"}),
        }
        answers = {route: response.json_body for route, response in answers.items()}
        answers["batch"] = post_json(client, {"images": [b64(data)]}, "/predict/batch").json_body["images"][0]
        answers["lambda"] = client.lambda_.invoke("classify", {"url": f"{url}/photo"}).payload
    for route, answer in answers.items():
        assert top_label(answer) == top_label(jpeg) == "Labrador_retriever", (route, answer)
        assert answer["is_dog"] is True, route
        assert (answer["image"]["width"], answer["image"]["height"]) == upright.size, route
        assert answer["image"]["bytes_received"] == len(data), route


@pytest.mark.parametrize("format", ["HEIF", "AVIF"])
def test_a_heic_or_avif_over_the_bounds_or_damaged_is_a_clear_4xx(client, samples, format):
    small = in_format(Image.new("RGB", (64, 64), (90, 60, 30)), format)
    for data, status, code, words in [
        (claiming_size(small, 9000, 9000), 422, "too_many_pixels", "9000x9000"),
        (claiming_size(small, 6400, 100), 422, "image_too_elongated", "6400x100"),
        (small[: len(small) // 2], 400, "unreadable_image", "cannot be read"),
    ]:
        error = assert_error(post_image(client, data, "application/octet-stream"), status, code)
        assert words in error["message"]
        # The same answer whichever way the photo comes.
        result = post_json(client, {"images": [b64(data)]}, "/predict/batch").json_body["images"][0]
        assert (result["error"]["status"], result["error"]["code"]) == (status, code)


def test_what_is_still_refused_names_what_is_accepted_heic_and_avif_included(client):
    bmp = encoded(Image.new("RGB", (64, 64)), "BMP")
    error = assert_error(post_image(client, bmp, "application/octet-stream"), 415, "unsupported_media_type")
    for format in ("JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF"):
        assert format in error["message"]
    # A Content-Type the upload route does not take: the ones it does.
    error = assert_error(post_image(client, bmp, "image/bmp"), 415, "unsupported_media_type")
    for media_type in ("image/jpeg", "image/heic", "image/heif", "image/avif"):
        assert media_type in error["message"]


# --- bad input ---

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle r="40"/></svg>'


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"\xff\xfe\x00garbage", 400, "invalid_json"),
        (b"[]", 400, "bad_request"),
        (b'"https://example.com/dog.jpg"', 400, "bad_request"),
        (b"{}", 400, "bad_request"),
        (b'{"url": 5}', 400, "bad_request"),
        (b'{"url": ""}', 400, "bad_request"),
        (b'{"image": 5}', 400, "bad_request"),
        (b'{"image": ""}', 400, "empty_image"),
        (b'{"image": "data:image/jpeg;base64,"}', 400, "empty_image"),
        (b'{"image": "!!not base64!!"}', 400, "bad_request"),
        (b'{"url": "https://example.com/a.jpg", "image": "aGk="}', 400, "bad_request"),
        (b'{"url": "https://example.com/a.jpg", "size": 3}', 400, "bad_request"),
        (b'{"image": "aGk=", "top_k": 0}', 400, "bad_request"),
        (b'{"image": "aGk=", "top_k": "3"}', 400, "bad_request"),
        (b'{"image": "aGk=", "top_k": true}', 400, "bad_request"),
        (b'{"image": "aGk=", "top_k": 1000}', 400, "bad_request"),
        (b'{"image": "aGk=", "min_confidence": 1.5}', 400, "bad_request"),
        (b'{"image": "aGk=", "min_confidence": "0.3"}', 400, "bad_request"),
        (b'{"image": "aGk=", "min_confidence": true}', 400, "bad_request"),
        (
            json.dumps({"image": base64.b64encode(b"hello, not an image").decode()}).encode(),
            400,
            "unreadable_image",
        ),
        (json.dumps({"image": base64.b64encode(SVG).decode()}).encode(), 400, "unreadable_image"),
        (json.dumps({"url": "notaurl"}).encode(), 400, "url_not_allowed"),
    ],
)
def test_bad_json_requests(client, body, status, code):
    assert_error(post_json(client, body), status, code)


def test_base64_over_the_limit(client):
    body = json.dumps({"image": base64.b64encode(b"\0" * (MAX_UPLOAD_BYTES + 1)).decode()}).encode()
    error = assert_error(post_json(client, body), 413, "payload_too_large")
    assert str(MAX_UPLOAD_BYTES) in error["message"]


def test_body_over_the_limit(client):
    error = assert_error(post_image(client, b"\xff" * (MAX_UPLOAD_BYTES + 1)), 413, "payload_too_large")
    assert str(MAX_UPLOAD_BYTES) in error["message"]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"", "image/jpeg", 400, "empty_image"),
        (b"GIF89a but not really", "image/jpeg", 400, "unreadable_image"),
        (SVG, "application/octet-stream", 400, "unreadable_image"),
        (SVG, "image/svg+xml", 415, "unsupported_media_type"),
        (b"{}", "application/json", 415, "unsupported_media_type"),
        (
            encoded(Image.new("RGB", (64, 64)), "BMP"),
            "application/octet-stream",
            415,
            "unsupported_media_type",
        ),
        (zero_png(20_000, 20_000), "image/png", 422, "too_many_pixels"),
        (zero_png(7_000, 7_000), "image/png", 422, "too_many_pixels"),
    ],
    ids=[
        "empty",
        "not-an-image",
        "svg-as-bytes",
        "svg-type",
        "json-type",
        "bmp",
        "20000x20000-png",
        "49-MP-png",
    ],
)
def test_bad_image_uploads(client, data, content_type, status, code):
    assert_error(post_image(client, data, content_type), status, code)


def test_truncated_jpeg(client, samples):
    data = (samples / LABRADOR).read_bytes()
    error = assert_error(post_image(client, data[: len(data) // 3]), 400, "unreadable_image")
    assert "JPEG" in error["message"]


def test_bad_top_k_query(client, samples):
    data = (samples / LABRADOR).read_bytes()
    assert_error(post_image(client, data, query="?top_k=many"), 400, "bad_request")


@pytest.mark.parametrize("value", ["high", "-0.5", "2", "nan"])
def test_bad_min_confidence_query(client, samples, value):
    data = (samples / LABRADOR).read_bytes()
    error = assert_error(post_image(client, data, query=f"?min_confidence={value}"), 400, "bad_request")
    assert "min_confidence" in error["message"]


def test_min_confidence_through_every_route(client, samples):
    data = (samples / LABRADOR).read_bytes()
    everything = post_image(client, data, query="?top_k=20").json_body
    assert isinstance(everything["confident"], bool)
    # Halfway between the second and third breeds: exactly two are left, whichever route asks.
    second, third = (p["probability"] for p in everything["predictions"][1:3])
    cut = (second + third) / 2
    by_query = post_image(client, data, query=f"?top_k=20&min_confidence={cut}").json_body
    by_json = post_json(client, {"image": base64.b64encode(data).decode(), "min_confidence": cut}).json_body
    by_lambda = client.lambda_.invoke(
        "classify", {"image": base64.b64encode(data).decode(), "min_confidence": cut}
    ).payload
    by_batch = post_json(
        client, {"images": [base64.b64encode(data).decode()], "min_confidence": cut}, "/predict/batch"
    ).json_body["images"][0]
    by_batch_lambda = client.lambda_.invoke(
        "classify", {"images": [base64.b64encode(data).decode()], "min_confidence": cut}
    ).payload["images"][0]
    expected = everything["predictions"][:2]
    for answer in (by_query, by_json, by_lambda, by_batch, by_batch_lambda):
        # A batch runs other kernels than one image: the same answer to float precision.
        assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in expected]
        probabilities = [p["probability"] for p in answer["predictions"]]
        assert probabilities == pytest.approx([p["probability"] for p in expected], abs=1e-5)
        assert answer["confident"] == everything["confident"]
    error = client.lambda_.invoke("classify", {"image": "aGk=", "min_confidence": 7}).payload["error"]
    assert error["status"] == 400 and "min_confidence" in error["message"]


def test_json_with_a_charset_is_json(client, samples):
    body = json.dumps({"image": base64.b64encode((samples / LABRADOR).read_bytes()).decode()}).encode()
    response = client.http.post(
        "/predict", headers={"Content-Type": "application/json; charset=utf-8"}, body=body
    )
    assert response.status_code == 200, response.body


def test_an_unexpected_error_is_a_plain_500_and_logged(caplog):
    @answers_errors
    def buggy_view():
        raise KeyError("internal detail")

    response = buggy_view()
    assert response.status_code == 500
    assert response.body == {"error": {"code": "internal_error", "message": "an internal error occurred"}}
    assert "internal detail" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("path", "content_type", "hint"),
    [
        ("/predict/image", "image/jpg", "image/jpeg)"),
        ("/predict/image", "multipart/form-data; boundary=x", "--data-binary"),
        ("/predict", "image/jpeg", "/predict/image"),
        ("/predict/batch", "application/x-www-form-urlencoded", "/predict/image"),
    ],
    ids=["image/jpg", "curl -F", "jpeg to /predict", "curl --data-binary without a type"],
)
def test_a_415_names_the_accepted_types_and_the_route_for_raw_bytes(
    client, samples, path, content_type, hint
):
    data = (samples / LABRADOR).read_bytes()
    if content_type.startswith("multipart/"):
        data = (
            b"--x\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
            + data
            + b"\r\n--x--\r\n"
        )
    response = client.http.post(path, headers={"Content-Type": content_type}, body=data)
    error = assert_error(response, 415, "unsupported_media_type")
    assert hint in error["message"] and content_type.split(";")[0] in error["message"]
    assert "application/json" in error["message"]
    for accepted in UPLOAD_CONTENT_TYPES:
        assert accepted in error["message"]


def test_wrong_method_keeps_the_error_shape(client):
    assert_error(client.http.get("/predict"), 405, "method_not_allowed")


# --- unsafe URLs ---


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/" + LABRADOR,
        "http://localhost:{port}/" + LABRADOR,
        "http://[::1]:{port}/" + LABRADOR,
        "http://[::ffff:127.0.0.1]:{port}/" + LABRADOR,
        "http://2130706433:{port}/" + LABRADOR,
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/dog.jpg",
        "http://192.168.0.1/dog.jpg",
        "http://100.64.0.1/dog.jpg",
        "http://0.0.0.0:{port}/",
        "file:///etc/passwd",
        "ftp://example.com/dog.jpg",
    ],
)
def test_unsafe_urls_are_refused_outside_the_local_stage(dev_client, sample_files, url):
    port = sample_files.rsplit(":", 1)[1]
    response = post_json(dev_client, {"url": url.format(port=port)})
    assert_error(response, 400, "url_not_allowed")


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "file:///etc/passwd"]
)
def test_a_redirect_to_a_private_address_is_refused(client, sample_files, target):
    response = post_json(client, {"url": f"{sample_files}/redirect?to={target}"})
    assert_error(response, 400, "url_not_allowed")


def test_a_missing_url_is_a_fetch_failure(client, sample_files):
    error = assert_error(
        post_json(client, {"url": f"{sample_files}/no-such-dog.jpg"}), 400, "url_fetch_failed"
    )
    assert "404" in error["message"]


# --- the endpoint failing ---


@pytest.fixture(scope="module")
def broken_endpoint(tmp_path_factory) -> Iterator[EndpointProcess]:
    """A real endpoint whose artifact loads but fails on every image (its normalisation has two channels)."""
    model_dir = tmp_path_factory.mktemp("broken-model")
    for path in DEFAULT_MODEL.iterdir():
        shutil.copy(path, model_dir / path.name)
    config = json.loads((model_dir / "config.json").read_text())
    config["preprocessing"]["mean"] = [0.5, 0.5]
    (model_dir / "config.json").write_text(json.dumps(config))
    running = EndpointProcess(model_dir).wait_ready()
    yield running
    running.stop()


def test_model_error_is_502_then_a_stopped_endpoint_is_503(runtime_env, broken_endpoint, samples, tmp_path):
    client = client_for(tmp_path, broken_endpoint.url)
    data = (samples / LABRADOR).read_bytes()
    error = assert_error(post_image(client, data), 502, "model_error")
    assert "model failed" in error["message"]

    broken_endpoint.stop()
    runtime_client.cache_clear()
    response = post_image(client, data)
    assert_error(response, 503, "endpoint_unavailable")
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)


def test_an_unknown_endpoint_name_is_503(runtime_env, endpoint, samples, tmp_path):
    project = write_stage_project(
        tmp_path, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=endpoint.url, ENDPOINT_NAME="dogbreeds-missing"
    )
    client = Client(api.app, stage_name="local", project_dir=str(project))
    response = post_image(client, (samples / LABRADOR).read_bytes())
    error = assert_error(response, 503, "endpoint_unavailable")
    assert "dogbreeds-missing" in error["message"]


def test_throttling_is_retried_then_503(runtime_env, samples, tmp_path):
    # What the SageMaker runtime answers when an endpoint is over its invocation rate.
    throttling, server = scripted(
        400, {"message": "Rate exceeded"}, {"x-amzn-ErrorType": "ThrottlingException"}
    )
    with server as url:
        client = client_for(tmp_path, url)
        response = post_image(client, (samples / LABRADOR).read_bytes())
    assert_error(response, 503, "endpoint_unavailable")
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert throttling.requests == invoke.ENDPOINT_MAX_ATTEMPTS


def test_an_endpoint_that_does_not_answer_is_504(runtime_env, samples, tmp_path, monkeypatch):
    # A real socket that accepts and never answers; a short read timeout keeps the test quick.
    monkeypatch.setattr(invoke, "ENDPOINT_READ_TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        client = client_for(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}")
        response = post_image(client, (samples / LABRADOR).read_bytes())
    finally:
        silent.close()
    assert_error(response, 504, "endpoint_timeout")


def test_a_stage_without_an_endpoint_name_is_a_clean_500(runtime_env, samples, tmp_path):
    project = write_stage_project(tmp_path, ENDPOINT_NAME="")
    client = Client(api.app, stage_name="local", project_dir=str(project))
    error = assert_error(post_image(client, (samples / LABRADOR).read_bytes()), 500, "misconfigured")
    assert "ENDPOINT_NAME" in error["message"]


@pytest.mark.parametrize("seconds", ["0", "-1", f"{BATCH_PREPARE_TIMEOUT_S + 1:g}", "nan", "soon"])
def test_a_batch_prepare_limit_over_the_time_budget_or_not_a_time_is_a_clean_500(
    runtime_env, samples, tmp_path, seconds
):
    project = write_stage_project(tmp_path, BATCH_PREPARE_TIMEOUT_S=seconds)
    client = Client(api.app, stage_name="local", project_dir=str(project))
    body = {"images": [b64((samples / LABRADOR).read_bytes())]}
    error = assert_error(post_json(client, body, "/predict/batch"), 500, "misconfigured")
    assert "BATCH_PREPARE_TIMEOUT_S" in error["message"] and repr(seconds) in error["message"]


# --- scripts/smoke.sh against a real `chalice local` ---


def test_smoke_script_against_chalice_local(api_stack, sample_files):
    result = smoke(api_stack.url, sample_files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "POST /predict (url) -> HTTP 200" in result.stdout and "Labrador_retriever" in result.stdout
    assert "no API key" not in result.stdout


def smoke(api_url: str, *images_url: str, api_key: str | None = None) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name not in ("API_KEY", "IMAGES_URL")}
    if api_key is not None:
        env["API_KEY"] = api_key
    return subprocess.run(
        ["bash", str(PROJECT / "scripts" / "smoke.sh"), api_url, *images_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_smoke_script_checks_a_stage_that_needs_a_key(api_stack):
    """As against a deployed prod: API Gateway (a loopback stand-in) refuses the routes without the key,
    and the stage cannot fetch from this machine, so only an IMAGES_URL given would be fetched."""
    gateway = Gateway(
        api_url=api_stack.url, required_key="the-key", forbidden_body=b'{"message": "Forbidden"}'
    )
    with serving_gateway(gateway) as url:
        keyed = smoke(url + "/", api_key="the-key")
        wrong = smoke(url, api_key="not-the-key")
        without = smoke(url)
    assert keyed.returncode == 0, keyed.stdout + keyed.stderr
    assert "GET /breeds -> HTTP 200" in keyed.stdout and "Labrador_retriever" in keyed.stdout
    assert "POST /predict (url) skipped" in keyed.stdout
    assert "POST /predict/image (no API key) -> HTTP 403" in keyed.stdout
    assert "the-key" not in keyed.stdout + keyed.stderr
    assert wrong.returncode != 0 and "expected HTTP 200" in wrong.stderr
    assert without.returncode != 0 and "expected HTTP 200" in without.stderr


def test_smoke_script_fails_when_the_api_is_down(sample_files):
    result = subprocess.run(
        ["bash", str(PROJECT / "scripts" / "smoke.sh"), f"http://127.0.0.1:{free_port()}", sample_files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


# --- several photos in one request ---


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_batch_answers_each_item_in_order_with_one_endpoint_call(client, sample_files, samples):
    labrador, spaniel = (
        (samples / LABRADOR).read_bytes(),
        (samples / SPANIEL).read_bytes(),
    )
    single = post_image(client, labrador, query="?top_k=3").json_body
    single_spaniel = post_image(client, spaniel).json_body
    # The Lambda container's one client, made by the requests above: count what goes through it from here.
    calls = []
    runtime_client().meta.events.register(
        "before-call.sagemaker-runtime.InvokeEndpoint", lambda params, **_: calls.append(params)
    )
    response = post_json(
        client,
        {
            "images": [b64(labrador), b64(b"not a photo"), "***", b64(spaniel)],
            "urls": [
                f"{sample_files}/{LABRADOR}",
                f"{sample_files}/missing.jpg",
                "http://169.254.169.254/latest/",
            ],
            "top_k": 3,
        },
        "/predict/batch",
    )
    assert response.status_code == 200, response.body
    answer = response.json_body
    assert [len(answer["images"]), len(answer["urls"])] == [4, 3]
    codes = [result.get("error", {}).get("code") for result in answer["images"] + answer["urls"]]
    assert codes == [
        None,
        "unreadable_image",
        "bad_request",
        None,
        None,
        "url_fetch_failed",
        "url_not_allowed",
    ]
    assert [
        result["error"]["status"] for result in answer["images"] + answer["urls"] if "error" in result
    ] == [
        400,
        400,
        400,
        400,
    ]
    # The good items answer as the single-photo route does.
    for result in (answer["images"][0], answer["urls"][0]):
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in single["predictions"]]
        assert result["predictions"][0]["probability"] == pytest.approx(
            single["predictions"][0]["probability"], abs=1e-4
        )
        assert result["image"] == single["image"] and result["is_dog"] is True
    assert top_label(answer["images"][3]) == top_label(single_spaniel)
    # Three photos could be had; they went to the endpoint together, as one JSON batch.
    assert len(calls) == 1
    assert calls[0]["headers"]["Content-Type"] == "application/json"
    assert len(json.loads(calls[0]["body"])["instances"]) == 3


def test_lambda_function_takes_a_batch(client, sample_files):
    payload = client.lambda_.invoke(
        "classify", {"urls": [f"{sample_files}/{LABRADOR}", "ftp://example.com/x.jpg"]}
    )
    results = payload.payload["urls"]
    assert top_label(results[0]) == "Labrador_retriever"
    assert results[1]["error"]["code"] == "url_not_allowed" and payload.payload["images"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"urls": ["http://127.0.0.1/a.jpg"] * (MAX_BATCH_ITEMS + 1)}, 413, "payload_too_large"),
        ({"images": [b64(b"x" * (MAX_UPLOAD_BYTES // 2 + 1))] * 2}, 413, "payload_too_large"),
        ({"images": [], "urls": []}, 400, "bad_request"),
        ({"images": "abc"}, 400, "bad_request"),
        ({"urls": [{"url": "http://127.0.0.1/a.jpg"}]}, 400, "bad_request"),
        ({"urls": ["http://127.0.0.1/a.jpg"], "url": "x"}, 400, "bad_request"),
        ({"urls": ["http://127.0.0.1/a.jpg"], "top_k": 0}, 400, "bad_request"),
        (b"[not json", 400, "invalid_json"),
        (b'{"images": ["' + b"A" * (8 * 1024 * 1024) + b'"]}', 413, "payload_too_large"),
    ],
)
def test_bad_batches_are_refused_whole(client, body, status, code):
    assert_error(post_json(client, body, "/predict/batch"), status, code)


def test_a_batch_fits_the_lambda_timeout():
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    timeouts = [
        stage["lambda_functions"][name]["lambda_timeout"]
        for stage in config["stages"].values()
        for name in ("api_handler", "classify")
        if "lambda_functions" in stage
    ]
    assert timeouts and BATCH_WORST_CASE_S < min(timeouts)
