"""Every limit and setting of the API in one place; the stage's environment is read once per container.

Limits follow from the platform:
- API Gateway accepts at most 10 MB and waits at most 29 s; a synchronous Lambda event is at most 6 MB, and
  API Gateway base64-encodes binary bodies into that event (4/3 growth), so uploads stop at 4 MiB.
- A URL is fetched by the Lambda itself, so its cap is set by memory rather than by the event size.
- The pixel cap is well under Pillow's own decompression-bomb limit (89.5 MP warns, 179 MP refuses) and above
  any phone camera (a 12 MP photo is 12,000,000 pixels). With the image converted in strips, preparing a
  picture at its format's cap peaks at about a quarter of the dev stage's 1,024 MB (docs/benchmarks.md,
  "In the Lambda").
- What the Lambda sends is what SageMaker and the endpoint take: the shorter side at most the model's resize
  size, the longer at most MAX_ASPECT_RATIO times that, the body at most MAX_ENDPOINT_BODY_BYTES
  (tests/test_limits.py holds these against the endpoint's own constants).
- Time budget of one API call (Lambda timeout 28 s, under API Gateway's 29 s): fetch <= 7 s (connect,
  headers and body together), then at most two endpoint attempts of 2 s connect + 7 s read each plus
  botocore's backoff (<= 1 s): 7 + 18 + 1 = 26 s (WORST_CASE_S, held under every stage's lambda_timeout by a
  test). botocore waits longer only for an x-amz-retry-after header, which the SageMaker runtime never sends.
- A batch (`POST /predict/batch`, the `classify` function with "images"/"urls"): at most MAX_BATCH_ITEMS
  items whose base64 images together hold at most MAX_UPLOAD_BYTES (the same 6 MB event as one upload).
  URLs are fetched concurrently and every item is fetched and shrunk within BATCH_PREPARE_TIMEOUT_S (an item
  not ready by then answers a timeout of its own), then ONE endpoint call carries them all: 8 + 18 + 1 = 27 s
  (BATCH_WORST_CASE_S). A fetch's own 7 s limit ends a slow URL first, so at 8 s the limit catches shrinking
  that waited behind the fetches; a stage may give its batches less time to prepare (its
  BATCH_PREPARE_TIMEOUT_S environment variable), never more. Shrinking decodes at most
  BATCH_RESIZE_CONCURRENCY photos at once, so the batch needs no more memory than two single requests. The
  endpoint call's body stays under MAX_ENDPOINT_BODY_BYTES: 10 shrunk photos (a few tens of KB each) fill a
  small part of it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

MIB = 1024 * 1024

MAX_UPLOAD_BYTES = 4 * MIB
MAX_FETCH_BYTES = 16 * MIB
MAX_PIXELS = 40_000_000
# Lower caps for formats whose decoding costs more memory per pixel than the rest (bench/decode_memory.py), so
# that every format peaks alike. HEIF's still takes a 24 MP photo, the size recent iPhones shoot by default.
MAX_PIXELS_BY_FORMAT = {"WEBP": 16_000_000, "HEIF": 32_000_000, "AVIF": 20_000_000}
# The longer side may be at most this many times the shorter. The model scales the shorter side to its resize
# size, so without this a 65000x1 picture would grow to 17 GB there. The endpoint refuses the same ratio.
MAX_ASPECT_RATIO = 20
MAX_REDIRECTS = 3
FETCH_CONNECT_TIMEOUT_S = 3.0
FETCH_READ_TIMEOUT_S = 5.0
FETCH_TOTAL_TIMEOUT_S = 7.0

ENDPOINT_CONNECT_TIMEOUT_S = 2.0
ENDPOINT_READ_TIMEOUT_S = 7.0
# Attempts in all, the first included; botocore's "standard" mode retries throttling, 5xx and connection
# errors, never a ModelError.
ENDPOINT_MAX_ATTEMPTS = 2
# The longest wait botocore's standard mode makes before that one retry.
ENDPOINT_BACKOFF_S = 1.0
WORST_CASE_S = (
    FETCH_TOTAL_TIMEOUT_S
    + ENDPOINT_MAX_ATTEMPTS * (ENDPOINT_CONNECT_TIMEOUT_S + ENDPOINT_READ_TIMEOUT_S)
    + (ENDPOINT_MAX_ATTEMPTS - 1) * ENDPOINT_BACKOFF_S
)
MAX_BATCH_ITEMS = 10
BATCH_PREPARE_TIMEOUT_S = 8.0
BATCH_RESIZE_CONCURRENCY = 2
BATCH_WORST_CASE_S = WORST_CASE_S - FETCH_TOTAL_TIMEOUT_S + BATCH_PREPARE_TIMEOUT_S
# How long a browser may keep a preflight's answer before asking again (Chromium keeps it at most 2 hours).
CORS_MAX_AGE_S = 600
# Answer headers a page of an allowed origin may read beyond the CORS-safelisted ones.
CORS_EXPOSE_HEADERS = ("Retry-After",)

# What a 503 tells the client to wait before trying again, unless the endpoint said (capped at the second).
RETRY_AFTER_S = 2
MAX_RETRY_AFTER_S = 60
# SageMaker's InvokeEndpoint takes at most this many bytes of body; the API never sends more.
MAX_ENDPOINT_BODY_BYTES = 6_291_456

# /health checks the endpoint (DescribeEndpoint or /ping, no model call) at most this often per container.
HEALTH_CACHE_S = 10.0
HEALTH_TIMEOUT_S = 2.0

# GET /breeds asks the endpoint at most this often per container: the route is public, and a stage's model
# changes only with a deployment.
BREEDS_CACHE_S = 300.0

DEFAULT_TOP_K = 5
MAX_TOP_K = 20
JPEG_QUALITY = 90

# The media types of the image formats the API accepts (chalicelib/image.py's ALLOWED_FORMATS), as
# /openapi.json lists them. The format is always told from the bytes, never from the Content-Type.
IMAGE_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/heic",
    "image/heif",
    "image/avif",
)
# What the API accepts as an upload's body (POST /predict/image); API Gateway passes these to the Lambda
# base64-encoded instead of mangling them as text.
UPLOAD_CONTENT_TYPES = (*IMAGE_MEDIA_TYPES, "application/octet-stream")

# The endpoint's wire contract as the Lambda speaks it: a copy of serving/contract.py's, since the Lambda
# ships alone (tests/test_limits.py keeps the two equal, and DEFAULT_TOP_K and MAX_ENDPOINT_BODY_BYTES too).
JSON = "application/json"
JPEG = "image/jpeg"
# Asking for it gets an error in the place of each image a batch could not take, instead of failing the batch.
RECORD_JSON = "application/vnd.dogbreeds.record+json"
# Asks for the model's breeds (GET /breeds), not a classification; the endpoint reads no body.
BREEDS_ACCEPT = "application/vnd.dogbreeds.breeds+json"

# The most an async endpoint's answer or failure in S3 may hold for the API to read it: an answer of
# MAX_TOP_K predictions is a few KB.
MAX_RESULT_BYTES = 64 * 1024

# An async stage's tickets of queued requests, under its output prefix (chalicelib/queued.py); the stage's
# policy grants writing there (training/jobs/chalice_stage.py's TICKETS_FOLDER, held equal by a test).
ASYNC_TICKETS_FOLDER = "requests"

# How a stage's endpoint is called: InvokeEndpoint (real-time instances, serverless), or the photo is put in
# S3 and queued with InvokeEndpointAsync (async), answered 202 with where the result will be.
ENDPOINT_KINDS = ("real-time", "serverless", "async")


class ConfigurationError(RuntimeError):
    """The stage's environment is missing or has a malformed setting."""


