"""The API described in OpenAPI 3.1, built from what it describes: the app's routes and their content types,
the one response schema (schema.py) and the error classes (errors.py), so that it cannot drift from them."""

from __future__ import annotations

import copy
import functools
from collections import defaultdict
from typing import Any

from chalicelib import errors, schema
from chalicelib.settings import DEFAULT_TOP_K, MAX_TOP_K, MAX_UPLOAD_BYTES

OPENAPI_VERSION = "3.1.0"
API_KEY_HEADER = "x-api-key"

# API Gateway's own answers, before a request reaches the function: in the API's error shape where the stage
# is deployed with gateway responses mapped to it, else in API Gateway's {"message": ...}.
_KEY_REFUSED = "API Gateway: this route needs an API key (`x-api-key`); the request has none or a wrong one."
_THROTTLED = "API Gateway: the stage's or the key's rate, burst or quota is used up; try again later."

REQUEST_SCHEMA: dict[str, Any] = {
    "title": "PredictRequest",
    "description": 'Exactly one of "url" and "image", and optionally "top_k".',
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
            f"At most {MAX_UPLOAD_BYTES} bytes decoded.",
        },
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K},
    },
    "oneOf": [{"required": ["url"]}, {"required": ["image"]}],
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


def _error_response(status: int, codes: list[str]) -> dict[str, Any]:
    descriptions = {cls.code: (cls.__doc__ or "").strip() for cls in error_classes() if cls.status == status}
    lines = [f"`{code}`" + (f": {descriptions[code]}" if descriptions.get(code) else "") for code in codes]
    response: dict[str, Any] = {
        "description": "\n".join(lines),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        _ref("Error"),
                        {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
                    ]
                }
            }
        },
    }
    if status == errors.EndpointUnavailable.status:
        retry_after = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
        response["headers"] = {"Retry-After": retry_after}
    return response


def _errors(*, classifies: bool) -> dict[str, Any]:
    """The error answers of a route: a classifying route can give any of them; the others only fail inside."""
    by_status = error_codes_by_status()
    if not classifies:
        by_status = {status: codes for status, codes in by_status.items() if status >= 500}
    return {str(status): _error_response(status, codes) for status, codes in sorted(by_status.items())}


def _gateway_error(description: str) -> dict[str, Any]:
    shapes = {"schema": {"anyOf": [_ref("Error"), _ref("GatewayError")]}}
    return {"description": description, "content": {"application/json": shapes}}


def _with_gateway(operation: dict[str, Any], api_key_required: bool) -> dict[str, Any]:
    """`operation` with what API Gateway itself may answer: 429 on a throttled stage, 403 where the route
    needs a key (this stage's routes, as app.py declares them)."""
    gateway = {"429": _gateway_error(_THROTTLED)}
    if api_key_required:
        operation = {**operation, "security": [{"apiKey": []}]}
        gateway["403"] = _gateway_error(_KEY_REFUSED)
    responses = {**operation["responses"], **gateway}
    return {**operation, "responses": {status: responses[status] for status in sorted(responses)}}


def _answer() -> dict[str, Any]:
    description = "The top breeds, whether it is a dog, the model, what was sent and timings."
    return {"200": {"description": description, "content": _json("Answer")}}


def _operations(image_types: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("/", "GET"): {
            "summary": "A web page to try the API in a browser.",
            "responses": {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                **_errors(classifies=False),
            },
        },
        ("/openapi.json", "GET"): {
            "summary": "This description of the API.",
            "responses": {
                "200": {
                    "description": "An OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors(classifies=False),
            },
        },
        ("/health", "GET"): {
            "summary": "Whether the stage's model endpoint can answer (checked without calling the model).",
            "responses": {
                "200": {"description": "Up.", "content": _json("Health")},
                **_errors(classifies=False),
            },
        },
        ("/predict", "POST"): {
            "summary": "The breed of the dog in an image given by URL or as base64.",
            "requestBody": {"required": True, "content": _json("PredictRequest")},
            "responses": {**_answer(), **_errors(classifies=True)},
        },
        ("/predict/image", "POST"): {
            "summary": "The breed of the dog in the image sent as the body (JPEG, PNG, WebP or GIF).",
            "parameters": [_TOP_K_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in image_types},
            },
            "responses": {**_answer(), **_errors(classifies=True)},
        },
    }


@functools.cache
def _document(routes_key: tuple[tuple[str, str, str, tuple[str, ...], bool], ...]) -> dict[str, Any]:
    operations = {}
    for path, method, view_name, content_types, api_key_required in routes_key:
        image_types = [kind for kind in content_types if kind != "application/json"]
        described = _operations(image_types).get((path, method))
        if described is None:
            raise KeyError(f"the route {method} {path} has no description in chalicelib/openapi.py")
        operations[(path, method)] = {"operationId": view_name, **_with_gateway(described, api_key_required)}
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
                "Error": _schema_component(schema.ERROR_SCHEMA),
                "PredictRequest": REQUEST_SCHEMA,
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
