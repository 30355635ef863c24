"""Overload benchmark: what the local endpoint delivers in time when more clients call it than it can serve.

    .venv/bin/python -m bench.overload [--model-dir models/default] [--clients 64] [--seconds 30]
        [--retry-at-once]

It starts `python -m serving.server` on a free loopback port twice, with shedding off (`--max-wait 0`: the
unbounded queue it had before) and with its default shedding, and puts the same load on each: `--clients`
threads, each calling InvokeEndpoint one call after another for `--seconds` (after a 503, once its
Retry-After has passed, as the API tells its callers; at once with `--retry-at-once`), every thread with its
own boto3 client configured as the API's (chalicelib/invoke.py: 2 s connect, 7 s read timeout, botocore's
standard retry mode, 2 attempts in all), as concurrent Lambda containers would call it. The body is the
sample photo as the Lambda sends it (shrunk and re-encoded by chalicelib).

Figures per mode:
- goodput: calls answered (200) per second of the run; an answer always came within its attempt's 7 s;
- p50/p99 of the answered calls, retries included;
- shed: attempts answered 503 (botocore retries one at once; the API passes the second on with Retry-After);
- wasted model work: attempts that timed out after 7 s, which the endpoint still runs the model for, as a
  share of all the attempts it ran the model for (answered + timed out);
- the endpoint's CPU seconds over the run (its process's user + system time from /proc, read once it is
  ready and again once its queue has drained), per attempt it ran the model for, and per refused attempt.
  The last is estimated: the shedding run's CPU, less its model runs at the no-shedding run's CPU per model
  run, over its 503s.
Then the ratios with shedding over without. The clients share the CPUs with the endpoint, as they would not in
production: the absolute figures are this machine's; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

from bench import results
from bench.endpoint_speed import SAMPLE, ping_body, start_endpoint, stop_endpoint
from chalicelib.image import prepare_image
from chalicelib.settings import (
    ENDPOINT_CONNECT_TIMEOUT_S,
    ENDPOINT_MAX_ATTEMPTS,
    ENDPOINT_READ_TIMEOUT_S,
    JPEG_QUALITY,
    MAX_PIXELS,
)
from classifier.model import read_config
from classifier.preprocessing import Preprocessing
from serving.server import DEFAULT_ENDPOINT_NAME

PROJECT = Path(__file__).resolve().parents[1]

DEFAULT_MODEL = PROJECT / "models" / "default"
# After the run, calls still in flight may take two attempts of the read timeout plus botocore's backoff.
DRAIN_S = 2 * (ENDPOINT_CONNECT_TIMEOUT_S + ENDPOINT_READ_TIMEOUT_S) + 6
# Requests whose clients gave up stay queued at the endpoint (without shedding): it may take this long more.
QUEUE_DRAIN_S = 120


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def queue_images(url: str) -> int:
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:  # noqa: S310 - our own http URL
        return json.loads(response.read())["queue"]["images"]


def wait_for_empty_queue(url: str) -> None:
    deadline = time.monotonic() + QUEUE_DRAIN_S
    while queue_images(url) and time.monotonic() < deadline:
        time.sleep(0.2)


def api_client(url: str):
    """A sagemaker-runtime client with the API's settings (see chalicelib.invoke.runtime_client)."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(
            signature_version=UNSIGNED,
            connect_timeout=ENDPOINT_CONNECT_TIMEOUT_S,
            read_timeout=ENDPOINT_READ_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": ENDPOINT_MAX_ATTEMPTS},
        ),
    )


@dataclass
class Tally:
    """What the clients saw; each thread adds to its own, merged after the run."""

    answered: list[float] = field(default_factory=list)  # seconds per answered call, retries included
    failed_calls: int = 0
    attempts: dict[str, int] = field(default_factory=lambda: {"200": 0, "503": 0, "timeout": 0, "other": 0})

    def merge(self, other: Tally) -> None:
        self.answered += other.answered
        self.failed_calls += other.failed_calls
        for outcome, count in other.attempts.items():
            self.attempts[outcome] += count


