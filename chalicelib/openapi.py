"""The API described in OpenAPI 3.1, built from what it describes: the app's routes and their content types,
the one response schema (schema.py) and the error classes (errors.py), so that it cannot drift from them."""

from __future__ import annotations

import copy
import functools
from collections import defaultdict
from typing import Any

from chalicelib import errors, schema
from chalicelib.gateway_responses import BODY_RESPONSE_TYPES, GATEWAY_RESPONSES, KEY_RESPONSE_TYPES
from chalicelib.settings import (
    DEFAULT_TOP_K,
    IMAGE_MEDIA_TYPES,
    MAX_ASPECT_RATIO,
    MAX_BATCH_ITEMS,
    MAX_PIXELS,
    MAX_PIXELS_BY_FORMAT,
    MAX_TOP_K,
    MAX_UPLOAD_BYTES,
)

OPENAPI_VERSION = "3.1.0"
API_KEY_HEADER = "x-api-key"
# What every image must be, however it comes.
IMAGE_RULES = (
    f"Accepted formats: {', '.join(IMAGE_MEDIA_TYPES)}, told from the bytes: a picture in another format is "
    "a 415, bytes that are no picture a 400. "
    f"At most {MAX_PIXELS:,} pixels ("
    + ", ".join(f"{format} {pixels:,}" for format, pixels in MAX_PIXELS_BY_FORMAT.items())
    + f"), the longer side at most {MAX_ASPECT_RATIO} times the shorter (422 otherwise). EXIF orientation "
    "and HEIF/AVIF rotation are applied."
)

REQUEST_SCHEMA: dict[str, Any] = {
    "title": "PredictRequest",
    "description": 'Exactly one of "url" and "image", and optionally "top_k" and "min_confidence".',
    "type": "object",
    "properties": {
        "url": {
            "type": "string",
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            "description": "An http(s) address of the image; the service fetches it (public addresses only).",
        },
        "image": {
            "type": "string",
            "minLength": 1,
            "contentEncoding": "base64",
            "description": "The image's bytes in base64; a data: URL as browsers make it is also accepted. "
            f"At most {MAX_UPLOAD_BYTES} bytes decoded. {IMAGE_RULES}",
        },
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K},
        "min_confidence": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "Leave out breeds whose (calibrated) probability is under this. The answer's "
            '"confident" says whether the top breed clears the model\'s own threshold, whatever this is.',
        },
    },
    "oneOf": [{"required": ["url"]}, {"required": ["image"]}],
    "additionalProperties": False,
}

BATCH_REQUEST_SCHEMA: dict[str, Any] = {
    "title": "BatchRequest",
    "description": f'"images" and/or "urls", at most {MAX_BATCH_ITEMS} items in all, and optionally "top_k" '
    'and "min_confidence". '
    f"The images hold at most {MAX_UPLOAD_BYTES} bytes together, decoded.",
    "type": "object",
    "properties": {
        # Items are plain strings: one that is not usable (bad base64, not a URL) is answered with its own
        # error in its place, and more items than allowed is a 413, so the schema leaves both to the API.
        "images": {
            "type": "array",
            "items": {"type": "string", "description": f"An image's bytes in base64. {IMAGE_RULES}"},
        },
        "urls": {
            "type": "array",
            "items": {"type": "string", "description": "An http(s) address of an image."},
        },
        "top_k": REQUEST_SCHEMA["properties"]["top_k"],
        "min_confidence": REQUEST_SCHEMA["properties"]["min_confidence"],
    },
    "anyOf": [{"required": ["images"]}, {"required": ["urls"]}],
    "additionalProperties": False,
}

HEALTH_SCHEMA: dict[str, Any] = {
    "title": "Health",
    "type": "object",
    "required": ["status", "endpoint"],
    "properties": {
        "status": {"type": "string", "description": '"ok", or "unavailable" in a 503.'},
        "endpoint": {"type": "string", "description": "The SageMaker endpoint this stage calls."},
        "endpoint_status": {"type": "string", "description": "What the endpoint's own check said."},
        "checked_at": {"type": "string", "description": "When it was checked (UTC, ISO 8601)."},
    },
}

GATEWAY_ERROR_SCHEMA: dict[str, Any] = {
    "title": "GatewayError",
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}

_TOP_K_PARAMETER = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "description": "How many breeds to answer, most probable first.",
    "schema": REQUEST_SCHEMA["properties"]["top_k"],
}

_MIN_CONFIDENCE_PARAMETER = {
    "name": "min_confidence",
    "in": "query",
    "required": False,
    "description": REQUEST_SCHEMA["properties"]["min_confidence"]["description"],
    "schema": REQUEST_SCHEMA["properties"]["min_confidence"],
}


def error_classes() -> list[type[errors.ApiError]]:
    """ApiError and every subclass of it, each once."""
    found, pending = [], [errors.ApiError]
    while pending:
        cls = pending.pop(0)
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def error_codes_by_status() -> dict[int, list[str]]:
    """Every error code the API answers, by HTTP status."""
    codes: dict[int, list[str]] = defaultdict(list)
    for cls in error_classes():
        if cls.code not in codes[cls.status]:
            codes[cls.status].append(cls.code)
    return dict(sorted(codes.items()))


