"""The one response schema of the project, as JSON Schema (draft 2020-12, so OpenAPI 3.1 embeds it as is).

- ANSWER_SCHEMA: what the model endpoint answers for one image (serving/inference.py `describe`).
- API_ANSWER_SCHEMA: the API's answer, the endpoint's plus what was sent (`image`) and how long it took
  (`timings_ms`).
- BATCH_ITEM_ANSWER_SCHEMA: one photo's answer within a batch: the API's answer without `timings_ms`, which
  the batch gives once for all its photos.
- QUEUED_ANSWER_SCHEMA: the API's 202 for a stage whose endpoint is asynchronous: where the answer will be.
- BREEDS_SCHEMA: the model's breeds and the model, as the endpoint answers them (serving/contract.py's
  BREEDS_ACCEPT) and the API passes them on (GET /breeds).
- RESULT_SCHEMA, PENDING_SCHEMA: what GET /predict/results/{inference_id} answers for a queued photo: the
  model's answer once written (200), or that it is still pending (202).
- ERROR_SCHEMA: every answer that is not a classification.

Answers only ever gain fields, so objects allow properties beyond those listed: a client written against an
older schema keeps working, and the API passes on fields from a newer endpoint. The keywords used are the ones
draft 2020-12 and draft 2019-09 share, which is what fastjsonschema compiles.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"

_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}

PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "breed", "probability"],
    "properties": {
        "label": {
            "type": "string",
            "minLength": 1,
            "description": "The class name, e.g. Labrador_retriever.",
        },
        "breed": {"type": "string", "minLength": 1, "description": "The readable name: Labrador retriever."},
        "probability": {
            **_PROBABILITY,
            "description": "The breed's probability, calibrated on held-out photos: of the answers given "
            "with 0.8, about 80% are right.",
        },
    },
}

ANSWER_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "ModelAnswer",
    "description": "The model endpoint's answer for one image.",
    "type": "object",
    "required": ["predictions", "is_dog", "dog_probability", "model"],
    "properties": {
        "predictions": {
            "type": "array",
            "minItems": 0,
            "items": PREDICTION_SCHEMA,
            "description": "The top_k breeds, most probable first, less those under min_confidence when "
            "it is given (so empty only then).",
        },
        "is_dog": {"type": "boolean", "description": "Whether the picture shows a dog at all."},
        "dog_probability": {**_PROBABILITY, "description": "How sure the model is that it shows a dog."},
        "confident": {
            "type": "boolean",
            "description": "Whether the top breed's probability reaches the model's confidence threshold, "
            "chosen on held-out photos so that about 95% of confident answers are right (newer models only).",
        },
        "model": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {
                "name": {"type": "string"},
                "version": {
                    "type": "string",
                    "description": "The model package's version in the model registry when the endpoint was "
                    "promoted from one, else the artifact's own version.",
                },
                "package": {
                    "type": "string",
                    "description": "The ARN of the model package the endpoint serves (promoted endpoints).",
                },
            },
        },
    },
}

_COUNT = {"type": "integer", "minimum": 0}
_MILLISECONDS = {"type": "number", "minimum": 0}

API_ANSWER_SCHEMA: dict[str, Any] = {
    **copy.deepcopy(ANSWER_SCHEMA),
    "title": "Answer",
    "description": "The model's answer plus the picture that was sent and the time each step took.",
    "required": [*ANSWER_SCHEMA["required"], "image", "timings_ms"],
}
API_ANSWER_SCHEMA["properties"].update(
    {
        "image": {
            "type": "object",
            "required": ["width", "height", "bytes_received", "bytes_sent"],
            "properties": {
                "width": {**_COUNT, "minimum": 1, "description": "The photo's own width, upright."},
                "height": {**_COUNT, "minimum": 1, "description": "The photo's own height, upright."},
                "bytes_received": {**_COUNT, "description": "The size of the photo uploaded or fetched."},
                "bytes_sent": {**_COUNT, "description": "The size of the JPEG sent to the model."},
            },
        },
        "timings_ms": {
            "type": "object",
            "required": ["fetch", "resize", "invoke", "total"],
            "properties": {name: _MILLISECONDS for name in ("fetch", "resize", "invoke", "total")},
        },
    }
)

BATCH_ITEM_ANSWER_SCHEMA: dict[str, Any] = {
    **copy.deepcopy(API_ANSWER_SCHEMA),
    "title": "BatchItemAnswer",
    "description": "One photo's answer within a batch: the model's answer plus the picture that was sent.",
    "required": [name for name in API_ANSWER_SCHEMA["required"] if name != "timings_ms"],
}
del BATCH_ITEM_ANSWER_SCHEMA["properties"]["timings_ms"]

QUEUED_ANSWER_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "QueuedAnswer",
    "description": "The photo is queued on an asynchronous endpoint (HTTP 202); SageMaker writes the model's "
    "answer (ModelAnswer) to output_location, or the error to failure_location.",
    "type": "object",
    "required": ["status", "inference_id", "output_location", "image", "timings_ms"],
    "properties": {
        "status": {"const": "queued"},
        "inference_id": {"type": "string", "minLength": 1},
        "output_location": {"type": "string", "pattern": "^s3://", "description": "s3://BUCKET/KEY"},
        "failure_location": {"type": ["string", "null"], "description": "s3://BUCKET/KEY"},
        "result_url": {
            "type": "string",
            "description": "Where the API answers the result (GET): the same path as the Location header. "
            "Only the HTTP routes give it.",
        },
        "image": API_ANSWER_SCHEMA["properties"]["image"],
        "timings_ms": API_ANSWER_SCHEMA["properties"]["timings_ms"],
    },
}

BREEDS_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "Breeds",
    "description": "The breeds the model tells apart, in its class order, and the model.",
    "type": "object",
    "required": ["breeds", "model"],
    "properties": {
        "breeds": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["label", "breed"],
                "properties": {
                    "label": PREDICTION_SCHEMA["properties"]["label"],
                    "breed": PREDICTION_SCHEMA["properties"]["breed"],
                },
            },
        },
        "model": ANSWER_SCHEMA["properties"]["model"],
    },
}

_INFERENCE_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "As POST /predict answered."}

RESULT_SCHEMA: dict[str, Any] = {
    **copy.deepcopy(ANSWER_SCHEMA),
    "title": "QueuedResult",
    "description": "The model's answer for a queued photo, as the endpoint wrote it, and its inference id.",
    "required": [*ANSWER_SCHEMA["required"], "inference_id"],
}
RESULT_SCHEMA["properties"]["inference_id"] = _INFERENCE_ID

PENDING_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "ResultPending",
    "description": "The queued photo has no answer yet (HTTP 202): ask again after Retry-After seconds.",
    "type": "object",
    "required": ["status", "inference_id"],
    "properties": {"status": {"const": "pending"}, "inference_id": _INFERENCE_ID},
}

ERROR_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "Error",
    "description": "Every answer that is not a classification.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "minLength": 1,
                    "description": "Stable, e.g. unsupported_media_type.",
                },
                "message": {"type": "string", "description": "For people; its wording may change."},
                "status": {"type": "integer", "description": "The HTTP status (direct Lambda invocations)."},
            },
        }
    },
}


class SchemaMismatch(ValueError):
    """A document that does not match its schema; the message says where."""


@functools.cache
def _validator(name: str):
    # Imported and compiled on first use, not at import: a cold start that validates nothing pays nothing.
    import fastjsonschema

    return fastjsonschema.compile(
        {
            "ANSWER": ANSWER_SCHEMA,
            "API_ANSWER": API_ANSWER_SCHEMA,
            "QUEUED_ANSWER": QUEUED_ANSWER_SCHEMA,
            "BREEDS": BREEDS_SCHEMA,
            "RESULT": RESULT_SCHEMA,
            "PENDING": PENDING_SCHEMA,
            "ERROR": ERROR_SCHEMA,
        }[name]
    )


def _validate(name: str, document: Any) -> Any:
    validator = _validator(name)
    from fastjsonschema import JsonSchemaValueException

    try:
        return validator(document)
    except JsonSchemaValueException as error:
        raise SchemaMismatch(error.message) from error


def validate_answer(document: Any) -> dict[str, Any]:
    """`document` if it is a valid endpoint answer; raises SchemaMismatch otherwise."""
    return _validate("ANSWER", document)


def validate_api_answer(document: Any) -> dict[str, Any]:
    """`document` if it is a valid API answer; raises SchemaMismatch otherwise."""
    return _validate("API_ANSWER", document)


def validate_queued_answer(document: Any) -> dict[str, Any]:
    """`document` if it is a valid 202 answer of an async stage; raises SchemaMismatch otherwise."""
    return _validate("QUEUED_ANSWER", document)


def validate_breeds(document: Any) -> dict[str, Any]:
    """`document` if it is a valid breeds answer; raises SchemaMismatch otherwise."""
    return _validate("BREEDS", document)


def validate_result(document: Any) -> dict[str, Any]:
    """`document` if it is a valid 200 of GET /predict/results/{inference_id}; raises SchemaMismatch."""
    return _validate("RESULT", document)


def validate_pending(document: Any) -> dict[str, Any]:
    """`document` if it is a valid 202 of GET /predict/results/{inference_id}; raises SchemaMismatch."""
    return _validate("PENDING", document)


def validate_error(document: Any) -> dict[str, Any]:
    """`document` if it is a valid error answer; raises SchemaMismatch otherwise."""
    return _validate("ERROR", document)
