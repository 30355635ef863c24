"""Endpoint benchmark: latency per image and throughput through the local endpoint, against eager PyTorch.

    .venv/bin/python -m bench.endpoint_speed [--url http://127.0.0.1:8080] [--model-dir DIR] [--seconds 4]

Without --url it starts `python -m serving.server` on a free port with the model dir and stops it at the end,
with shedding off (`--serve-args` sets its flags): this bench measures what the endpoint answers at capacity.
The baseline is the same model run by plain eager PyTorch in this process (model only: no decoding, no HTTP),
at the batch sizes that match the numbers of clients. The endpoint gets the sample photo as the Lambda sends
it: shrunk to the model's resize size and re-encoded by chalicelib, the code the Lambda runs. Baseline and
endpoint are measured in alternation over several rounds, so that a change in the machine's other load hits
both alike. Load comes from threads with keep-alive HTTP connections; they share the CPUs with the endpoint,
as the Lambda would not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

from bench import results
from chalicelib.image import prepare_image
from chalicelib.settings import JPEG_QUALITY, MAX_PIXELS
from classifier.graph import graph_is_current
from classifier.model import ONNX_INT8_FILE, read_config
from classifier.preprocessing import open_image
from serving.contract import JPEG
from serving.inference import load_predictor
from serving.server import DEFAULT_ENDPOINT_NAME

PROJECT = Path(__file__).resolve().parents[1]

SAMPLE = PROJECT.parent / "shared" / "data" / "samples" / "Labrador_retriever_06455.jpg"
CLIENTS = (1, 4, 16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_endpoint(
    model_dir: Path, extra: list[str], ready_within_s: float = 300
) -> tuple[subprocess.Popen, str]:
    """`python -m serving.server` for `model_dir` on a free loopback port, once its /ping answers 200."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model-dir", str(model_dir), "--port", str(port), *extra],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # one log line per request would swamp the figures
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the endpoint exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:  # noqa: S310 - our own http URL
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop_endpoint(process)
    raise SystemExit(f"{url}/ping did not answer 200 within {ready_within_s:g} s")


def stop_endpoint(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Client:
    """One keep-alive connection posting the sample to InvokeEndpoint's path, as the Lambda's boto3 does."""

    def __init__(self, url: str, endpoint_name: str, body: bytes):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.path = f"/endpoints/{endpoint_name}/invocations"
        self.body = body

    def invoke(self) -> float:
        """Seconds for one request; raises RuntimeError unless it succeeded."""
        started = time.perf_counter()
        try:
            self.connection.request("POST", self.path, self.body, {"Content-Type": JPEG})
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # The server closes a connection idle past its keep-alive (uvicorn: 5 s), as when warming up
            # 16 clients on a loaded machine outlasts it: connect again, as boto3 would.
            self.connection.close()
            started = time.perf_counter()
            self.connection.request("POST", self.path, self.body, {"Content-Type": JPEG})
            response = self.connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"endpoint answered {response.status}: {answer[:200]!r}")
        return time.perf_counter() - started


def endpoint_latencies(url: str, endpoint_name: str, body: bytes, runs: int) -> list[float]:
    client = Client(url, endpoint_name, body)
    for _ in range(5):
        client.invoke()
    return [client.invoke() for _ in range(runs)]


def endpoint_throughput(url: str, endpoint_name: str, body: bytes, clients: int, seconds: float) -> float:
    """Images per second answered while `clients` threads each post one image after another."""
    counts = [0] * clients
    errors: list[Exception] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def run(index: int) -> None:
        try:
            client = Client(url, endpoint_name, body)
            client.invoke()  # connect and warm up outside the measured window
            start.wait()
            while time.perf_counter() < stop_at[0]:
                client.invoke()
                counts[index] += 1
        except threading.BrokenBarrierError:
            pass  # another client failed its warm-up
        except Exception as error:  # noqa: BLE001 - reported after the run
            errors.append(error)
            start.abort()  # rather than leave the others waiting for this one

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 1e9
    try:
        start.wait()
    except threading.BrokenBarrierError:
        for thread in threads:
            thread.join()
        raise RuntimeError(f"{len(errors)} client(s) failed to warm up: {errors[0]}") from None
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    return sum(counts) / elapsed


