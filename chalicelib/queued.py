"""Asynchronous endpoints: the photo is put in S3 and queued; its answer is read back from S3 once written.

SageMaker names the objects it writes (the OutputLocation and FailureLocation it answers when a photo is
queued), so the Lambda keeps a ticket per request, `OUTPUT_PREFIX/requests/<inference id>.json`, holding
those two locations. A caller asks with the inference id alone: 32 hex digits of our own making, which can
name nothing but a ticket, and a ticket's locations must lie under the stage's output and failure prefixes.

The stage's policy grants exactly this (training/jobs/chalice_stage.py): PutObject under the input prefix and
for the tickets, GetObject under the output and failure prefixes, and ListBucket only for keys under those
prefixes, which is how S3 tells the Lambda "not there yet" (without it, a missing object reads as forbidden).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from chalicelib.errors import (
    BadModelAnswer,
    BadRequest,
    EndpointTimeout,
    EndpointUnavailable,
    ModelFailed,
    NotFound,
)
from chalicelib.invoke import (
    MAX_RELAYED_CHARS,
    custom_attributes,
    mapped_error,
    parse_answer,
    runtime_client,
)
from chalicelib.settings import (
    ASYNC_TICKETS_FOLDER,
    ENDPOINT_CONNECT_TIMEOUT_S,
    ENDPOINT_MAX_ATTEMPTS,
    ENDPOINT_READ_TIMEOUT_S,
    JPEG,
    JSON,
    MAX_RESULT_BYTES,
    ConfigurationError,
    Settings,
)

INFERENCE_ID = re.compile(r"[0-9a-f]{32}")


@functools.cache
def s3_client():
    """The container's one S3 client for queued photos and their results, with the endpoint's time limits."""
    config = Config(
        connect_timeout=ENDPOINT_CONNECT_TIMEOUT_S,
        read_timeout=ENDPOINT_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": ENDPOINT_MAX_ATTEMPTS},
    )
    return boto3.client("s3", config=config)


def queue_model_request(
    settings: Settings, jpeg: bytes, top_k: int, min_confidence: float | None
) -> dict[str, Any]:
    """Put the JPEG under the stage's input prefix, queue it on the async endpoint with top_k and
    min_confidence (which the endpoint applies, as for a real-time call) and keep its ticket.

    Returns {"status": "queued", "inference_id", "output_location", "failure_location"}. Raises what
    invoke_model raises; S3 refusing the photo or the ticket is EndpointUnavailable; an endpoint writing
    outside the stage's output or failure prefix is a ConfigurationError.
    """
    endpoint_name = settings.endpoint_name
    inference_id = uuid.uuid4().hex
    bucket, prefix = settings.async_input
    key = f"{prefix}/{inference_id}.jpg"
    _put(bucket, key, jpeg, JPEG, f"the photo could not be queued for {endpoint_name!r}")
    try:
        response = runtime_client().invoke_endpoint_async(
            EndpointName=endpoint_name,
            ContentType=JPEG,
            Accept=JSON,
            CustomAttributes=custom_attributes(top_k, min_confidence),
            InferenceId=inference_id,
            InputLocation=f"s3://{bucket}/{key}",
        )
    except ReadTimeoutError as error:
        raise EndpointTimeout(f"the endpoint did not answer within {ENDPOINT_READ_TIMEOUT_S:g} s") from error
    except (EndpointConnectionError, ConnectTimeoutError, BotoCoreError) as error:
        raise EndpointUnavailable(f"the endpoint {endpoint_name!r} cannot be reached") from error
    except ClientError as error:
        raise mapped_error(error, endpoint_name, len(jpeg)) from error
    locations = {
        "output_location": response["OutputLocation"],
        "failure_location": response.get("FailureLocation"),
    }
    _result_objects(locations, settings)
    ticket = json.dumps(locations).encode()
    _put(*_ticket(settings, inference_id), ticket, JSON, f"the request to {endpoint_name!r} was not kept")
    return {"status": "queued", "inference_id": inference_id, **locations}


def read_result(settings: Settings, inference_id: str) -> dict[str, Any] | None:
    """The model's answer for a queued request (validated like every answer), or None while it is pending.

    Raises NotFound (not an async stage, or no such request), BadRequest (not an inference id of ours),
    ModelFailed (the endpoint wrote a failure), BadModelAnswer (its answer is not one), EndpointUnavailable
    (S3 cannot be read) and ConfigurationError (a ticket pointing outside the stage's prefixes).
    """
    if settings.endpoint_kind != "async":
        raise NotFound("this stage's endpoint answers at once: POST /predict answers 200, nothing is queued")
    if not INFERENCE_ID.fullmatch(inference_id):
        raise BadRequest("the inference id must be the 32 hex digits that POST /predict answered 202 with")
    ticket = _read_if_present(*_ticket(settings, inference_id))
    if ticket is None:
        raise NotFound(f"no queued request {inference_id} on this stage")
    try:
        locations = json.loads(ticket)
    except ValueError as error:
        raise ConfigurationError(f"the ticket of {inference_id} is not JSON") from error
    output, failure = _result_objects(locations, settings)
    answer = _read_if_present(*output)
    if answer is not None:
        return parse_answer(answer)
    failed = _read_if_present(*failure)
    if failed is not None:
        raise ModelFailed(f"the model failed on this image: {_failure_reason(failed)}")
    return None


def _ticket(settings: Settings, inference_id: str) -> tuple[str, str]:
    bucket, prefix = settings.async_output
    # SageMaker writes its answers beside this folder, never into it.
    return bucket, f"{prefix}/{ASYNC_TICKETS_FOLDER}/{inference_id}.json"


def _result_objects(locations: Any, settings: Settings) -> tuple[tuple[str, str], tuple[str, str]]:
    """(bucket, key) of the answer and of the failure; raises ConfigurationError unless each lies under the
    stage's output or failure prefix (the endpoint config and the stage disagree)."""
    if not isinstance(locations, dict):
        raise ConfigurationError("a queued request's ticket is not an object")
    return (
        _under(locations.get("output_location"), settings.async_output, "ASYNC_OUTPUT_S3"),
        _under(locations.get("failure_location"), settings.async_failure, "ASYNC_FAILURE_S3"),
    )


def _under(uri: Any, place: tuple[str, str], setting: str) -> tuple[str, str]:
    bucket, prefix = place
    text = uri if isinstance(uri, str) else ""
    found_bucket, _, key = text.removeprefix("s3://").partition("/")
    if not text.startswith("s3://") or found_bucket != bucket or not key.startswith(f"{prefix}/"):
        raise ConfigurationError(
            f"the endpoint writes to {uri!r}, outside {setting} (s3://{bucket}/{prefix}/): "
            "the stage and the endpoint's async output config disagree"
        )
    if ".." in key.split("/"):
        raise ConfigurationError(f"{uri!r} is not a plain S3 location")
    return bucket, key


def _put(bucket: str, key: str, body: bytes, content_type: str, what: str) -> None:
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except (BotoCoreError, ClientError) as error:
        raise EndpointUnavailable(f"{what} ({_reason(error)})") from error


def _read_if_present(bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when there is none; raises BadModelAnswer over MAX_RESULT_BYTES and
    EndpointUnavailable when S3 cannot be read. Listed first: the policy lets the Lambda list these keys,
    so a missing one is an empty listing rather than an AccessDenied."""
    try:
        listed = s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
        if not listed or listed[0]["Key"] != key:
            return None
        if listed[0]["Size"] > MAX_RESULT_BYTES:
            raise BadModelAnswer(f"the endpoint wrote {listed[0]['Size']} bytes, more than any answer holds")
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        return body.read(MAX_RESULT_BYTES + 1)
    except (BotoCoreError, ClientError) as error:
        raise EndpointUnavailable(f"the queued results cannot be read ({_reason(error)})") from error


def _failure_reason(failed: bytes) -> str:
    """The model's own message: our container's {"error": {"message"}}, else the first line written."""
    text = failed.decode("utf-8", errors="replace").strip()
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text.splitlines()[0] if text else "no reason given"
    return str(message)[:MAX_RELAYED_CHARS]


def _reason(error: Exception) -> str:
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code", "") or "refused"
    return "S3 cannot be reached"
