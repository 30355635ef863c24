"""A local SageMaker endpoint: `python -m serving.server --model-dir DIR --port 8080`.

It serves both sides of SageMaker's hosting contract with the handlers of serving/inference.py:
- the container's: `GET /ping` (200 once the model is loaded, 503 while it loads) and `POST /invocations`;
  a model that cannot load stops the server with a non-zero status and the reason on stderr;
- the runtime API's: `POST /endpoints/{EndpointName}/invocations`, answered the way SageMaker answers it
  (errors in AWS's JSON shape), so `boto3.client("sagemaker-runtime")` with
  `AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:8080` works unchanged.

uvicorn runs a Starlette app in one or more worker processes. In each, requests decode their images in a
thread pool while one model thread runs the model on everything that queued up meanwhile (micro-batching):
one model call at a time keeps the runtime's threads from fighting over the CPUs, and a batch lets them share
bigger tensors (how much that gains per image depends on the CPUs and on what else runs on them).

Each worker sheds what it cannot answer in time: past a queue of `--max-wait` seconds of model work (measured
as it serves) a request gets a fast 503 with Retry-After (ServiceUnavailable on the runtime API's path, which
botocore retries), rather than waiting in an unbounded queue until its client has given up on it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.config import STARTUP_FAILURE

from classifier.logs import configure_cli_logging
from classifier.runtime import RUNTIMES
from serving import inference
from serving.contract import JSON, MAX_BODY_BYTES, MODEL_BATCH, PRODUCTION_VARIANT

log = logging.getLogger("dogbreeds.serve")

# An oversized body is read and dropped up to this much, so the client sees the 413 rather than a reset
# connection; past it the connection is closed.
MAX_DISCARD_BYTES = 64 * 1024 * 1024
DEFAULT_ENDPOINT_NAME = "dogbreeds-local"
# A body the server does not want (a shed request's) is drained up to this size, which uvicorn buffers before
# it pauses reading the socket; past it the answer goes at once and closes the connection.
UNREAD_DRAIN_BYTES = 64 * 1024
# SageMaker names the account in its errors; this is the account botocore's stubs and moto use.
LOCAL_ACCOUNT = "123456789012"
# Each worker loads its own model and /ping may be answered by one that is ready, after which requests can
# still reach one that is not: such a request waits this long for its worker's model before a 503.
LOADING_WAIT_S = 60.0
WORKER_HEALTHCHECK_S = 60.0
# The longest a request may expect to wait for the model before it is shed with a fast 503. The API gives up
# on an answer after 7 s (and then retries): a queue that cannot be served in time only burns model time on
# answers nobody reads. 2 s leaves room for the estimate to be off by half again and still answer in time.
DEFAULT_MAX_WAIT_S = 2.0
# Requests decoding, preprocessing or waiting for the model at once in a worker, per image of a model call:
# two calls' worth keeps one batch preparing while one runs. It also bounds the decoded pictures held in
# memory (up to about 160 MB each at the pixel cap); admitted requests past it wait holding only their body.
TRANSFORM_SLOTS_PER_BATCH_IMAGE = 2
# How much each model call moves the measured seconds per image (an exponential moving average).
SPEED_SMOOTHING = 0.2

_SETTINGS_ENV = "DOGBREEDS_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    model_dir: str
    endpoint_name: str = DEFAULT_ENDPOINT_NAME
    max_batch: int = MODEL_BATCH
    max_wait_s: float = DEFAULT_MAX_WAIT_S  # 0 sheds nothing
    max_queue: int | None = None  # images; None derives it from max_wait_s and the model's measured speed
    # Where a worker whose model cannot load leaves the reason for `main`, which exits non-zero with it.
    failure_file: str | None = None


class BodyTooLargeError(Exception):
    pass


class Admission:
    """Load shedding for one worker: admits a request only while the model can answer it in time.

    It counts the images admitted and not yet answered, and sheds a new request when the queue is full: past
    `max_queue` images when that is set, else when the images ahead of it would take the model more than
    `max_wait_s` at its measured speed (seconds per image, from the warm-up and then every model call).
    Shed requests cost a header parse, not a body read, a decode or a model run, so the answers given stay
    fast.
    """

    def __init__(self, seconds_per_image: float, max_wait_s: float, max_queue: int | None, min_queue: int):
        self.seconds_per_image = seconds_per_image
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.min_queue = min_queue  # a full model call's worth, so that shedding never starves batching
        self.images = 0
        self.shed = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int | None:
        """Images that may be queued at once; None when nothing is shed."""
        if self.max_queue is not None:
            return self.max_queue
        if self.max_wait_s <= 0:
            return None
        return max(self.min_queue, int(self.max_wait_s / self.seconds_per_image))

    def admit(self) -> Ticket | None:
        """A ticket for one more request (one image until it says otherwise), or None to shed it."""
        with self._lock:
            if self._full():
                self.shed += 1
                return None
            self.images += 1
            return Ticket(self)

    def sheds_now(self) -> bool:
        """Whether a request arriving now is shed (and counted so), asked before its body is read.

        It takes no ticket: a client still sending its body holds no place in the queue, and `admit` decides
        again once the body is in.
        """
        with self._lock:
            if self._full():
                self.shed += 1
                return True
            return False

    def _full(self) -> bool:
        limit = self.limit
        return limit is not None and self.images + 1 > limit

    def expected_wait_s(self) -> float:
        return self.images * self.seconds_per_image

    def observe(self, seconds: float, images: int) -> None:
        """One model call's duration for this many images."""
        with self._lock:
            self.seconds_per_image += SPEED_SMOOTHING * (seconds / images - self.seconds_per_image)

    def _change(self, images: int) -> None:
        with self._lock:
            self.images += images


