"""The one call to the model: SageMaker runtime's invoke_endpoint, its failures mapped to API errors."""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chalicelib.errors import EndpointTimeout, EndpointUnavailable, ModelFailed
from chalicelib.settings import (
    ENDPOINT_CONNECT_TIMEOUT_S,
    ENDPOINT_MAX_ATTEMPTS,
    ENDPOINT_READ_TIMEOUT_S,
    get_settings,
)

CONTENT_TYPE = "image/jpeg"
ACCEPT = "application/json"
BATCH_CONTENT_TYPE = "application/json"
# The handlers' RECORD_JSON (serving/inference.py, which the API cannot import; a test keeps them equal):
# an image of a batch the model cannot take answers an error in its place instead of failing the batch.
BATCH_ACCEPT = "application/vnd.dogbreeds.record+json"
# How much of the model container's own error message is passed on to the caller.
_MAX_RELAYED_CHARS = 300
# Error codes after which the endpoint may well answer if asked again later.
_RETRY_LATER_CODES = {
    "ThrottlingException",
    "ServiceUnavailable",
    "ModelNotReadyException",
    "InternalFailure",
}


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


def invoke_model(endpoint_name: str, jpeg: bytes, top_k: int) -> dict[str, Any]:
    """The endpoint's answer for one JPEG: predictions, is_dog, dog_probability, model.

    Raises ModelFailed (the model container failed on it), EndpointUnavailable (unreachable, unknown,
    throttled or overloaded, after botocore's retries) and EndpointTimeout (no answer in time).
    """
    return _invoke(endpoint_name, jpeg, CONTENT_TYPE, ACCEPT, top_k)


def invoke_model_batch(endpoint_name: str, jpegs: list[bytes], top_k: int) -> list[dict[str, Any]]:
    """The endpoint's answers for several JPEGs in one call, in order: each an answer as `invoke_model`'s or
    `{"error": {"code", "status", "message"}}` for an image the model could not take.

    Raises as `invoke_model` does, and ModelFailed when the answer is not one per image.
    """
    body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()} for jpeg in jpegs]})
    answers = _invoke(endpoint_name, body.encode(), BATCH_CONTENT_TYPE, BATCH_ACCEPT, top_k)
    if isinstance(answers, dict) and "error" in answers:
        raise ModelFailed(f"the endpoint refused the batch: {answers['error'].get('message', '')}")
    if not isinstance(answers, list) or len(answers) != len(jpegs):
        raise ModelFailed("the endpoint did not answer one result per image")
    return answers


def _invoke(endpoint_name: str, body: bytes, content_type: str, accept: str, top_k: int) -> Any:
    try:
        response = runtime_client().invoke_endpoint(
            EndpointName=endpoint_name,
            ContentType=content_type,
            Accept=accept,
            CustomAttributes=f"top_k={top_k}",
            Body=body,
        )
        answer = response["Body"].read()
    except ReadTimeoutError as error:
        raise EndpointTimeout(f"the endpoint did not answer within {ENDPOINT_READ_TIMEOUT_S:g} s") from error
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError) as error:
        raise EndpointUnavailable(f"the endpoint {endpoint_name!r} cannot be reached") from error
    except ClientError as error:
        raise _mapped(error, endpoint_name) from error
    try:
        return json.loads(answer)
    except ValueError as error:
        raise ModelFailed("the endpoint answered something that is not JSON") from error


def _mapped(error: ClientError, endpoint_name: str) -> Exception:
    details = error.response.get("Error", {})
    code = details.get("Code", "")
    message = details.get("Message", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "ModelError":
        original = str(error.response.get("OriginalMessage") or message)
        return ModelFailed(f"the model failed on this image: {original[:_MAX_RELAYED_CHARS]}")
    if code == "ValidationError":
        # invoke_endpoint's arguments are ours, so this means the stage's endpoint does not exist (yet).
        return EndpointUnavailable(f"the endpoint {endpoint_name!r} is not available: {message}")
    if code in _RETRY_LATER_CODES or status >= 500 or status == 429:
        reason = code or f"HTTP {status}"
        return EndpointUnavailable(f"the endpoint {endpoint_name!r} is busy or unavailable ({reason})")
    return ModelFailed(f"the endpoint refused the request: {code} {message}".strip())