def model_latencies(predictor, image: np.ndarray, runs: int, seconds: float) -> list[float]:
    """Seconds per call for `runs` calls, or as many as fit in `seconds` (at least 5) when each is slow."""
    for _ in range(3):
        predictor.predict(image)
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(timings) < runs and (len(timings) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        predictor.predict(image)
        timings.append(time.perf_counter() - started)
    return timings


def model_throughput(predictor, image: np.ndarray, batch: int, seconds: float) -> float:
    images = np.repeat(image, batch, axis=0)
    predictor.predict(images)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        predictor.predict(images)
        count += batch
    return count / (time.perf_counter() - began)


def ping_body(url: str) -> str:
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:  # noqa: S310 - our own http URL
        body = json.loads(response.read())
    return f"{body.get('runtime', '?')} on {body.get('device', '?')}"


def percentile_ms(timings: list[float], percent: int) -> float:
    return float(np.percentile(timings, percent)) * 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running endpoint; default: start one here")
    parser.add_argument("--model-dir", type=Path, default=PROJECT / "models" / "default")
    parser.add_argument("--endpoint-name", default=DEFAULT_ENDPOINT_NAME)
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement and round")
    parser.add_argument("--runs", type=int, default=60, help="sequential requests per round for latency")
    parser.add_argument("--rounds", type=int, default=3)
    # Shedding off: this bench measures what the endpoint can answer, and at 16 clients its default shedding
    # refuses the excess (bench.overload measures that).
    parser.add_argument(
        "--serve-args",
        default="--max-wait 0",
        help="flags for serving.server, e.g. '--workers 2' (default: %(default)s, shedding off)",
    )
    results.add_argument(parser)
    return parser.parse_args(argv)


@dataclass
class Subjects:
    """What is measured: the model run in this process by each runtime, and the image the endpoint gets."""

    cpus: int
    eager: object
    onnx: object
    int8: object | None
    body: bytes  # the sample as the Lambda sends it
    image: np.ndarray  # the same, preprocessed: the model-only baselines' input

    @property
    def eager_threads(self) -> list[int]:
        return sorted({1, self.cpus})


def load_subjects(model_dir: Path, cpus: int) -> Subjects:
    # Eager PyTorch is measured with one thread and with all: when other work shares the CPUs, its OpenMP
    # threads can spin against each other and one thread wins; ratios are taken against the better of the two.
    eager = load_predictor(model_dir, runtime="pytorch", threads=cpus)
    onnx = load_predictor(model_dir, runtime="onnx", threads=cpus)  # the fp32 graph, model only
    # The int8 graph where `make int8` built one (the endpoint runs it only where its figures qualify it).
    int8 = (
        load_predictor(model_dir, runtime="onnx-int8", threads=cpus)
        if graph_is_current(model_dir / ONNX_INT8_FILE, model_dir)
        else None
    )
    photo = SAMPLE.read_bytes()
    body = prepare_image(
        photo, resize_size=eager.preprocessing.resize_size, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY
    ).jpeg
    image = eager.preprocessing(open_image(body))[None]
    config, _, _ = read_config(model_dir)
    flip = ", test-time flip" if config.get("test_time_flip") else ""
    print(
        f"model: {model_dir} ({config['backbone']}{flip}); "
        f"image: {SAMPLE.name}, {len(photo):,} bytes, sent as the Lambda sends it: {len(body):,} bytes JPEG"
    )
    return Subjects(cpus, eager, onnx, int8, body, image)


@dataclass
class Timings:
    """Every measurement of every round: seconds per call (latency) and images per second (throughput)."""

    eager_latency: dict[int, list[float]]
    eager_throughput: dict[int, dict[int, list[float]]]
    onnx_latency: list[float] = field(default_factory=list)
    int8_latency: list[float] = field(default_factory=list)
    int8_throughput: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CLIENTS})
    latency: list[float] = field(default_factory=list)
    throughput: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CLIENTS})