class Ticket:
    """One admitted request's share of the queue, released when it has its answer."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self.images = 1

    def count(self, images: int) -> None:
        """The request turned out to hold this many images (a JSON batch)."""
        self._admission._change(images - self.images)
        self.images = images

    def release(self) -> None:
        self._admission._change(-self.images)
        self.images = 0


class MicroBatcher:
    """The predictor behind one model thread that merges the images of requests waiting for it.

    It has the predictor's interface (`predict`, `labels`, `preprocessing`, `model_info`), so predict_fn runs
    unchanged on it. Batching waits for nothing: a request alone runs alone; requests that arrive while the
    model is busy share its next call. One call at a time also keeps the runtime's threads from fighting for
    the CPUs.
    """

    def __init__(
        self,
        predictor: inference.BreedPredictor,
        max_batch: int = MODEL_BATCH,
        on_call: Callable[[float, int], None] | None = None,
    ):
        self.predictor = predictor
        self.on_call = on_call  # told each model call's seconds and images
        self.labels = predictor.labels
        self.preprocessing = predictor.preprocessing
        self.model_info = predictor.model_info
        self.thresholds = predictor.thresholds
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self._thread.start()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        future: Future = Future()
        self._queue.put((images, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            pending, count, stop = [first], len(first[0]), False
            while count < self.max_batch:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    stop = True
                    break
                pending.append(waiting)
                count += len(waiting[0])
            self._answer(pending)
            if stop:
                return

    def _answer(self, pending: list[tuple[np.ndarray, Future]]) -> None:
        batch = np.concatenate([images for images, _ in pending])
        started = time.perf_counter()
        try:
            breed, dog = self.predictor.predict(batch)
        except Exception as error:  # noqa: BLE001 - each waiting request gets the failure as its own
            for _, future in pending:
                future.set_exception(error)
            return
        if self.on_call is not None:
            self.on_call(time.perf_counter() - started, len(batch))
        start = 0
        for images, future in pending:
            end = start + len(images)
            future.set_result((breed[start:end], dog[start:end]))
            start = end


class RequestContext:
    """The part of the model server's request context that input_fn reads, shaped as the toolkit's."""

    class _Properties:
        def __init__(self, headers: dict[str, str]):
            self._headers = headers

        def get_request_properties(self) -> dict[str, str]:
            return self._headers

    def __init__(self, headers: dict[str, str]):
        self.request_processor = [self._Properties(headers)]


class ModelState:
    """The model of this worker, loaded in the background so /ping can say 503 until it is ready."""

    def __init__(self, settings: ServeSettings, on_failure: Callable[[str], None] | None = None):
        self.settings = settings
        self.on_failure = on_failure
        self.predictor: MicroBatcher | None = None
        self.admission: Admission | None = None
        self.error: str | None = None
        self.settled = threading.Event()  # set once loading has succeeded or failed
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> None:
        self._loader.start()

    def close(self) -> None:
        if self.predictor is not None:
            self.predictor.close()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            predictor = inference.model_fn(self.settings.model_dir)
            # The first run allocates the runtime's buffers; pay for it before saying ready.
            size = predictor.preprocessing.image_size
            predictor.predict(np.zeros((1, 3, size, size), dtype=np.float32))
            # The admission's first estimate of the model's speed: one full call, as a busy queue makes.
            batch = np.zeros((self.settings.max_batch, 3, size, size), dtype=np.float32)
            measured = time.perf_counter()
            predictor.predict(batch)
            seconds_per_image = (time.perf_counter() - measured) / len(batch)
        except Exception as error:  # noqa: BLE001 - the reason goes to the log and to on_failure
            log.exception("model failed to load from %s", self.settings.model_dir)
            self.error = f"model failed to load from {self.settings.model_dir}: {error}"
            self.settled.set()
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        self.admission = Admission(
            seconds_per_image, self.settings.max_wait_s, self.settings.max_queue, self.settings.max_batch
        )
        self.predictor = MicroBatcher(predictor, self.settings.max_batch, on_call=self.admission.observe)
        self.settled.set()
        log.info(
            "model ready (%s on %s) in %.1fs; %.1f images/s, so at most %s images queued",
            predictor.runtime,
            predictor.device,
            time.perf_counter() - started,
            1 / seconds_per_image,
            self.admission.limit or "unlimited",
        )


@dataclass(frozen=True)
class ContainerAnswer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def transform(
    model: MicroBatcher, body: bytes, headers: dict[str, str], ticket: Ticket | None = None
) -> ContainerAnswer:
    """The handler chain as SageMaker's toolkit runs it: a request error is the client's, any other a 500."""
    try:
        data = inference.input_fn(body, headers.get("content-type"), RequestContext(headers))
        if ticket is not None:
            ticket.count(len(data.images))
        answer = inference.output_fn(inference.predict_fn(data, model), headers.get("accept"))
        return ContainerAnswer(200, answer, JSON)
    except inference.RequestError as error:
        return ContainerAnswer(int(error.status_code), str(error).encode(), "text/plain; charset=utf-8")
    except Exception as error:  # noqa: BLE001 - the client gets a 500, the log gets the traceback
        log.exception("inference failed")
        return ContainerAnswer(
            500, f"inference failed: {type(error).__name__}".encode(), "text/plain; charset=utf-8"
        )


async def read_body(request: Request) -> bytes:
    """The request body, at most MAX_BODY_BYTES of it. Raises BodyTooLargeError past that."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        await _discard(request, 0)
        raise BodyTooLargeError
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            await _discard(request, size)
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(request: Request, already_read: int) -> None:
    with contextlib.suppress(Exception):
        async for chunk in request.stream():
            already_read += len(chunk)
            if already_read > MAX_DISCARD_BYTES:
                return