def _schema_component(source: dict[str, Any]) -> dict[str, Any]:
    # The OpenAPI 3.1 document's own dialect is JSON Schema 2020-12, the one schema.py is written in.
    component = copy.deepcopy(source)
    component.pop("$schema", None)
    return component


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def gateway_codes_by_status(*, api_key_required: bool, has_body: bool) -> dict[int, list[str]]:
    """What API Gateway itself may answer for a route (gateway_responses.py), by HTTP status; unknown routes
    (404) and the catch-all types that keep API Gateway's status are not a route's."""
    codes: dict[int, list[str]] = defaultdict(list)
    for response_type, status, code, _ in GATEWAY_RESPONSES:
        if status is None or status == 404:
            continue
        if response_type in KEY_RESPONSE_TYPES and not api_key_required:
            continue
        if response_type in BODY_RESPONSE_TYPES and not has_body:
            continue
        if code not in codes[status]:
            codes[status].append(code)
    return dict(codes)


def _error_response(status: int, codes: list[str], gateway_codes: list[str]) -> dict[str, Any]:
    descriptions = {cls.code: (cls.__doc__ or "").strip() for cls in error_classes() if cls.status == status}
    lines = [f"`{code}`" + (f": {descriptions[code]}" if descriptions.get(code) else "") for code in codes]
    lines += [f"`{code}`: answered by API Gateway itself." for code in gateway_codes if code not in codes]
    all_codes = codes + [code for code in gateway_codes if code not in codes]
    schema_: dict[str, Any] = {
        "allOf": [_ref("Error"), {"properties": {"error": {"properties": {"code": {"enum": all_codes}}}}}]
    }
    if gateway_codes:
        # A stage deployed without the mapped gateway responses gets API Gateway's own {"message": ...}.
        schema_ = {"anyOf": [schema_, _ref("GatewayError")]}
    response: dict[str, Any] = {
        "description": "\n".join(lines),
        "content": {"application/json": {"schema": schema_}},
    }
    if status in (errors.EndpointUnavailable.status, 429):
        retry_after = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
        response["headers"] = {"Retry-After": retry_after}
    return response


def _errors(
    *, classifies: bool, api_key_required: bool, own: dict[int, list[str]] | None = None
) -> dict[str, Any]:
    """The error answers of a route: a classifying route can give any of the API's but a 404 (no route of
    theirs names a thing that may be missing); the others only fail inside, but for their `own` codes. Then
    what API Gateway answers itself."""
    by_status = error_codes_by_status()
    if classifies:
        by_status.pop(errors.NotFound.status, None)
    else:
        by_status = {status: codes for status, codes in by_status.items() if status >= 500}
        by_status.update(own or {})
    gateway = gateway_codes_by_status(api_key_required=api_key_required, has_body=classifies)
    return {
        str(status): _error_response(status, by_status.get(status, []), gateway.get(status, []))
        for status in sorted(set(by_status) | set(gateway))
    }


def _answer() -> dict[str, Any]:
    description = "The top breeds, whether it is a dog, the model, what was sent and timings."
    queued = "A stage whose endpoint is asynchronous: the photo is queued; where the answer will be."
    return {
        "200": {"description": description, "content": _json("Answer")},
        "202": {"description": queued, "content": _json("QueuedAnswer")},
    }


# What GET /predict/results answers of its own: a malformed inference id, and one that is not this stage's.
_RESULT_ERRORS = {
    errors.BadRequest.status: [errors.BadRequest.code],
    errors.NotFound.status: [errors.NotFound.code],
}


def _result(errors_of_result: dict[str, Any]) -> dict[str, Any]:
    retry_after = {"description": "Seconds to wait before asking again.", "schema": {"type": "integer"}}
    return {
        "summary": "The answer to a photo an async stage queued: POST /predict's 202 gives this route as "
        "result_url. Stages whose endpoint answers at once queue nothing, and answer 404.",
        "parameters": [
            {
                "name": "inference_id",
                "in": "path",
                "required": True,
                "schema": schema.RESULT_SCHEMA["properties"]["inference_id"],
            }
        ],
        "responses": {
            "200": {"description": "The model's answer, as it wrote it.", "content": _json("QueuedResult")},
            "202": {
                "description": "Not answered yet.",
                "headers": {"Retry-After": retry_after},
                "content": _json("ResultPending"),
            },
            **errors_of_result,
        },
    }


