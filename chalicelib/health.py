"""/health: whether this stage's model endpoint can answer, without a model call, cached per container.

On AWS the check is SageMaker's DescribeEndpoint (the endpoint's status; no inference, no cost per probe).
Where a runtime URL is configured instead (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME: the local endpoint of `make
run`), it is that server's `GET /ping`, which SageMaker containers answer 200 once their model is loaded.
A result is kept for HEALTH_CACHE_S, so a load balancer or uptime probe polling every second costs one
check per container per period.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.settings import HEALTH_CACHE_S, HEALTH_TIMEOUT_S, RETRY_AFTER_S, get_settings

RUNTIME_URL_ENV = "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"
# Statuses in which an endpoint still answers invocations (an update keeps the old variant serving).
SERVING_STATUSES = ("InService", "Updating", "SystemUpdating", "RollingBack")


@dataclass(frozen=True)
class EndpointHealth:
    ok: bool
    # InService, Creating, ... from DescribeEndpoint; "ready" or "loading" from /ping; "unreachable", ...
    status: str
    checked_at: float  # time.time() of the check


_cache: dict[str, tuple[float, EndpointHealth]] = {}
_lock = threading.Lock()


def endpoint_health(endpoint_name: str, *, max_age_s: float = HEALTH_CACHE_S) -> EndpointHealth:
    """The endpoint's health, checked at most once per `max_age_s` (per endpoint, per container)."""
    with _lock:
        cached = _cache.get(endpoint_name)
        if cached and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
    runtime_url = os.environ.get(RUNTIME_URL_ENV, "").strip()
    health = _ping(runtime_url) if runtime_url else _describe(endpoint_name)
    with _lock:
        _cache[endpoint_name] = (time.monotonic(), health)
    return health


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def health_answer() -> tuple[int, dict, dict[str, str]]:
    """The status, body and headers /health answers: 200 when the endpoint can answer, else 503."""
    endpoint_name = get_settings().endpoint_name
    health = endpoint_health(endpoint_name)
    body = {
        "status": "ok" if health.ok else "unavailable",
        "endpoint": endpoint_name,
        "endpoint_status": health.status,
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(health.checked_at)),
    }
    if health.ok:
        return 200, body, {}
    # Also in the error shape, so a client handling errors generically reads it like any other 503.
    body["error"] = {
        "code": "endpoint_unavailable",
        "message": f"the endpoint {endpoint_name!r} cannot answer now ({health.status})",
    }
    return 503, body, {"Retry-After": str(RETRY_AFTER_S)}


def _ping(runtime_url: str) -> EndpointHealth:
    try:
        response = requests.get(f"{runtime_url.rstrip('/')}/ping", timeout=HEALTH_TIMEOUT_S)
    except requests.RequestException:
        return EndpointHealth(False, "unreachable", time.time())
    if response.status_code == 200:
        return EndpointHealth(True, "ready", time.time())
    return EndpointHealth(
        False, "loading" if response.status_code == 503 else f"HTTP {response.status_code}", time.time()
    )


@functools.cache
def control_client():
    """The container's one SageMaker control-plane client, with short timeouts and no retries."""
    config = Config(
        connect_timeout=HEALTH_TIMEOUT_S, read_timeout=HEALTH_TIMEOUT_S, retries={"total_max_attempts": 1}
    )
    return boto3.client("sagemaker", config=config)


def _describe(endpoint_name: str) -> EndpointHealth:
    try:
        status = control_client().describe_endpoint(EndpointName=endpoint_name)["EndpointStatus"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        # DescribeEndpoint calls a missing endpoint a ValidationException.
        return EndpointHealth(
            False, "not found" if code == "ValidationException" else code or "error", time.time()
        )
    except BotoCoreError:
        return EndpointHealth(False, "unreachable", time.time())
    return EndpointHealth(status in SERVING_STATUSES, status, time.time())