async def container_answer(request: Request) -> ContainerAnswer:
    state: ModelState = request.app.state.model
    if state.predictor is None:
        await run_in_threadpool(state.settled.wait, LOADING_WAIT_S)
    if state.predictor is None:
        loading = ContainerAnswer(
            503, (state.error or "model is loading").encode(), "text/plain; charset=utf-8"
        )
        return await unread(request, loading)
    if state.admission.sheds_now():
        return await unread(request, overloaded(state.admission))
    try:
        body = await read_body(request)
    except BodyTooLargeError:
        return ContainerAnswer(413, f"body over {MAX_BODY_BYTES} bytes".encode(), "text/plain; charset=utf-8")
    ticket = state.admission.admit()
    if ticket is None:
        return overloaded(state.admission)
    headers = {key.lower(): value for key, value in request.headers.items()}
    try:
        return await anyio.to_thread.run_sync(
            transform, state.predictor, body, headers, ticket, limiter=request.app.state.transform_slots
        )
    finally:
        ticket.release()


async def unread(request: Request, answer: ContainerAnswer) -> ContainerAnswer:
    """`answer` to a request whose body is not wanted: a body small enough to have come with its headers is
    drained (never decoded) so the connection can serve the client's next request; a larger or undeclared one
    is left unread, and the answer closes the connection."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) <= UNREAD_DRAIN_BYTES:
        await _discard(request, 0)
        return answer
    return ContainerAnswer(
        answer.status, answer.body, answer.content_type, {**answer.headers, "Connection": "close"}
    )


def overloaded(admission: Admission) -> ContainerAnswer:
    """503 with when to try again: about when the images queued now will have been answered."""
    wait_s = admission.expected_wait_s()
    message = (
        f"the endpoint is overloaded: {admission.images} images queued, about {wait_s:.1f} s of work; "
        f"retry after {math.ceil(wait_s)} s"
    )
    return ContainerAnswer(
        503,
        message.encode(),
        "text/plain; charset=utf-8",
        # No x-amz-retry-after, which the SageMaker runtime never sends: botocore would wait up to 5 s more
        # before its retry, past the API's time budget. The API passes Retry-After on to its caller.
        {"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


async def ping(request: Request) -> Response:
    state: ModelState = request.app.state.model
    if state.predictor is not None and state.admission is not None:
        predictor, admission = state.predictor.predictor, state.admission
        return JSONResponse(
            {
                "status": "ready",
                "model": predictor.model_info,
                "runtime": predictor.runtime,
                "device": predictor.device,
                "queue": {"images": admission.images, "limit": admission.limit, "shed": admission.shed},
            }
        )
    if state.error:
        return JSONResponse({"status": "failed", "error": state.error}, status_code=500)
    return JSONResponse({"status": "loading"}, status_code=503)


async def invocations(request: Request) -> Response:
    """SageMaker's container contract: the handlers' own status and body."""
    answer = await container_answer(request)
    return Response(
        answer.body, status_code=answer.status, media_type=answer.content_type, headers=answer.headers
    )


async def endpoint_invocations(request: Request) -> Response:
    """InvokeEndpoint as the SageMaker runtime answers it: errors shaped so botocore raises what AWS does."""
    state: ModelState = request.app.state.model
    name = request.path_params["endpoint_name"]
    if name != state.settings.endpoint_name:
        await _discard(request, 0)
        return aws_error(400, "ValidationError", f"Endpoint {name} of account {LOCAL_ACCOUNT} not found.")
    if not request.headers.get("content-type"):
        await _discard(request, 0)
        return aws_error(400, "ValidationError", "1 validation error detected: ContentType must be set.")
    answer = await container_answer(request)
    if answer.status == 413:
        # What SageMaker answers: no error type, so botocore raises a ClientError with code "413".
        return aws_error(413, None, f"HTTP content length exceeded {MAX_BODY_BYTES} bytes.")
    if answer.status == 503 and state.predictor is None:
        message = state.error or "The endpoint's model is still loading; retry shortly."
        return aws_error(503, "ServiceUnavailable", message, headers=answer.headers)
    if answer.status == 503:
        # Shed: botocore's standard and legacy retry modes both retry a 503 (ServiceUnavailable), at once.
        return aws_error(503, "ServiceUnavailable", answer.body.decode(), headers=answer.headers)
    if answer.status != 200:
        return model_error(answer)
    return Response(
        answer.body,
        media_type=answer.content_type,
        headers={"x-Amzn-Invoked-Production-Variant": PRODUCTION_VARIANT, "x-amzn-RequestId": _request_id()},
    )


def aws_error(
    status: int, error_type: str | None, message: str, headers: dict[str, str] | None = None, **fields
) -> Response:
    headers = {**(headers or {}), "x-amzn-RequestId": _request_id()}
    if error_type:
        headers["x-amzn-ErrorType"] = error_type
    return JSONResponse({"message": message, **fields}, status_code=status, headers=headers)


def model_error(answer: ContainerAnswer) -> Response:
    """424 ModelError carrying the container's status and message, as SageMaker relays a failed invocation."""
    side = "client" if answer.status < 500 else "server"
    original = answer.body.decode(errors="replace")
    return aws_error(
        424,
        "ModelError",
        f'Received {side} error ({answer.status}) from primary with message "{original}".',
        ErrorCode=f"{side.upper()}_ERROR_FROM_MODEL",
        OriginalStatusCode=answer.status,
        OriginalMessage=original,
    )


