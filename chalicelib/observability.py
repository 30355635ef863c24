"""One structured JSON log line and a set of CloudWatch metrics for every request, REST or direct invocation.

Both go to stdout, which Lambda ships to CloudWatch Logs: the log line through Powertools' Logger, the metrics
as Embedded Metric Format blobs through Powertools' Metrics, which CloudWatch turns into metrics with no API
call (so the functions need no cloudwatch:PutMetricData). What is logged is chosen field by field: never a
body, never image bytes, and of a URL only its host (a path or query string can carry tokens).

X-Ray tracing is switched on per stage in .chalice/config.json; Powertools' Tracer is not used because the
X-Ray SDK it needs would pull botocore into the Lambda zip (docs/benchmarks.md, "Observability in the
Lambda").
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from chalicelib.settings import stage_name

SERVICE = "dogbreeds"
NAMESPACE = "dogbreeds"
# The answer's own phase timings (timings_ms), each published as <Phase>Latency.
PHASES = ("fetch", "resize", "invoke", "total")
# A batch may name many URLs; the log line keeps the first few hosts.
MAX_LOGGED_HOSTS = 10


class _CurrentStdout(logging.StreamHandler):
    """A handler that writes to whatever sys.stdout is at the time, like `print` (and so Metrics) does."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


# Same name as errors.py's logger, so its error lines come out as JSON too.
logger = Logger(service=SERVICE, logger_handler=_CurrentStdout())
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

_facts: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("request_facts", default=None)
_cold_start = True


def note_url(url: str) -> None:
    """Record the host of a URL the request asked to fetch (only the host is ever logged)."""
    facts = _facts.get()
    if facts is None:
        return
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    hosts = facts.setdefault("url_hosts", [])
    if len(hosts) < MAX_LOGGED_HOSTS:
        hosts.append(host or "(unparsable)")


def http_middleware(request, get_response: Callable):
    """Chalice "http" middleware: the REST routes' log line and metrics."""
    if request is None:  # an event Chalice could not route at all; it answers that itself
        return get_response(request)
    started = time.perf_counter()
    token = _facts.set({})
    response = None
    try:
        response = get_response(request)
        return response
    finally:
        facts = _facts.get() or {}
        _facts.reset(token)
        _never_failing(_log_http, request, response, facts, started)


def lambda_middleware(event, get_response: Callable):
    """Chalice "pure_lambda" middleware: the same for a direct invocation of a Lambda function."""
    started = time.perf_counter()
    token = _facts.set({})
    answer = None
    try:
        answer = get_response(event)
        return answer
    finally:
        facts = _facts.get() or {}
        _facts.reset(token)
        _never_failing(_log_invocation, event, answer, facts, started)


def _never_failing(log: Callable, *args) -> None:
    """Run `log`; a failure to observe a request is itself logged, and never changes the answer."""
    try:
        log(*args)
    except Exception:  # noqa: BLE001 - the answer is already made; losing it over a log line would be worse
        logger.exception("could not log the request")


def _log_http(request, response, facts: dict, started: float) -> None:
    context = request.context or {}
    lambda_context = request.lambda_context
    record = {
        "request_id": context.get("requestId") or getattr(lambda_context, "aws_request_id", None),
        "lambda_request_id": getattr(lambda_context, "aws_request_id", None),
        "route": context.get("resourcePath"),
        "method": request.method,
        "bytes_in": len(request.raw_body or b""),
    }
    if response is None:
        # An exception escaped the route; Chalice's own handler answers 500.
        status, body, bytes_out = 500, None, None
    else:
        status, body = response.status_code, response.body
        bytes_out = _body_size(body)
    _emit(record, facts, status, body, bytes_out, started)


def _log_invocation(event, answer: Any, facts: dict, started: float) -> None:
    request_id = getattr(event.context, "aws_request_id", None)
    record = {
        "request_id": request_id,
        "lambda_request_id": request_id,
        "route": f"lambda:{getattr(event.context, 'function_name', None) or 'function'}",
        "method": "invoke",
        "bytes_in": _body_size(event.event),
    }
    status = 500
    if isinstance(answer, dict):
        error = answer.get("error")
        status = error.get("status", 500) if isinstance(error, dict) else 200
    _emit(record, facts, status, answer, None if answer is None else _body_size(answer), started)


def _emit(record: dict, facts: dict, status: int, body: Any, bytes_out: int | None, started: float) -> None:
    global _cold_start
    record.update(stage=stage_name(), status=status, bytes_out=bytes_out, cold_start=_cold_start)
    _cold_start = False
    record.update(facts)
    error_code = _error_code(body) if status >= 400 else None
    record["error_code"] = error_code
    answers = list(_answers(body)) if status < 400 else []
    if len(answers) == 1:
        record.update(_answer_fields(answers[0]))
    elif answers:
        record["answers"] = [_answer_fields(answer) for answer in answers]
    record["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    logger.info("request", extra=record)
    _publish_metrics(record["duration_ms"], status, error_code, answers)


def _publish_metrics(duration_ms: float, status: int, error_code: str | None, answers: list[dict]) -> None:
    metrics.add_dimension(name="stage", value=stage_name())
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=duration_ms)
    for answer in answers:
        metrics.add_metric(name="Classified", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="NotADog", unit=MetricUnit.Count, value=0 if answer.get("is_dog") else 1)
        timings = answer.get("timings_ms") or {}
        for phase in PHASES:
            if isinstance(timings.get(phase), int | float):
                metrics.add_metric(
                    name=f"{phase.capitalize()}Latency", unit=MetricUnit.Milliseconds, value=timings[phase]
                )
    metrics.flush_metrics()
    if error_code is not None:
        # Its own blob: the error code is a dimension the per-request metrics above do not have.
        with single_metric(
            name="Errors",
            unit=MetricUnit.Count,
            value=1,
            namespace=NAMESPACE,
            default_dimensions={"service": SERVICE, "stage": stage_name()},
        ) as metric:
            metric.add_dimension(name="code", value=error_code)


def _answers(body: Any) -> Iterator[dict]:
    """The classifications in an answer: the answer itself, or the items of a list of them (a batch)."""
    if not isinstance(body, dict):
        return
    if "predictions" in body:
        yield body
        return
    for value in body.values():
        if isinstance(value, list):
            yield from (item for item in value if isinstance(item, dict) and "predictions" in item)


def _answer_fields(answer: dict) -> dict[str, Any]:
    predictions = answer.get("predictions") or [{}]
    top = predictions[0] if isinstance(predictions[0], dict) else {}
    model = answer.get("model") if isinstance(answer.get("model"), dict) else {}
    image = answer.get("image") if isinstance(answer.get("image"), dict) else {}
    return {
        "model_version": model.get("version"),
        "top_breed": top.get("label"),
        "top_probability": top.get("probability"),
        "is_dog": answer.get("is_dog"),
        "image_bytes_received": image.get("bytes_received"),
        "image_bytes_sent": image.get("bytes_sent"),
        "timings_ms": answer.get("timings_ms"),
    }


def _error_code(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else "unknown"


def _body_size(body: Any) -> int:
    """Bytes of a body as it goes on the wire (Chalice serialises dicts compactly, as here)."""
    if body is None:
        return 0
    if isinstance(body, bytes):
        return len(body)
    if isinstance(body, str):
        return len(body.encode())
    return len(json.dumps(body, separators=(",", ":"), default=str).encode())
