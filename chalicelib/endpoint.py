"""The one call to the model: SageMaker runtime's invoke_endpoint, its failures mapped to API errors."""

from __future__ import annotations

import functools
import json
import uuid
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
    try:
        response = runtime_client().invoke_endpoint(
            EndpointName=endpoint_name,
            ContentType=CONTENT_TYPE,
            Accept=ACCEPT,
            CustomAttributes=f"top_k={top_k}",
            Body=jpeg,
        )
        body = response["Body"].read()
    except ReadTimeoutError as error:
        raise EndpointTimeout(f"the endpoint did not answer within {ENDPOINT_READ_TIMEOUT_S:g} s") from error
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError) as error:
        raise EndpointUnavailable(f"the endpoint {endpoint_name!r} cannot be reached") from error
    except ClientError as error:
        raise _mapped(error, endpoint_name) from error
    try:
        return json.loads(body)
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


# --- asynchronous endpoints: the photo goes to S3 and is queued; the answer says where the result will be ---


@functools.cache
def s3_client():
    """The container's one S3 client for queued photos, with the endpoint's time limits."""
    config = Config(
        connect_timeout=ENDPOINT_CONNECT_TIMEOUT_S,
        read_timeout=ENDPOINT_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": ENDPOINT_MAX_ATTEMPTS},
    )
    return boto3.client("s3", config=config)


def queue_model_request(
    endpoint_name: str, jpeg: bytes, top_k: int, bucket: str, prefix: str
) -> dict[str, Any]:
    """Put the JPEG under s3://bucket/prefix/ and queue it on the async endpoint.

    Returns {"status": "queued", "inference_id", "output_location", "failure_location"}: SageMaker writes the
    endpoint's answer (the same JSON invoke_model returns) to output_location, or the error to
    failure_location. Raises what invoke_model raises; a photo S3 refuses is EndpointUnavailable.
    """
    inference_id = uuid.uuid4().hex
    key = f"{prefix}/{inference_id}.jpg"
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=jpeg, ContentType=CONTENT_TYPE)
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError) as error:
        raise EndpointUnavailable(
            f"the photo could not be queued for {endpoint_name!r}: S3 cannot be reached"
        ) from error
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise EndpointUnavailable(f"the photo could not be queued for {endpoint_name!r} ({code})") from error
    try:
        response = runtime_client().invoke_endpoint_async(
            EndpointName=endpoint_name,
            ContentType=CONTENT_TYPE,
            Accept=ACCEPT,
            CustomAttributes=f"top_k={top_k}",
            InferenceId=inference_id,
            InputLocation=f"s3://{bucket}/{key}",
        )
    except ReadTimeoutError as error:
        raise EndpointTimeout(f"the endpoint did not answer within {ENDPOINT_READ_TIMEOUT_S:g} s") from error
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError) as error:
        raise EndpointUnavailable(f"the endpoint {endpoint_name!r} cannot be reached") from error
    except ClientError as error:
        raise _mapped(error, endpoint_name) from error
    return {
        "status": "queued",
        "inference_id": response.get("InferenceId", inference_id),
        "output_location": response["OutputLocation"],
        "failure_location": response.get("FailureLocation"),
    }
