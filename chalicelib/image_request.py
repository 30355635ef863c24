"""The pipeline shared by the REST routes and the `classify` Lambda function: bytes or URL in, answer out."""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from chalice import Response

from chalicelib import observability
from chalicelib.errors import BadRequest, EmptyImage, InvalidJson, PayloadTooLarge
from chalicelib.fetch import fetch_image
from chalicelib.image import prepare_image
from chalicelib.invoke import invoke_model
from chalicelib.queued import queue_model_request, read_result
from chalicelib.settings import (
    DEFAULT_TOP_K,
    JPEG_QUALITY,
    MAX_FETCH_BYTES,
    MAX_PIXELS,
    MAX_TOP_K,
    MAX_UPLOAD_BYTES,
    RETRY_AFTER_S,
    get_settings,
)


@dataclass(frozen=True)
class ClassifyRequest:
    """Exactly one of `url` and `image` (the photo's bytes)."""

    url: str | None = None
    image: bytes | None = None
    top_k: int = DEFAULT_TOP_K
    # Predictions under this calibrated probability are left out (the endpoint does it); None: all top_k.
    min_confidence: float | None = None


def parse_json_body(raw_body: bytes) -> ClassifyRequest:
    """The request in a JSON body; raises InvalidJson or BadRequest (see `parse_fields`)."""
    # Line-wrapped base64 and the JSON around it take a little more than the base64 itself.
    if len(raw_body) > _max_base64_chars() * 1.05 + 1024:
        raise PayloadTooLarge(
            f"the request is {len(raw_body)} bytes; images are limited to {MAX_UPLOAD_BYTES} bytes"
        )
    try:
        fields = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidJson(f"the body is not valid JSON: {error}") from error
    except RecursionError as error:
        # Arrays or objects nested thousands deep: valid JSON in principle, never a request.
        raise InvalidJson("the body is nested too deeply to be a request") from error
    return parse_fields(fields)


