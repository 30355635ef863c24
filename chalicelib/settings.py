"""Every limit and setting of the API in one place; the stage's environment is read once per container.

Limits follow from the platform:
- API Gateway accepts at most 10 MB and waits at most 29 s; a synchronous Lambda event is at most 6 MB, and
  API Gateway base64-encodes binary bodies into that event (4/3 growth), so uploads stop at 4 MiB.
- A URL is fetched by the Lambda itself, so its cap is set by memory rather than by the event size.
- The pixel cap is well under Pillow's own decompression-bomb limit (89.5 MP warns, 179 MP refuses) and above
  any phone camera (a 12 MP photo is 12,000,000 pixels).
- Time budget of one API call (Lambda timeout 28 s, under API Gateway's 29 s): fetch <= 7 s, then at most
  two endpoint attempts of 2 s connect + 7 s read each plus botocore's backoff (<= 1 s): 7 + 18 + 1 = 26 s.
- A batch (`POST /predict/batch`, the `classify` function with "images"/"urls"): at most MAX_BATCH_ITEMS
  items whose base64 images together hold at most MAX_UPLOAD_BYTES (the same 6 MB event as one upload).
  URLs are fetched concurrently and every item is fetched and shrunk within BATCH_PREPARE_TIMEOUT_S (an item
  not ready by then answers a timeout of its own), then ONE endpoint call carries them all: 8 + 18 + 1 = 27 s.
  Shrinking decodes at most BATCH_RESIZE_CONCURRENCY photos at once: a 40 MP PNG decodes to 160 MB, and
  the function has 1 GB. The endpoint call's body stays under InvokeEndpoint's 6,291,456-byte payload
  limit: 10 shrunk photos (a few tens of KB each) fill a small part of it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

MIB = 1024 * 1024

MAX_UPLOAD_BYTES = 4 * MIB
MAX_FETCH_BYTES = 16 * MIB
MAX_PIXELS = 40_000_000
MAX_REDIRECTS = 3
FETCH_CONNECT_TIMEOUT_S = 3.0
FETCH_READ_TIMEOUT_S = 5.0
FETCH_TOTAL_TIMEOUT_S = 7.0

ENDPOINT_CONNECT_TIMEOUT_S = 2.0
ENDPOINT_READ_TIMEOUT_S = 7.0
# Attempts in all, the first included; botocore's "standard" mode retries throttling, 5xx and connection
# errors, never a ModelError.
ENDPOINT_MAX_ATTEMPTS = 2
MAX_BATCH_ITEMS = 10
BATCH_PREPARE_TIMEOUT_S = 8.0
BATCH_RESIZE_CONCURRENCY = 2
MAX_INVOKE_BYTES = 6_291_456
# What a 503 tells the client to wait before trying again.
RETRY_AFTER_S = 2

DEFAULT_TOP_K = 5
MAX_TOP_K = 20
JPEG_QUALITY = 90

# The shorter side the model resizes every image to before its centre crop (models/*/config.json
# "preprocessing"."resize_size"): the Lambda shrinks photos to this, so it never sends more pixels than the
# model uses nor fewer than it needs. A test checks it against the committed model; a stage serving a larger
# model overrides it with the MODEL_RESIZE_SIZE environment variable.
DEFAULT_MODEL_RESIZE_SIZE = 260


class ConfigurationError(RuntimeError):
    """The stage's environment is missing or has a malformed setting."""


@dataclass(frozen=True)
class Settings:
    endpoint_name: str
    # Only the `local` stage sets this, so that the demo can fetch sample photos from a loopback file server.
    allow_loopback_fetch: bool
    model_resize_size: int
    # Only the `local` stage sets this: the local endpoint checks no signature, so a fresh machine with no AWS
    # credentials at all can run the demo.
    unsigned_endpoint_requests: bool


@functools.cache
def get_settings() -> Settings:
    """The stage's settings, read from the environment on first use (once per Lambda container).

    Raises ConfigurationError when ENDPOINT_NAME is unset or a value is malformed.
    """
    endpoint_name = os.environ.get("ENDPOINT_NAME", "").strip()
    if not endpoint_name:
        raise ConfigurationError("ENDPOINT_NAME is not set for this stage")
    return Settings(
        endpoint_name=endpoint_name,
        allow_loopback_fetch=_flag("ALLOW_LOOPBACK_FETCH"),
        model_resize_size=_positive_int("MODEL_RESIZE_SIZE", DEFAULT_MODEL_RESIZE_SIZE),
        unsigned_endpoint_requests=_flag("UNSIGNED_ENDPOINT_REQUESTS"),
    )


def _flag(name: str) -> bool:
    value = os.environ.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise ConfigurationError(f"{name} must be 'true' or 'false', not {value!r}")
    return value == "true"


def _positive_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default)).strip()
    if not value.isdigit() or int(value) <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def api_key_required() -> bool:
    """Whether the API's routes need an API key (the `x-api-key` header), from API_KEY_REQUIRED.

    app.py reads it when it is imported, and `chalice package` and `chalice deploy` import it with the stage's
    environment variables set, so each stage's setting decides its template.
    """
    return _flag("API_KEY_REQUIRED")


def stage_name() -> str:
    """The Chalice stage this code runs as (STAGE), which tags every log line and metric."""
    return os.environ.get("STAGE", "local").strip() or "local"