def _request_id() -> str:
    return str(uuid.uuid4())


class RequestLog:
    """ASGI middleware: one log line per HTTP request with status, bytes in and out, and latency."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        counts = {"in": 0, "out": 0, "status": 0}

        async def counting_receive():
            message = await receive()
            counts["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message):
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            log.info(
                "%s %s %d in=%dB out=%dB %.1fms",
                scope["method"],
                scope["path"],
                counts["status"],
                counts["in"],
                counts["out"],
                (time.perf_counter() - started) * 1000,
            )


def exit_for_load_failure(settings: ServeSettings, reason: str) -> None:
    """Stop this worker process with uvicorn's startup-failure status, leaving the reason for `main`.

    A server without its model would otherwise stay up answering /ping 500 for ever; exiting lets SageMaker,
    a supervisor or the user see the failure. Status 3 also keeps uvicorn's supervisor from restarting the
    worker into the same failure: it stops every worker and returns to `main`.
    """
    if settings.failure_file:
        Path(settings.failure_file).write_text(reason)
    logging.shutdown()  # flush the traceback already logged
    print(f"serving.server: {reason}", file=sys.stderr, flush=True)  # the last line, with one worker
    os._exit(STARTUP_FAILURE)


def create_app(settings: ServeSettings | None = None) -> Starlette:
    """The Starlette app; without `settings`, those `main` left in the environment for uvicorn's workers."""
    if settings is None:
        settings = ServeSettings(**json.loads(os.environ[_SETTINGS_ENV]))
    configure_cli_logging()
    state = ModelState(settings, on_failure=functools.partial(exit_for_load_failure, settings))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.model = state
        app.state.transform_slots = anyio.CapacityLimiter(
            TRANSFORM_SLOTS_PER_BATCH_IMAGE * settings.max_batch
        )
        state.start()
        yield
        state.close()

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/endpoints/{endpoint_name}/invocations", endpoint_invocations, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(RequestLog)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a model directory as a local SageMaker endpoint.")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own model copy")
    parser.add_argument("--endpoint-name", default=DEFAULT_ENDPOINT_NAME, help="the EndpointName answered")
    parser.add_argument("--max-batch", type=int, default=MODEL_BATCH, help="images per model call")
    parser.add_argument(
        "--max-wait",
        type=float,
        default=DEFAULT_MAX_WAIT_S,
        help="shed a request (503) when the images queued ahead of it would take the model longer than this "
        "many seconds at its measured speed; 0 sheds nothing (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        help="shed past this many images queued per worker instead (default: from --max-wait)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=os.environ.get(inference.RUNTIME_ENV, "auto"),
    )
    parser.add_argument("--threads", type=int, help="model threads per worker (default: CPUs / workers)")
    args = parser.parse_args(argv)
    if args.max_wait < 0 or (args.max_queue is not None and args.max_queue < 1):
        parser.error("--max-wait must be 0 or more and --max-queue 1 or more")
    if not (args.model_dir / "config.json").is_file():
        parser.error(f"{args.model_dir} is not a model directory (no config.json)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_cli_logging()
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.workers)
    # uvicorn's workers are fresh processes that build the app from the import string: the settings travel in
    # the environment they inherit.
    os.environ[inference.RUNTIME_ENV] = args.runtime
    os.environ[inference.THREADS_ENV] = str(threads)
    failure_dir = tempfile.TemporaryDirectory(prefix="dogbreeds-serve-")
    failure_file = Path(failure_dir.name) / "load-failure"
    os.environ[_SETTINGS_ENV] = json.dumps(
        {
            "model_dir": str(args.model_dir),
            "endpoint_name": args.endpoint_name,
            "max_batch": args.max_batch,
            "max_wait_s": args.max_wait,
            "max_queue": args.max_queue,
            "failure_file": str(failure_file),
        }
    )
    log.info(
        "serving %s as endpoint %r on http://%s:%d (%d worker(s) x %d thread(s), runtime %s)",
        args.model_dir,
        args.endpoint_name,
        args.host,
        args.port,
        args.workers,
        threads,
        args.runtime,
    )
    with failure_dir:
        uvicorn.run(
            "serving.server:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,  # RequestLog writes the one line per request
            log_config=None,  # keep the root logger's format for uvicorn's own lines
            timeout_graceful_shutdown=30,
            # A spawned worker imports this module, and so torch, before it can answer the supervisor's
            # health check: on busy CPUs that took over uvicorn's default 5 s, and the supervisor killed
            # and restarted workers that were merely starting.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        )
        # With one worker a load failure ends this very process; with several, their supervisor returns here
        # after its own log lines, so the reason is said again last.
        if failure_file.exists():
            print(f"serving.server: {failure_file.read_text()}", file=sys.stderr)
            sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