def parse_fields(fields: Any) -> ClassifyRequest:
    """The request in `{"url": ...}` or `{"image": "<base64>"}`, optional `"top_k"` and `"min_confidence"`.

    Raises BadRequest for anything else (not an object, both or neither field, wrong types, bad base64) and
    PayloadTooLarge for an image over MAX_UPLOAD_BYTES.
    """
    if not isinstance(fields, dict):
        raise BadRequest('expected a JSON object: {"url": "https://..."} or {"image": "<base64>"}')
    unknown = sorted(set(fields) - {"url", "image", "top_k", "min_confidence"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    top_k = parse_top_k(fields.get("top_k", DEFAULT_TOP_K))
    min_confidence = parse_min_confidence(fields.get("min_confidence"))
    has_url, has_image = "url" in fields, "image" in fields
    if has_url == has_image:
        raise BadRequest('give exactly one of "url" and "image"')
    if has_url:
        url = fields["url"]
        if not isinstance(url, str) or not url.strip():
            raise BadRequest('"url" must be a non-empty string')
        return ClassifyRequest(url=url.strip(), top_k=top_k, min_confidence=min_confidence)
    return ClassifyRequest(image=decode_base64(fields["image"]), top_k=top_k, min_confidence=min_confidence)


def parse_top_k(value: Any) -> int:
    # bool is an int in Python; `"top_k": true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise BadRequest(f'"top_k" must be an integer from 1 to {MAX_TOP_K}')
    return value


def parse_top_k_text(value: str | None) -> int:
    """top_k from a query string; raises BadRequest unless it is an integer from 1 to MAX_TOP_K."""
    if value is None:
        return DEFAULT_TOP_K
    value = value.strip()
    # isdigit alone admits digits int() refuses, such as "²".
    if not (value.isascii() and value.isdigit()) or len(value) > 6:
        raise BadRequest(f'"top_k" must be an integer from 1 to {MAX_TOP_K}')
    return parse_top_k(int(value))


_MIN_CONFIDENCE_RANGE = '"min_confidence" must be a number from 0 to 1'


def parse_min_confidence(value: Any) -> float | None:
    """A probability from 0 to 1, or None when not given; raises BadRequest for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise BadRequest(_MIN_CONFIDENCE_RANGE)  # nan and inf fail the range test too
    return float(value)


def parse_min_confidence_text(value: str | None) -> float | None:
    """min_confidence from a query string; raises BadRequest unless it is a number from 0 to 1."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(_MIN_CONFIDENCE_RANGE) from None
    return parse_min_confidence(number)


def decode_base64(value: Any) -> bytes:
    """The bytes of a base64 image (a data: URL too); raises BadRequest for what is not base64, EmptyImage
    for no bytes, as the endpoint says of an empty file, and PayloadTooLarge over MAX_UPLOAD_BYTES."""
    if not isinstance(value, str):
        raise BadRequest('"image" must be a string: the image\'s bytes in base64')
    # Accept data URLs as browsers produce them (data:image/jpeg;base64,...) and line-wrapped base64.
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    value = "".join(value.split())
    if len(value) > _max_base64_chars():
        raise PayloadTooLarge(f"the image is over the limit of {MAX_UPLOAD_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f'"image" is not valid base64: {error}') from error
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"the image is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
    return data


def upload_request(
    body: bytes | None, top_k: int = DEFAULT_TOP_K, min_confidence: float | None = None
) -> ClassifyRequest:
    """A request for raw image bytes; raises EmptyImage when empty, PayloadTooLarge over MAX_UPLOAD_BYTES."""
    if not body:
        raise EmptyImage("the request body is empty (0 bytes); send the image's bytes")
    if len(body) > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"the image is {len(body)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
    return ClassifyRequest(image=body, top_k=top_k, min_confidence=min_confidence)


def classify(request: ClassifyRequest) -> dict[str, Any]:
    """The endpoint's answer for the photo plus what was sent and how long each step took; for an async
    endpoint, where the answer will be instead (`queue_model_request`).

    Raises the ApiError subclasses of fetch, image and endpoint.
    """
    settings = get_settings()
    started = time.perf_counter()
    if request.url is not None:
        observability.note_url(request.url)
        allow_loopback = settings.allow_loopback_fetch
        data = fetch_image(request.url, max_bytes=MAX_FETCH_BYTES, allow_loopback=allow_loopback)
    else:
        data = request.image
    fetched = time.perf_counter()
    prepared = prepare_image(
        data, resize_size=settings.model_resize_size, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY
    )
    resized = time.perf_counter()
    if settings.endpoint_kind == "async":
        answer = queue_model_request(settings, prepared.jpeg, request.top_k, request.min_confidence)
    else:
        answer = invoke_model(settings.endpoint_name, prepared.jpeg, request.top_k, request.min_confidence)
    invoked = time.perf_counter()
    answer["image"] = {
        "width": prepared.width,
        "height": prepared.height,
        "bytes_received": prepared.bytes_received,
        "bytes_sent": len(prepared.jpeg),
    }
    answer["timings_ms"] = {
        "fetch": _ms(fetched - started),
        "resize": _ms(resized - fetched),
        "invoke": _ms(invoked - resized),
        "total": _ms(invoked - started),
    }
    return answer


def http_answer(answer: dict[str, Any], base_path: str = "") -> Response | dict[str, Any]:
    """A route's answer: the classification (200), or 202 Accepted when the photo was queued, with where to
    ask for its answer (`base_path`: the stage's, "/api" on API Gateway)."""
    if answer.get("status") == "queued":
        answer["result_url"] = f"{base_path}/predict/results/{answer['inference_id']}"
        return Response(body=answer, status_code=202, headers={"Location": answer["result_url"]})
    return answer


def result_http_answer(inference_id: str) -> Response | dict[str, Any]:
    """GET /predict/results/{inference_id}: the model's answer (200) once written, 202 while pending; raises
    what `queued.read_result` raises."""
    answer = read_result(get_settings(), inference_id)
    if answer is None:
        return Response(
            body={"status": "pending", "inference_id": inference_id},
            status_code=202,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return {**answer, "inference_id": inference_id}


def _max_base64_chars() -> int:
    return (MAX_UPLOAD_BYTES + 2) // 3 * 4


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
