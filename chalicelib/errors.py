"""Typed errors, raised where a problem is detected, and the one place that turns them into answers.

Every answer that is not a classification is `{"error": {"code": ..., "message": ...}}` with the status below;
a genuine bug becomes a logged, plain 500 of the same shape, never a stack trace.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from chalice import Response

from chalicelib.settings import RETRY_AFTER_S, ConfigurationError

log = logging.getLogger("dogbreeds")


class ApiError(Exception):
    """An error the caller should see: its HTTP status, a stable code and a readable message."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class InvalidJson(BadRequest):
    code = "invalid_json"


class UrlNotAllowed(BadRequest):
    """The URL's scheme or the address its host resolves to may not be fetched."""

    code = "url_not_allowed"


class UrlFetchFailed(BadRequest):
    """The URL could not be fetched: unknown host, refused, timed out, or answered with an error status."""

    code = "url_fetch_failed"


class EmptyImage(BadRequest):
    """The image has no bytes at all."""

    code = "empty_image"


class UnreadableImage(BadRequest):
    """Not a picture that can be decoded: not an image at all, or one that is cut off or damaged."""

    code = "unreadable_image"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedImage(ApiError):
    """A media type or an image format outside the allowlist."""

    status = 415
    code = "unsupported_media_type"


class ModelPayloadTooLarge(PayloadTooLarge):
    """The model endpoint refused the body as too large: the photo, even shrunk, is more than it takes."""

    code = "model_payload_too_large"


class TooManyPixels(ApiError):
    status = 422
    code = "too_many_pixels"


class ImageTooElongated(ApiError):
    """Longer side over MAX_ASPECT_RATIO times the shorter: the model's resize would blow it up."""

    status = 422
    code = "image_too_elongated"


class ModelFailed(ApiError):
    status = 502
    code = "model_error"


class BadModelAnswer(ApiError):
    """The endpoint answered 200 with something other than an answer: not JSON, cut off, off the schema."""

    status = 502
    code = "bad_model_answer"


class EndpointUnavailable(ApiError):
    """The endpoint cannot take the request now (stopped, unknown, throttled, overloaded): try again later."""

    status = 503
    code = "endpoint_unavailable"

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class BreedsNotServed(ApiError):
    """The stage's endpoint cannot list its breeds: it is asynchronous, or its serving code predates
    GET /breeds (deploy the model again)."""

    status = 501
    code = "breeds_not_served"


class EndpointTimeout(ApiError):
    status = 504
    code = "endpoint_timeout"


class Misconfigured(ApiError):
    code = "misconfigured"


def error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message}}


def as_api_error(exception: Exception) -> ApiError:
    """The ApiError to answer for any exception; anything unexpected is logged with its traceback."""
    if isinstance(exception, ApiError):
        return exception
    if isinstance(exception, ConfigurationError):
        log.error("configuration error: %s", exception)
        return Misconfigured(f"the service is misconfigured: {exception}")
    log.exception("unexpected error", exc_info=exception)
    return ApiError("an internal error occurred")


def answers_errors(view: Callable[..., Response | dict]) -> Callable[..., Response | dict]:
    """Wrap a route so every exception it raises becomes a JSON error Response."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except Exception as exception:  # noqa: BLE001 - the one place that turns any error into an answer
            error = as_api_error(exception)
            return Response(body=error_body(error), status_code=error.status, headers=error.headers())

    return wrapper


def lambda_error(exception: Exception) -> dict[str, Any]:
    """What the `classify` Lambda function returns instead of raising (a raise would expose a stack trace)."""
    error = as_api_error(exception)
    body = error_body(error)
    body["error"]["status"] = error.status
    return body


# Chalice's own error codes, in the project's spelling.
_CHALICE_CODES = {
    "BadRequestError": BadRequest.code,
    "UnsupportedMediaType": UnsupportedImage.code,
    "MethodNotAllowedError": "method_not_allowed",
    "NotFoundError": "not_found",
    "InternalServerError": ApiError.code,
}


def reshape_chalice_error(
    response: Response, content_type: str | None = None, image_types: Sequence[str] = ()
) -> Response:
    """Give Chalice's own error answers (405, 415, its 500 fallback) the project's error shape; a 415 for the
    request's `content_type` says what each route takes instead (`image_types`: the image route's)."""
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and set(body) == {"Code", "Message"}:
        code = _CHALICE_CODES.get(body["Code"], "error")
        message = body["Message"]
        if code == UnsupportedImage.code:
            message = unsupported_media_type_message(content_type, image_types)
        response.body = {"error": {"code": code, "message": message}}
    return response


def unsupported_media_type_message(content_type: str | None, image_types: Sequence[str]) -> str:
    """Why a Content-Type is refused and what to send instead, naming the route for an image's own bytes."""
    media_type = (content_type or "").split(";")[0].strip().lower() or "(none)"
    hint = ""
    if media_type == "image/jpg":
        hint = " (a JPEG's media type is image/jpeg)"
    elif media_type.startswith("multipart/"):
        hint = (
            " (a multipart form upload is not read: send the file itself as the body, e.g. "
            "curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' .../predict/image)"
        )
    return (
        f"unsupported media type {media_type}{hint}. POST /predict and /predict/batch take application/json; "
        f"POST /predict/image takes the image's own bytes as {', '.join(image_types)}"
    )