@dataclass(frozen=True)
class Settings:
    endpoint_name: str
    # Only the `local` stage sets this, so that the demo can fetch sample photos from a loopback file server.
    allow_loopback_fetch: bool
    # The shorter side the served model resizes every image to before its centre crop (its config.json,
    # preprocessing.resize_size): the Lambda shrinks photos to this, so it never sends more pixels than the
    # model uses nor fewer than it needs. The model is the one source: `python -m training.jobs deploy
    # --chalice-stage STAGE` writes it into the stage; `make run` gives a model other than the default a copy
    # of the local stage with its own (scripts/local_stage.py).
    model_resize_size: int
    # Only the `local` stage sets this: the local endpoint checks no signature, so a fresh machine with no AWS
    # credentials at all can run the demo.
    unsigned_endpoint_requests: bool
    endpoint_kind: str = "real-time"
    # How long a batch may take to fetch and shrink its items: BATCH_PREPARE_TIMEOUT_S unless the stage sets
    # less. Under a fetch's own FETCH_TOTAL_TIMEOUT_S it is also what cuts a slow URL short.
    batch_prepare_timeout_s: float = BATCH_PREPARE_TIMEOUT_S
    # For an async endpoint, each a bucket and a key prefix: where the Lambda puts the photos it queues, and
    # where SageMaker writes answers and failures (the endpoint config's S3OutputPath and S3FailurePath).
    async_input: tuple[str, str] | None = None
    async_output: tuple[str, str] | None = None
    async_failure: tuple[str, str] | None = None