def _batch_answer_schema() -> dict[str, Any]:
    result = {
        "anyOf": [_ref("BatchItemAnswer"), _ref("Error")],
        "description": "The item's answer, or its error (with its HTTP status as `error.status`).",
    }
    return {
        "title": "BatchAnswer",
        "description": "One result per item of the request, in its order, under the request's field names.",
        "type": "object",
        "required": ["images", "urls", "timings_ms"],
        "properties": {
            "images": {"type": "array", "items": result},
            "urls": {"type": "array", "items": result},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }


def _operations(image_types: list[str], api_key_required: bool) -> dict[tuple[str, str], dict[str, Any]]:
    def errors_of(classifies: bool, own: dict[int, list[str]] | None = None) -> dict[str, Any]:
        return _errors(classifies=classifies, api_key_required=api_key_required, own=own)

    return {
        ("/", "GET"): {
            "summary": "A web page to try the API in a browser.",
            "responses": {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                **errors_of(False),
            },
        },
        ("/openapi.json", "GET"): {
            "summary": "This description of the API.",
            "responses": {
                "200": {
                    "description": "An OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **errors_of(False),
            },
        },
        ("/breeds", "GET"): {
            "summary": "The breeds the stage's model tells apart (label and display name), and the model.",
            "responses": {
                "200": {"description": "The model's breeds, in its class order.", "content": _json("Breeds")},
                **errors_of(False),
            },
        },
        ("/health", "GET"): {
            "summary": "Whether the stage's model endpoint can answer (checked without calling the model).",
            "responses": {
                "200": {"description": "Up.", "content": _json("Health")},
                **errors_of(False),
            },
        },
        ("/predict", "POST"): {
            "summary": "The breed of the dog in an image given by URL or as base64.",
            "requestBody": {"required": True, "content": _json("PredictRequest")},
            "responses": {**_answer(), **errors_of(True)},
        },
        ("/predict/batch", "POST"): {
            "summary": "The breeds of several photos, given by URL and/or as base64, in one call.",
            "requestBody": {"required": True, "content": _json("BatchRequest")},
            "responses": {
                "200": {
                    "description": "One result per item, each an answer or an error.",
                    "content": _json("BatchAnswer"),
                },
                **errors_of(True),
            },
        },
        ("/predict/results/{inference_id}", "GET"): _result(errors_of(False, _RESULT_ERRORS)),
        ("/predict/image", "POST"): {
            "summary": "The breed of the dog in the image sent as the body.",
            "description": f"At most {MAX_UPLOAD_BYTES} bytes. {IMAGE_RULES}",
            "parameters": [_TOP_K_PARAMETER, _MIN_CONFIDENCE_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in image_types},
            },
            "responses": {**_answer(), **errors_of(True)},
        },
    }


@functools.cache
def _document(routes_key: tuple[tuple[str, str, str, tuple[str, ...], bool], ...]) -> dict[str, Any]:
    operations = {}
    for path, method, view_name, content_types, api_key_required in routes_key:
        image_types = [kind for kind in content_types if kind != "application/json"]
        described = _operations(image_types, api_key_required).get((path, method))
        if described is None:
            raise KeyError(f"the route {method} {path} has no description in chalicelib/openapi.py")
        if api_key_required:
            described = {**described, "security": [{"apiKey": []}]}
        operations[(path, method)] = {"operationId": view_name, **described}
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    for (path, method), operation in sorted(operations.items()):
        paths[path][method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dogbreeds",
            "version": "1",
            "description": "Which breed is the dog in a photo. Every answer that is not a classification is "
            '`{"error": {"code": ..., "message": ...}}`; the code is stable, the message is for people. '
            f"Routes that need a key on this stage list the apiKey scheme: send it in the `{API_KEY_HEADER}` "
            "header.",
        },
        "paths": dict(paths),
        "components": {
            "schemas": {
                "Answer": _schema_component(schema.API_ANSWER_SCHEMA),
                "BatchItemAnswer": _schema_component(schema.BATCH_ITEM_ANSWER_SCHEMA),
                "QueuedAnswer": _schema_component(schema.QUEUED_ANSWER_SCHEMA),
                "Breeds": _schema_component(schema.BREEDS_SCHEMA),
                "QueuedResult": _schema_component(schema.RESULT_SCHEMA),
                "ResultPending": _schema_component(schema.PENDING_SCHEMA),
                "Error": _schema_component(schema.ERROR_SCHEMA),
                "PredictRequest": REQUEST_SCHEMA,
                "BatchRequest": BATCH_REQUEST_SCHEMA,
                "BatchAnswer": _batch_answer_schema(),
                "Health": HEALTH_SCHEMA,
                "GatewayError": GATEWAY_ERROR_SCHEMA,
            },
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}},
        },
    }


def describe_api(routes: dict[str, dict[str, Any]], base_path: str = "") -> dict[str, Any]:
    """The OpenAPI document for Chalice's `app.routes`, served under `base_path` (the stage's, e.g. "/api").

    Raises KeyError for a route this module does not describe.
    """
    routes_key = tuple(
        (path, method, entry.view_name, tuple(entry.content_types), bool(entry.api_key_required))
        for path, methods in sorted(routes.items())
        for method, entry in sorted(methods.items())
    )
    document = copy.deepcopy(_document(routes_key))
    document["servers"] = [{"url": base_path or "/"}]
    return document


def stage_base_path(request_context: dict[str, Any]) -> str:
    """The path the stage's routes hang under, from API Gateway's request context: "/api" for a request to
    "/api/openapi.json" whose route is "/openapi.json"; "" locally."""
    path, route = request_context.get("path", ""), request_context.get("resourcePath", "")
    if route and path.endswith(route):
        return path[: len(path) - len(route)].rstrip("/")
    return ""