def run_load(
    url: str, body: bytes, clients: int, seconds: float, retry_at_once: bool = False
) -> tuple[Tally, float]:
    """`clients` threads calling for `seconds`; the merged tally and the run's length in seconds."""
    tallies = [Tally() for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    stop_at = [float("inf")]

    def run(tally: Tally) -> None:
        client = api_client(url)

        def count_attempt(response=None, caught_exception=None, **_):
            # botocore asks this after every attempt, whether it will retry or not.
            if isinstance(caught_exception, ReadTimeoutError):
                tally.attempts["timeout"] += 1
            elif response is not None and response[0].status_code in (200, 503):
                tally.attempts[str(response[0].status_code)] += 1
            else:
                tally.attempts["other"] += 1

        client.meta.events.register("needs-retry.sagemaker-runtime.InvokeEndpoint", count_attempt)
        ready.wait()
        while time.perf_counter() < stop_at[0]:
            started = time.perf_counter()
            try:
                response = client.invoke_endpoint(
                    EndpointName=DEFAULT_ENDPOINT_NAME, Body=body, ContentType="image/jpeg"
                )
                json.loads(response["Body"].read())
            except ClientError as error:
                tally.failed_calls += 1
                if retry_at_once:
                    continue
                # The API answers its caller 503 with the endpoint's Retry-After; its caller waits that long.
                retry_after = error.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after", "0")
                time.sleep(max(0.0, min(float(retry_after), stop_at[0] - time.perf_counter())))
                continue
            except (ReadTimeoutError, ConnectionError):
                tally.failed_calls += 1
                continue
            finished = time.perf_counter()
            if finished <= stop_at[0]:
                tally.answered.append(finished - started)

    threads = [threading.Thread(target=run, args=(tally,), daemon=True) for tally in tallies]
    for thread in threads:
        thread.start()
    ready.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join(timeout=max(0.0, stop_at[0] + DRAIN_S - time.perf_counter()))
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total, seconds


def percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def measure(
    model_dir: Path, extra: list[str], body: bytes, clients: int, seconds: float, retry_at_once: bool
) -> dict:
    process, url = start_endpoint(model_dir, extra)
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:  # noqa: S310 - our own http URL
            limit = json.loads(response.read())["queue"]["limit"]
        runtime = ping_body(url)
        cpu_before = cpu_seconds(process.pid)
        tally, elapsed = run_load(url, body, clients, seconds, retry_at_once)
        wait_for_empty_queue(url)
        cpu = cpu_seconds(process.pid) - cpu_before
    finally:
        stop_endpoint(process)
    model_runs = tally.attempts["200"] + tally.attempts["timeout"]
    return {
        "endpoint_runtime": runtime,
        "cpu": cpu,
        "model_runs": model_runs,
        "limit": limit,
        "goodput": len(tally.answered) / elapsed,
        "p50": percentile(tally.answered, 0.50),
        "p99": percentile(tally.answered, 0.99),
        "answered": len(tally.answered),
        "failed": tally.failed_calls,
        "shed": tally.attempts["503"],
        "timeouts": tally.attempts["timeout"],
        "other": tally.attempts["other"],
        "wasted": tally.attempts["timeout"] / model_runs if model_runs else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--max-wait", type=float, help="the shedding run's --max-wait (default: the server's)"
    )
    parser.add_argument(
        "--retry-at-once", action="store_true", help="clients call again at once after a 503 (no Retry-After)"
    )
    results.add_argument(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 1 <= args.seconds <= 600:
        parser.error("--clients must be 1-256 and --seconds 1-600")

    run = results.start(
        __spec__.name, f"overload-{args.model_dir.resolve().name}", args.results_dir, [args.model_dir]
    )
    config, _, _ = read_config(args.model_dir)
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    photo = SAMPLE.read_bytes()
    body = prepare_image(
        photo, resize_size=preprocessing.resize_size, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY
    ).jpeg
    print(f"CPUs: {len(os.sched_getaffinity(0))}; load average at start: {os.getloadavg()[0]:.2f}")
    print(
        f"model: {args.model_dir} ({config['backbone']}); {args.clients} clients, {args.seconds:g} s a run; "
        f"API timeouts: {ENDPOINT_READ_TIMEOUT_S:g} s read, {ENDPOINT_MAX_ATTEMPTS} attempts; "
        f"after a 503 clients {'call again at once' if args.retry_at_once else 'wait its Retry-After'}"
    )
    shedding = [] if args.max_wait is None else ["--max-wait", str(args.max_wait)]
    load = (body, args.clients, args.seconds, args.retry_at_once)
    results_by_mode = {
        "no shedding": measure(args.model_dir, ["--max-wait", "0"], *load),
        "shedding": measure(args.model_dir, shedding, *load),
    }
    table, ratios = report(results_by_mode, args.clients, args.seconds)
    figures = {
        "clients": args.clients,
        "seconds": args.seconds,
        "modes": results_by_mode,
        "shedding_over_none": ratios,
    }
    pings = [result["endpoint_runtime"] for result in results_by_mode.values()]
    run.finish(json_safe(figures), [table], **results.runtime_and_device(pings))


def report(results_by_mode: dict[str, dict], clients: int, seconds: float) -> tuple[dict, dict]:
    """Prints the figures of each mode and the ratios; returns the table and the ratios."""
    columns = ["mode", "queue limit", "goodput/s", "p50 s", "p99 s", "answered", "failed", "shed", "timeouts"]
    columns.append("wasted")
    widths = (12, 11, 9, 6, 6, 8, 6, 5, 8, 7)

    def line(cells: list) -> str:
        return " ".join(
            f"{cell!s:<{width}}" if index == 0 else f"{cell!s:>{width}}"
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(columns))
    rows = []
    for mode, result in results_by_mode.items():
        rows.append(
            [
                mode,
                result["limit"] or "none",
                f"{result['goodput']:.2f}",
                f"{result['p50']:.2f}",
                f"{result['p99']:.2f}",
                result["answered"],
                result["failed"],
                result["shed"],
                result["timeouts"],
                f"{result['wasted']:.0%}",
            ]
        )
        print(line(rows[-1]))
        if result["other"]:
            print(f"  ({result['other']} attempts failed otherwise)")
    before, after = results_by_mode["no shedding"], results_by_mode["shedding"]
    per_model_run = ratio(before["cpu"], before["model_runs"])
    for mode, result in results_by_mode.items():
        print(
            f"{mode}: endpoint CPU {result['cpu']:.1f} s for {result['model_runs']} model runs "
            f"and {result['shed']} refusals"
        )
    refusal_cpu_ms = 1000 * ratio(after["cpu"] - after["model_runs"] * per_model_run, after["shed"])
    print(
        f"endpoint CPU per model run {1000 * per_model_run:.1f} ms (no shedding); "
        f"per refused attempt {refusal_cpu_ms:.2f} ms (estimated)"
    )
    ratios = {
        "goodput": ratio(after["goodput"], before["goodput"]),
        "p99": ratio(after["p99"], before["p99"]),
        "cpu_ms_per_refusal": refusal_cpu_ms,
    }
    summary = (
        f"goodput {ratios['goodput']:.2f}x, p99 {ratios['p99']:.2f}x, "
        f"endpoint CPU per refusal {refusal_cpu_ms:.2f} ms, "
        f"wasted model work {before['wasted']:.0%} -> {after['wasted']:.0%}"
    )
    print(f"shedding / no shedding: {summary}")
    title = f"{clients} clients, {seconds:g} s a run; shedding / no shedding: {summary}"
    return results.table(title, columns, rows), ratios


def json_safe(value):
    """NaN (a percentile of no answers, a ratio to nothing) as null."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


if __name__ == "__main__":
    main()