@functools.cache
def get_settings() -> Settings:
    """The stage's settings, read from the environment on first use (once per Lambda container).

    Raises ConfigurationError when ENDPOINT_NAME or MODEL_RESIZE_SIZE is unset, an async stage lacks one of
    ASYNC_INPUT_S3, ASYNC_OUTPUT_S3 and ASYNC_FAILURE_S3, or a value is malformed.
    """
    endpoint_name = os.environ.get("ENDPOINT_NAME", "").strip()
    if not endpoint_name:
        raise ConfigurationError("ENDPOINT_NAME is not set for this stage")
    if not os.environ.get("MODEL_RESIZE_SIZE", "").strip():
        raise ConfigurationError(
            "MODEL_RESIZE_SIZE is not set for this stage: `python -m training.jobs deploy "
            "--chalice-stage STAGE` writes it from the deployed model"
        )
    kind = os.environ.get("ENDPOINT_KIND", "real-time").strip()
    if kind not in ENDPOINT_KINDS:
        raise ConfigurationError(f"ENDPOINT_KIND must be one of {', '.join(ENDPOINT_KINDS)}, not {kind!r}")
    return Settings(
        endpoint_name=endpoint_name,
        allow_loopback_fetch=_flag("ALLOW_LOOPBACK_FETCH"),
        model_resize_size=_positive_int("MODEL_RESIZE_SIZE"),
        unsigned_endpoint_requests=_flag("UNSIGNED_ENDPOINT_REQUESTS"),
        endpoint_kind=kind,
        batch_prepare_timeout_s=_batch_prepare_timeout(),
        **(_async_locations() if kind == "async" else {}),
    )


def _async_locations() -> dict[str, tuple[str, str]]:
    return {
        "async_input": _s3_prefix("ASYNC_INPUT_S3"),
        "async_output": _s3_prefix("ASYNC_OUTPUT_S3"),
        "async_failure": _s3_prefix("ASYNC_FAILURE_S3"),
    }


def _batch_prepare_timeout() -> float:
    """The stage's BATCH_PREPARE_TIMEOUT_S: seconds over 0 and at most the default, which the Lambda's time
    budget counts (BATCH_WORST_CASE_S); the default when unset."""
    value = os.environ.get("BATCH_PREPARE_TIMEOUT_S", "").strip()
    if not value:
        return BATCH_PREPARE_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= BATCH_PREPARE_TIMEOUT_S:
        raise ConfigurationError(
            "BATCH_PREPARE_TIMEOUT_S must be a number of seconds over 0 and at most "
            f"{BATCH_PREPARE_TIMEOUT_S:g} (the Lambda's time budget counts that much), not {value!r}"
        )
    return seconds


def _flag(name: str) -> bool:
    value = os.environ.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise ConfigurationError(f"{name} must be 'true' or 'false', not {value!r}")
    return value == "true"


def _positive_int(name: str) -> int:
    value = os.environ.get(name, "").strip()
    if not (value.isascii() and value.isdigit()) or int(value) <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _s3_prefix(name: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at its ends)."""
    value = os.environ.get(name, "").strip()
    bucket, _, prefix = value.removeprefix("s3://").partition("/")
    if not value.startswith("s3://") or not bucket or not prefix.strip("/"):
        raise ConfigurationError(f"{name} must be s3://BUCKET/PREFIX for an async endpoint, not {value!r}")
    return bucket, prefix.strip("/")


def api_key_required() -> bool:
    """Whether the API's routes need an API key (the `x-api-key` header), from API_KEY_REQUIRED.

    app.py reads it when it is imported, and `chalice package` and `chalice deploy` import it with the stage's
    environment variables set, so each stage's setting decides its template.
    """
    return _flag("API_KEY_REQUIRED")


def cors_allow_origin() -> str | None:
    """The web origin whose pages may call this stage's API from a browser (CORS_ALLOW_ORIGIN): "*" for
    any, None for none (the variable unset or empty: browsers then block pages of other origins).

    One origin, because API Gateway answers the preflight (OPTIONS) itself, without the Lambda, with the
    same static headers for every caller: it cannot pick among several. Like API_KEY_REQUIRED it is read
    when app.py is imported, so each stage's setting decides its template. Raises ConfigurationError for
    anything that is not "*" or an origin such as https://app.example.com (scheme, host, optional port).
    """
    return parse_cors_origin(os.environ.get("CORS_ALLOW_ORIGIN", ""))


def parse_cors_origin(value: str) -> str | None:
    """A CORS_ALLOW_ORIGIN value checked (see `cors_allow_origin`); None for none."""
    value = value.strip()
    if not value:
        return None
    if value == "*":
        return value
    if not _is_origin(value):
        raise ConfigurationError(
            'CORS_ALLOW_ORIGIN must be "*" or one origin such as https://app.example.com (no path, no '
            f"trailing slash, no list: API Gateway's preflight names a single origin), not {value!r}"
        )
    return value


def _is_origin(value: str) -> bool:
    """Whether `value` is a web origin: http(s), a host, an optional port, nothing else."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    netloc = f"{parts.scheme}://{parts.netloc}"
    return parts.scheme in ("http", "https") and bool(parts.hostname) and value == netloc


def stage_name() -> str:
    """The Chalice stage this code runs as (STAGE), which tags every log line and metric."""
    return os.environ.get("STAGE", "local").strip() or "local"
