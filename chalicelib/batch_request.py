"""Several photos in one request: `{"images": ["<base64>", ...], "urls": ["https://...", ...]}`.

Every item goes through the single-photo steps (classify.py's base64 decoding, fetch, image checks and
resize), URLs fetched concurrently, and then all the prepared photos go to the endpoint in ONE
invoke_endpoint call. The answer mirrors the request, `{"images": [...], "urls": [...]}` (both always
there): one result per item in order, each either the single-photo answer or
`{"error": {"code", "message", "status"}}`, so one bad item never fails the others. What fails the whole
request: a malformed request or one over the limits (settings.py), and an endpoint that cannot answer at all.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import ApiError, BadRequest, InvalidJson, ModelFailed, PayloadTooLarge, lambda_error
from chalicelib.fetch import fetch_image
from chalicelib.image import PreparedImage, prepare_image
from chalicelib.image_request import decode_base64, parse_min_confidence, parse_top_k
from chalicelib.invoke import invoke_model_batch
from chalicelib.settings import (
    BATCH_RESIZE_CONCURRENCY,
    DEFAULT_TOP_K,
    JPEG_QUALITY,
    MAX_BATCH_ITEMS,
    MAX_ENDPOINT_BODY_BYTES,
    MAX_FETCH_BYTES,
    MAX_PIXELS,
    MAX_UPLOAD_BYTES,
    Settings,
    get_settings,
)

FIELDS = ("images", "urls")
# The instances' JSON around each base64 image, and around the batch.
_INSTANCE_OVERHEAD = len('{"b64": ""}, ')
_BATCH_OVERHEAD = len('{"instances": []}')


class BatchTimeout(ApiError):
    status = 504
    code = "timeout"


class BatchNotServed(BadRequest):
    """The stage's endpoint is asynchronous: it queues one photo at a time and answers later."""

    code = "batch_not_supported"


@dataclass(frozen=True)
class BatchItem:
    """One photo of the batch: its bytes (decoded from base64), its URL, or why it cannot be had."""

    image: bytes | None = None
    url: str | None = None
    error: ApiError | None = None


@dataclass(frozen=True)
class BatchRequest:
    images: list[BatchItem]
    urls: list[BatchItem]
    top_k: int = DEFAULT_TOP_K
    min_confidence: float | None = None

    @property
    def items(self) -> list[BatchItem]:
        return self.images + self.urls


def is_batch(fields: Any) -> bool:
    """Whether a Lambda event asks for a batch rather than one photo."""
    return isinstance(fields, dict) and any(name in fields for name in FIELDS)


def parse_batch_body(raw_body: bytes) -> BatchRequest:
    """The batch in a JSON body; raises InvalidJson, BadRequest or PayloadTooLarge (parse_batch_fields)."""
    # The base64 of MAX_UPLOAD_BYTES, plus its quotes and commas and the URLs around it.
    if len(raw_body) > (MAX_UPLOAD_BYTES + 2) // 3 * 4 * 1.05 + 64 * 1024:
        raise PayloadTooLarge(
            f"the request is {len(raw_body)} bytes; a batch's images hold at most {MAX_UPLOAD_BYTES} bytes"
        )
    try:
        fields = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidJson(f"the body is not valid JSON: {error}") from error
    return parse_batch_fields(fields)