def measure_round(subjects: Subjects, url: str, args: argparse.Namespace, timings: Timings) -> None:
    """One round: each baseline, then the endpoint; latency first, then throughput per number of clients."""
    eager, image, cpus = subjects.eager, subjects.image, subjects.cpus
    for threads in subjects.eager_threads:
        torch.set_num_threads(threads)
        timings.eager_latency[threads] += model_latencies(eager, image, max(10, args.runs // 4), args.seconds)
    torch.set_num_threads(cpus)
    timings.onnx_latency += model_latencies(subjects.onnx, image, args.runs, args.seconds)
    if subjects.int8 is not None:
        timings.int8_latency += model_latencies(subjects.int8, image, args.runs, args.seconds)
    timings.latency += endpoint_latencies(url, args.endpoint_name, subjects.body, args.runs)
    for clients in CLIENTS:
        for threads in subjects.eager_threads:
            torch.set_num_threads(threads)
            timings.eager_throughput[threads][clients].append(
                model_throughput(eager, image, clients, args.seconds / 2)
            )
        torch.set_num_threads(cpus)
        if subjects.int8 is not None:
            timings.int8_throughput[clients].append(
                model_throughput(subjects.int8, image, clients, args.seconds / 2)
            )
        timings.throughput[clients].append(
            endpoint_throughput(url, args.endpoint_name, subjects.body, clients, args.seconds)
        )


def summarise(subjects: Subjects, timings: Timings, endpoint_runtime: str) -> dict:
    """The figures: p50/p99 ms per latency row, median-round images/s per throughput row."""

    def latency(seconds: list[float]) -> dict:
        return {
            "p50_ms": percentile_ms(seconds, 50),
            "p99_ms": percentile_ms(seconds, 99),
            "calls": len(seconds),
        }

    def medians(runs: dict[int, list[float]]) -> dict[str, float]:
        return {str(c): statistics.median(runs[c]) for c in CLIENTS}

    cpus = subjects.cpus
    latencies = {
        f"eager PyTorch, {t} thread(s), model only": latency(v) for t, v in timings.eager_latency.items()
    }
    latencies[f"ONNX Runtime, {cpus} thread(s), model only"] = latency(timings.onnx_latency)
    if subjects.int8 is not None:
        latencies[f"ONNX Runtime int8, {cpus} thread(s), model only"] = latency(timings.int8_latency)
    latencies["endpoint, whole request (HTTP + decode + model)"] = latency(timings.latency)
    throughputs = {
        f"eager PyTorch, {t} thread(s), batch = clients": medians(runs)
        for t, runs in timings.eager_throughput.items()
    }
    if subjects.int8 is not None:
        throughputs["ONNX Runtime int8, batch = clients"] = medians(timings.int8_throughput)
    throughputs["endpoint, concurrent clients"] = medians(timings.throughput)
    best_eager_p50 = min(latency(v)["p50_ms"] for v in timings.eager_latency.values())
    best_eager = {
        str(c): max(medians(runs)[str(c)] for runs in timings.eager_throughput.values()) for c in CLIENTS
    }
    endpoint = throughputs["endpoint, concurrent clients"]
    return {
        "cpus": cpus,
        "clients": list(CLIENTS),
        "endpoint_runtime": endpoint_runtime,
        "latency": latencies,
        "latency_speedup_over_best_eager": {
            name: best_eager_p50 / row["p50_ms"] for name, row in latencies.items() if "eager" not in name
        },
        "throughput_images_per_s": throughputs,
        "endpoint_over_best_eager": {c: endpoint[c] / best_eager[c] for c in endpoint},
    }


def report(figures: dict, rounds: int) -> list[dict]:
    """Prints the figures; returns them as the result's tables."""
    clients = [str(c) for c in figures["clients"]]
    speedups = figures["latency_speedup_over_best_eager"]
    latency_rows = [
        [
            name,
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{speedups[name]:.2f}x" if name in speedups else "",
        ]
        for name, row in figures["latency"].items()
    ]
    throughput_rows = [
        [name, *(f"{row[c]:.1f}" for c in clients)]
        for name, row in figures["throughput_images_per_s"].items()
    ]
    throughput_rows.append(
        ["endpoint / best eager", *(f"{figures['endpoint_over_best_eager'][c]:.2f}x" for c in clients)]
    )
    print(f"\n{rounds} rounds; throughput figures are the median round")
    print(f"{'latency per image at batch 1':52} {'p50 ms':>8} {'p99 ms':>8}")
    for name, p50, p99, speedup in latency_rows:
        if name.startswith("endpoint"):
            print(f"the endpoint runs: {figures['endpoint_runtime']}")
        ratio = f"   speed-up over best eager: {speedup}" if speedup else ""
        print(f"{name:52} {p50:>8} {p99:>8}{ratio}")
    print()
    print(f"{'throughput, images/s':52} " + " ".join(f"{c + ' client(s)':>12}" for c in clients))
    for name, *cells in throughput_rows:
        print(f"{name:52} " + " ".join(f"{cell:>12}" for cell in cells))
    return [
        results.table(
            "latency per image at batch 1",
            ["", "p50 ms", "p99 ms", "speed-up over best eager"],
            latency_rows,
        ),
        results.table(
            f"throughput, images/s (median of {rounds} rounds)",
            ["", *(f"{c} client(s)" for c in clients)],
            throughput_rows,
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = results.start(
        __spec__.name, f"endpoint_speed-{args.model_dir.resolve().name}", args.results_dir, [args.model_dir]
    )
    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs: {cpus}; load average at start: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    subjects = load_subjects(args.model_dir, cpus)
    process, url = None, args.url
    if url is None:
        process, url = start_endpoint(args.model_dir, args.serve_args.split())
        print(f"endpoint: started here at {url} (serving.server {args.serve_args or 'with default flags'})")
    else:
        print(f"endpoint: {url}")
    endpoint_runtime = ping_body(url)
    timings = Timings(
        eager_latency={threads: [] for threads in subjects.eager_threads},
        eager_throughput={threads: {c: [] for c in CLIENTS} for threads in subjects.eager_threads},
    )
    try:
        for _ in range(args.rounds):
            measure_round(subjects, url, args, timings)
    finally:
        if process is not None:
            stop_endpoint(process)
    figures = summarise(subjects, timings, endpoint_runtime)
    figures["rounds"] = args.rounds
    figures["serve_args"] = args.serve_args if args.url is None else None
    tables = report(figures, args.rounds)
    print(f"\nload average at the end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    run.finish(figures, tables, **results.runtime_and_device([endpoint_runtime]))


if __name__ == "__main__":
    main()
