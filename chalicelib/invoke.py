"""The one call to the model: SageMaker runtime's invoke_endpoint, its failures mapped to API errors (an async
endpoint's queue and results are in queued.py)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from chalicelib.errors import (
    BadModelAnswer,
    BreedsNotServed,
    EndpointTimeout,
    EndpointUnavailable,
    ModelFailed,
    ModelPayloadTooLarge,
)
from chalicelib.schema import SchemaMismatch, validate_answer, validate_breeds
from chalicelib.settings import (
    BREEDS_ACCEPT,
    ENDPOINT_CONNECT_TIMEOUT_S,
    ENDPOINT_MAX_ATTEMPTS,
    ENDPOINT_READ_TIMEOUT_S,
    JPEG,
    JSON,
    MAX_ENDPOINT_BODY_BYTES,
    MAX_RETRY_AFTER_S,
    RECORD_JSON,
    RETRY_AFTER_S,
    get_settings,
)

# How much of the model container's own error message is passed on to the caller.
MAX_RELAYED_CHARS = 300
# Error codes after which the endpoint may well answer if asked again later.
_RETRY_LATER_CODES = {
    "ThrottlingException",
    "ServiceUnavailable",
    "ModelNotReadyException",
    "InternalFailure",
}
# A model container shedding load answers these; SageMaker relays them as a ModelError with that status.
_SHEDDING_STATUSES = (429, 503)


@functools.cache
def runtime_client():
    """The container's one sagemaker-runtime client, made on first use (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME
    points it at a local endpoint)."""
    config = Config(
        signature_version=UNSIGNED if get_settings().unsigned_endpoint_requests else None,
        connect_timeout=ENDPOINT_CONNECT_TIMEOUT_S,
        read_timeout=ENDPOINT_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": ENDPOINT_MAX_ATTEMPTS},
    )
    return boto3.client("sagemaker-runtime", config=config)


def invoke_model(
    endpoint_name: str, jpeg: bytes, top_k: int, min_confidence: float | None = None
) -> dict[str, Any]:
    """The endpoint's answer for one JPEG, checked against ANSWER_SCHEMA (chalicelib/schema.py).

    Raises ModelFailed (the model container failed on it), BadModelAnswer (it answered, but not with an
    answer), EndpointUnavailable (unreachable, unknown, throttled, shedding load or closing the connection
    before answering, after botocore's retries),
    EndpointTimeout (no answer in time) and ModelPayloadTooLarge (the endpoint refused the body's size).
    """
    attributes = custom_attributes(top_k, min_confidence)
    return parse_answer(_invoke(endpoint_name, jpeg, JPEG, JSON, attributes))


def custom_attributes(top_k: int, min_confidence: float | None) -> str:
    """What the handlers read from CustomAttributes (serving/inference.py)."""
    attributes = f"top_k={top_k}"
    if min_confidence is not None:
        attributes += f",min_confidence={min_confidence!r}"
    return attributes


def invoke_model_batch(
    endpoint_name: str, jpegs: list[bytes], top_k: int, min_confidence: float | None = None
) -> list[dict[str, Any]]:
    """The endpoint's answers for several JPEGs in ONE call, in order: each an answer as `invoke_model`'s or
    `{"error": {"code", "status", "message"}}` for an image the model could not take.

    Raises as `invoke_model` does; BadModelAnswer also when the answer is not one result per image.
    """
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()} for jpeg in jpegs]}).encode()
    raw = _invoke(endpoint_name, body, JSON, RECORD_JSON, custom_attributes(top_k, min_confidence))
    try:
        answers = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise BadModelAnswer("the endpoint answered something that is not valid JSON") from error
    if isinstance(answers, dict) and isinstance(answers.get("error"), dict):
        raise ModelFailed(f"the endpoint refused the batch: {str(answers['error'].get('message'))[:300]}")
    if not isinstance(answers, list) or len(answers) != len(jpegs):
        raise BadModelAnswer("the endpoint did not answer one result per image")
    try:
        return [answer if _is_error(answer) else validate_answer(answer) for answer in answers]
    except SchemaMismatch as error:
        raise BadModelAnswer(f"the endpoint's answer does not match the response schema: {error}") from error


def model_breeds(endpoint_name: str) -> dict[str, Any]:
    """The endpoint's model breeds and the model (BREEDS_SCHEMA), without running the model.

    Raises BreedsNotServed when the endpoint's serving code does not know the request (it takes `{}` for a
    classification and fails on it), BadModelAnswer for an answer off the schema, and the rest as
    `invoke_model` does.
    """
    try:
        raw = _invoke(endpoint_name, b"{}", JSON, BREEDS_ACCEPT, "")
    except ModelFailed as error:
        raise BreedsNotServed(
            f"the endpoint {endpoint_name!r} does not list its breeds; its serving code predates GET /breeds"
        ) from error
    return _validated(raw, validate_breeds, "breeds")


def _is_error(answer: Any) -> bool:
    return isinstance(answer, dict) and set(answer) == {"error"} and isinstance(answer["error"], dict)


def _invoke(endpoint_name: str, body: bytes, content_type: str, accept: str, attributes: str) -> bytes:
    """The body of the endpoint's 200 answer; raises as `invoke_model` does."""
    arguments = {"CustomAttributes": attributes} if attributes else {}
    try:
        response = runtime_client().invoke_endpoint(
            EndpointName=endpoint_name, ContentType=content_type, Accept=accept, Body=body, **arguments
        )
        return response["Body"].read()
    except ReadTimeoutError as error:
        raise EndpointTimeout(f"the endpoint did not answer within {ENDPOINT_READ_TIMEOUT_S:g} s") from error
    except (EndpointConnectionError, ConnectTimeoutError) as error:
        raise EndpointUnavailable(f"the endpoint {endpoint_name!r} cannot be reached") from error
    except ConnectionClosedError as error:
        # Closed or reset before any byte of an answer (botocore has retried it): nothing was answered, so
        # asking again may well work. bad_model_answer and its alarm stay for answers off the schema.
        raise EndpointUnavailable(
            f"the endpoint {endpoint_name!r} closed the connection before answering; try again shortly"
        ) from error
    except (IncompleteReadError, ResponseStreamingError) as error:
        # The connection broke mid-answer: what came is not the whole answer.
        raise BadModelAnswer("the endpoint's answer was cut off") from error
    except ClientError as error:
        raise mapped_error(error, endpoint_name, len(body)) from error


def parse_answer(body: bytes) -> dict[str, Any]:
    """The endpoint's 200 body as an answer; raises BadModelAnswer for anything that is not one."""
    return _validated(body, validate_answer, "answer")


def _validated(body: bytes, validate: Callable[[Any], dict[str, Any]], what: str) -> dict[str, Any]:
    try:
        answer = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        # RecursionError: JSON nested thousands deep; ValueError covers bad UTF-8, truncation and NaN.
        raise BadModelAnswer("the endpoint answered something that is not valid JSON") from error
    try:
        return validate(answer)
    except SchemaMismatch as error:
        raise BadModelAnswer(f"the endpoint's {what} does not match its schema: {error}") from error


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def mapped_error(error: ClientError, endpoint_name: str, sent_bytes: int) -> Exception:
    details = error.response.get("Error", {})
    code = details.get("Code", "")
    message = details.get("Message", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "ModelError" and error.response.get("OriginalStatusCode") in _SHEDDING_STATUSES:
        return EndpointUnavailable(
            f"the endpoint {endpoint_name!r} is overloaded; try again shortly",
            retry_after_s=_retry_after(error),
        )
    if code == "ModelError":
        original = str(error.response.get("OriginalMessage") or message).strip()
        # SageMaker's inference toolkit puts the container's Python traceback below the message: only the
        # message is for the caller.
        reason = original.splitlines()[0] if original else "no reason given"
        return ModelFailed(f"the model failed on this image: {reason[:MAX_RELAYED_CHARS]}")
    if status == 413 or code == "413":
        # prepare_image keeps bodies under MAX_ENDPOINT_BODY_BYTES: this endpoint takes less than SageMaker.
        return ModelPayloadTooLarge(
            f"the prepared image ({sent_bytes} bytes) is more than the model endpoint accepts"
            f" (SageMaker's limit is {MAX_ENDPOINT_BODY_BYTES} bytes)"
        )
    if code == "ValidationError":
        # invoke_endpoint's arguments are ours, so this means the stage's endpoint does not exist (yet).
        return EndpointUnavailable(f"the endpoint {endpoint_name!r} is not available: {message}")
    if code in _RETRY_LATER_CODES or status >= 500 or status == 429:
        reason = code or f"HTTP {status}"
        return EndpointUnavailable(
            f"the endpoint {endpoint_name!r} is busy or unavailable ({reason})",
            retry_after_s=_retry_after(error),
        )
    return ModelFailed(f"the endpoint refused the request: {code} {message}".strip())


def _retry_after(error: ClientError) -> int:
    """The endpoint's own Retry-After in whole seconds (1 to MAX_RETRY_AFTER_S), else RETRY_AFTER_S."""
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = str(headers.get("retry-after", "")).strip()
    if value.isascii() and value.isdigit():
        return min(max(int(value), 1), MAX_RETRY_AFTER_S)
    return RETRY_AFTER_S
