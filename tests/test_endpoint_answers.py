"""What the API makes of each kind of answer from the model endpoint: real answers of the real local endpoint
validate against the one response schema, and a loopback server speaking the SageMaker runtime's protocol
answers what a faulty or overloaded endpoint would (AWS itself is the only thing imitated)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from api_calls import assert_error, client_for, post_image
from botocore.retries.standard import ExponentialBackoff
from conftest import LABRADOR, PROJECT, SPANIEL
from scripted_runtime import VALID_ANSWER, scripted

from chalicelib import settings
from chalicelib.schema import validate_answer, validate_api_answer, validate_error
from chalicelib.settings import ENDPOINT_MAX_ATTEMPTS, RETRY_AFTER_S

pytestmark = pytest.mark.usefixtures("new_container")


def ask(tmp_path, samples, handler_and_server):
    handler, server = handler_and_server
    with server as url:
        response = post_image(client_for(tmp_path, url), (samples / LABRADOR).read_bytes())
    return handler, response


def test_real_answers_of_the_local_endpoint_match_the_schema(client, samples):
    for name in (LABRADOR, SPANIEL):
        response = post_image(client, (samples / name).read_bytes(), query="?top_k=20")
        assert response.status_code == 200
        answer = response.json_body
        validate_api_answer(answer)
        model_part = {key: value for key, value in answer.items() if key not in ("image", "timings_ms")}
        validate_answer(model_part)
        assert len(answer["predictions"]) == 20


def test_a_valid_answer_is_passed_on_with_its_extra_fields(runtime_env, tmp_path, samples):
    _, response = ask(
        tmp_path, samples, scripted(body={**VALID_ANSWER, "confident": True, "newer_field": [1, 2]})
    )
    assert response.status_code == 200, response.body
    assert response.json_body["confident"] is True and response.json_body["newer_field"] == [1, 2]
    validate_api_answer(response.json_body)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {key: value for key, value in VALID_ANSWER.items() if key != "predictions"},
        {**VALID_ANSWER, "is_dog": "yes"},
        {**VALID_ANSWER, "dog_probability": 1.5},
        {**VALID_ANSWER, "predictions": [{"label": "x", "breed": "x"}]},
        b'{"predictions": [{"label": "x", "breed": "x", "probability": NaN}], "is_dog": true}',
        json.dumps(VALID_ANSWER).encode()[:40],
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe not json",
        b"",
    ],
    ids=[
        "list",
        "empty object",
        "no predictions",
        "is_dog not bool",
        "probability over 1",
        "prediction without probability",
        "NaN",
        "truncated JSON",
        "nested 100000 deep",
        "not UTF-8",
        "empty body",
    ],
)
def test_anything_but_an_answer_is_a_clear_502(runtime_env, tmp_path, samples, body):
    _, response = ask(tmp_path, samples, scripted(body=body))
    error = assert_error(response, 502, "bad_model_answer")
    validate_error(json.loads(response.body))
    assert "endpoint" in error["message"]


def test_an_answer_cut_off_on_the_wire_is_a_clear_502(runtime_env, tmp_path, samples):
    _, response = ask(tmp_path, samples, scripted(body=json.dumps(VALID_ANSWER).encode()[:60], cut_off=True))
    assert_error(response, 502, "bad_model_answer")


@contextmanager
def resetting_server() -> Iterator[tuple[str, list[int]]]:
    """A socket server that reads each request whole and then resets the connection (SO_LINGER 0: an RST,
    not a FIN) before any byte of an answer; yields its URL and the count of requests it reset."""
    listener = socket.create_server(("127.0.0.1", 0))
    resets = [0]

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += connection.recv(65536)
                head, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += connection.recv(65536)
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                resets[0] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", resets
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        listener.close()
        thread.join()


def test_a_connection_reset_before_any_answer_is_a_retryable_503(runtime_env, tmp_path, samples):
    with resetting_server() as (url, resets):
        response = post_image(client_for(tmp_path, url), (samples / LABRADOR).read_bytes())
    error = assert_error(response, 503, "endpoint_unavailable")
    assert "closed the connection" in error["message"]
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
    # botocore retried it as a transient failure before the API answered.
    assert resets[0] == ENDPOINT_MAX_ATTEMPTS


def test_an_endpoint_413_is_not_a_model_error(runtime_env, tmp_path, samples):
    # What SageMaker answers to a body over its limit: no error type at all.
    handler, response = ask(
        tmp_path, samples, scripted(413, {"message": "HTTP content length exceeded 6291456 bytes."})
    )
    error = assert_error(response, 413, "model_payload_too_large")
    assert "bytes" in error["message"]
    assert handler.requests == 1


def test_a_model_error_passes_on_the_containers_message_never_its_traceback(runtime_env, tmp_path, samples):
    # How the SageMaker inference toolkit's 4xx bodies reach the runtime API: the message, then the traceback.
    original = (
        "cannot decode the image; send a JPEG, PNG, WebP or GIF\n"
        "Traceback (most recent call last):\n"
        '  File "/opt/conda/lib/python3.12/site-packages/sagemaker_inference/transformer.py", line 150\n'
        "serving.inference.RequestError: cannot decode the image\n"
    )
    body = {"message": "Received client error (400)", "OriginalStatusCode": 400, "OriginalMessage": original}
    handler, response = ask(tmp_path, samples, scripted(424, body, {"x-amzn-ErrorType": "ModelError"}))
    error = assert_error(response, 502, "model_error")
    assert (
        error["message"]
        == "the model failed on this image: cannot decode the image; send a JPEG, PNG, WebP or GIF"
    )
    assert "Traceback" not in response.body.decode() and "/opt/conda" not in response.body.decode()


def shedding_model_error(retry_after: str | None):
    body = {
        "message": 'Received server error (503) from primary with message "overloaded".',
        "ErrorCode": "SERVER_ERROR_FROM_MODEL",
        "OriginalStatusCode": 503,
        "OriginalMessage": "overloaded",
    }
    headers = {"x-amzn-ErrorType": "ModelError"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return scripted(424, body, headers)


@pytest.mark.parametrize("retry_after, expected", [(None, RETRY_AFTER_S), ("5", 5), ("soon", RETRY_AFTER_S)])
def test_a_container_shedding_load_is_a_503_with_retry_after(
    runtime_env, tmp_path, samples, retry_after, expected
):
    handler, response = ask(tmp_path, samples, shedding_model_error(retry_after))
    error = assert_error(response, 503, "endpoint_unavailable")
    assert "overloaded" in error["message"]
    assert response.headers["Retry-After"] == str(expected)
    # SageMaker relays it as a ModelError (HTTP 424), which botocore does not retry: the caller decides.
    assert handler.requests == 1


def test_the_runtime_answering_503_is_retried_once_then_passed_on(runtime_env, tmp_path, samples):
    handler, response = ask(
        tmp_path,
        samples,
        scripted(503, {"message": "busy"}, {"x-amzn-ErrorType": "ServiceUnavailable", "Retry-After": "3"}),
    )
    assert_error(response, 503, "endpoint_unavailable")
    assert response.headers["Retry-After"] == "3"
    assert handler.requests == ENDPOINT_MAX_ATTEMPTS == 2


def test_retries_and_timeouts_fit_the_lambda_timeout():
    config = json.loads((PROJECT / ".chalice" / "config.json").read_text())
    timeouts = [
        stage["lambda_functions"]["api_handler"]["lambda_timeout"]
        for stage in config["stages"].values()
        if "lambda_functions" in stage
    ]
    assert timeouts and settings.WORST_CASE_S < min(timeouts)
    # botocore's standard mode waits rand(0, 1) * 1 s before retrying a throttled call, less otherwise.
    assert settings.ENDPOINT_MAX_ATTEMPTS == 2
    assert ExponentialBackoff._DEFAULT_BACKOFF_CONFIG["throttling_base_scale"] <= settings.ENDPOINT_BACKOFF_S