def parse_batch_fields(fields: Any) -> BatchRequest:
    """`{"images": [...], "urls": [...]}` (either or both), optional `"top_k"` and `"min_confidence"`.

    Raises BadRequest for anything else (not an object, unknown fields, no items, lists of other things than
    strings) and PayloadTooLarge for more than MAX_BATCH_ITEMS items or images over MAX_UPLOAD_BYTES in all.
    An item that is a string but not usable (bad base64, an empty URL) is its own error, not the request's.
    """
    if not isinstance(fields, dict):
        raise BadRequest(
            'expected a JSON object: {"images": ["<base64>", ...], "urls": ["https://...", ...]}'
        )
    unknown = sorted(set(fields) - {*FIELDS, "top_k", "min_confidence"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    top_k = parse_top_k(fields.get("top_k", DEFAULT_TOP_K))
    min_confidence = parse_min_confidence(fields.get("min_confidence"))
    lists = {name: fields.get(name, []) for name in FIELDS}
    for name, values in lists.items():
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise BadRequest(f'"{name}" must be a list of strings')
    count = sum(len(values) for values in lists.values())
    if count == 0:
        raise BadRequest('give at least one item in "images" or "urls"')
    if count > MAX_BATCH_ITEMS:
        raise PayloadTooLarge(f"{count} items; at most {MAX_BATCH_ITEMS} per request")
    images = [_image_item(value) for value in lists["images"]]
    total = sum(len(item.image) for item in images if item.image is not None)
    if total > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"the images hold {total} bytes together; at most {MAX_UPLOAD_BYTES}")
    urls = [
        BatchItem(url=url.strip()) if url.strip() else BatchItem(error=BadRequest("the URL is empty"))
        for url in lists["urls"]
    ]
    return BatchRequest(images=images, urls=urls, top_k=top_k, min_confidence=min_confidence)


def _image_item(value: str) -> BatchItem:
    try:
        return BatchItem(image=decode_base64(value))
    except ApiError as error:
        return BatchItem(error=error)


def classify_batch(request: BatchRequest) -> dict[str, Any]:
    """One result per item, in the request's order, under the request's own field names.

    Raises EndpointUnavailable, EndpointTimeout, ModelFailed or BadModelAnswer when the endpoint cannot
    answer the batch, and BatchNotServed on a stage whose endpoint is asynchronous.
    """
    settings = get_settings()
    if settings.endpoint_kind == "async":
        raise BatchNotServed(
            "this stage's endpoint is asynchronous: send the photos one at a time to /predict"
        )
    started = time.perf_counter()
    deadline = started + settings.batch_prepare_timeout_s
    prepared, results = _prepare_all(request.items, settings, deadline=deadline)
    _drop_what_does_not_fit(prepared, results)
    ready = time.perf_counter()

    if prepared:
        order = sorted(prepared)
        answers = invoke_model_batch(
            settings.endpoint_name,
            [prepared[index].jpeg for index in order],
            request.top_k,
            request.min_confidence,
        )
        for index, answer in zip(order, answers, strict=True):
            results[index] = _with_image(answer, prepared[index])
    invoked = time.perf_counter()
    timings = {
        "prepare": round((ready - started) * 1000, 1),
        "invoke": round((invoked - ready) * 1000, 1),
        "total": round((invoked - started) * 1000, 1),
    }
    return {
        "images": results[: len(request.images)],
        "urls": results[len(request.images) :],
        "timings_ms": timings,
    }


def _prepare_all(
    items: list[BatchItem], settings: Settings, deadline: float
) -> tuple[dict[int, PreparedImage], list[dict[str, Any] | None]]:
    """Fetch (URLs, all at once) and shrink (BATCH_RESIZE_CONCURRENCY at a time) every item by `deadline`:
    (index -> prepared photo, results with each failed item's error in its place)."""
    resizing = threading.BoundedSemaphore(BATCH_RESIZE_CONCURRENCY)
    # Set once the answer is decided: an item fetched after that is never decoded, since no one will read it,
    # and in a Lambda its decoding would go on beside the next request's.
    answered = threading.Event()

    def prepare(item: BatchItem) -> PreparedImage:
        if item.error is not None:
            raise item.error
        data = item.image
        if item.url is not None:
            data = fetch_image(
                item.url, max_bytes=MAX_FETCH_BYTES, allow_loopback=settings.allow_loopback_fetch
            )
        with resizing:
            if answered.is_set():
                raise BatchTimeout("abandoned at the batch's deadline")
            return prepare_image(
                data, resize_size=settings.model_resize_size, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY
            )

    results: list[dict[str, Any] | None] = [None] * len(items)
    prepared: dict[int, PreparedImage] = {}
    pool = ThreadPoolExecutor(max_workers=len(items))
    futures = [pool.submit(prepare, item) for item in items]
    for index, future in enumerate(futures):
        try:
            prepared[index] = future.result(timeout=max(0.0, deadline - time.perf_counter()))
        except FuturesTimeout:
            timeout = BatchTimeout(
                f"fetching and shrinking took longer than {settings.batch_prepare_timeout_s:g} s"
            )
            results[index] = lambda_error(timeout)
        except Exception as error:  # noqa: BLE001 - every item's failure is its own answer
            results[index] = lambda_error(error)
    # The answer does not wait for what is still running: fetches end by their own deadline, and of the
    # decodes only those already begun (at most BATCH_RESIZE_CONCURRENCY, each bounded by the pixel limits).
    answered.set()
    pool.shutdown(wait=False, cancel_futures=True)
    return prepared, results


def _drop_what_does_not_fit(prepared: dict[int, PreparedImage], results: list) -> None:
    """Keep the endpoint call under InvokeEndpoint's payload limit: what would push it over answers 413."""
    size = _BATCH_OVERHEAD
    for index in sorted(prepared):
        grown = size + (len(prepared[index].jpeg) + 2) // 3 * 4 + _INSTANCE_OVERHEAD
        if grown <= MAX_ENDPOINT_BODY_BYTES:
            size = grown
        else:
            del prepared[index]
            results[index] = lambda_error(
                PayloadTooLarge("the batch's shrunk photos outgrow one endpoint call; send this one again")
            )


def _with_image(answer: dict[str, Any], prepared: PreparedImage) -> dict[str, Any]:
    if "error" in answer:
        message = str(answer["error"].get("message", "")) if isinstance(answer["error"], dict) else ""
        return lambda_error(ModelFailed(f"the model failed on this image: {message}"))
    answer["image"] = {
        "width": prepared.width,
        "height": prepared.height,
        "bytes_received": prepared.bytes_received,
        "bytes_sent": len(prepared.jpeg),
    }
    return answer
