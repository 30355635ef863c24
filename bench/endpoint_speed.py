"""Endpoint benchmark: latency per image and throughput through the local endpoint, against eager PyTorch.

    .venv/bin/python -m bench.endpoint_speed [--url http://127.0.0.1:8080] [--model-dir DIR] [--seconds 4]

Without --url it starts `python -m serving.server` on a free port with the model dir and stops it at the end.
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
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

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
        client = Client(url, endpoint_name, body)
        client.invoke()  # connect and warm up outside the measured window
        start.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                client.invoke()
                counts[index] += 1
        except Exception as error:  # noqa: BLE001 - reported after the run
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running endpoint; default: start one here")
    parser.add_argument("--model-dir", type=Path, default=PROJECT / "models" / "default")
    parser.add_argument("--endpoint-name", default=DEFAULT_ENDPOINT_NAME)
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement and round")
    parser.add_argument("--runs", type=int, default=60, help="sequential requests per round for latency")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-args", default="", help="extra flags for serving.server, e.g. '--workers 2'")
    args = parser.parse_args()

    cpus = len(os.sched_getaffinity(0))
    print(f"CPUs: {cpus}; load average at start: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")

    # Eager PyTorch is measured with one thread and with all: when other work shares the CPUs, its OpenMP
    # threads can spin against each other and one thread wins; ratios are taken against the better of the two.
    eager = load_predictor(args.model_dir, runtime="pytorch", threads=cpus)
    onnx = load_predictor(args.model_dir, runtime="onnx", threads=cpus)  # the fp32 graph, model only
    # The int8 graph where `make int8` built one (the endpoint runs it only where its figures qualify it).
    int8 = (
        load_predictor(args.model_dir, runtime="onnx-int8", threads=cpus)
        if graph_is_current(args.model_dir / ONNX_INT8_FILE, args.model_dir)
        else None
    )
    photo = SAMPLE.read_bytes()
    body = prepare_image(
        photo, resize_size=eager.preprocessing.resize_size, max_pixels=MAX_PIXELS, quality=JPEG_QUALITY
    ).jpeg
    image = eager.preprocessing(open_image(body))[None]
    config, _, _ = read_config(args.model_dir)
    flip = ", test-time flip" if config.get("test_time_flip") else ""
    print(
        f"model: {args.model_dir} ({config['backbone']}{flip}); "
        f"image: {SAMPLE.name}, {len(photo):,} bytes, sent as the Lambda sends it: {len(body):,} bytes JPEG"
    )
    eager_threads = sorted({1, cpus})

    process = None
    url = args.url
    if url is None:
        process, url = start_endpoint(args.model_dir, args.serve_args.split())
        print(f"endpoint: started here at {url} (serving.server {args.serve_args or 'with default flags'})")
    else:
        print(f"endpoint: {url}")
    endpoint_runtime = ping_body(url)

    eager_latency: dict[int, list[float]] = {threads: [] for threads in eager_threads}
    eager_throughput = {threads: {c: [] for c in CLIENTS} for threads in eager_threads}
    onnx_latency: list[float] = []
    int8_latency: list[float] = []
    int8_throughput: dict[int, list[float]] = {c: [] for c in CLIENTS}
    latency: list[float] = []
    throughput: dict[int, list[float]] = {c: [] for c in CLIENTS}
    try:
        for _ in range(args.rounds):
            for threads in eager_threads:
                torch.set_num_threads(threads)
                eager_latency[threads] += model_latencies(eager, image, max(10, args.runs // 4), args.seconds)
            torch.set_num_threads(cpus)
            onnx_latency += model_latencies(onnx, image, args.runs, args.seconds)
            if int8 is not None:
                int8_latency += model_latencies(int8, image, args.runs, args.seconds)
            latency += endpoint_latencies(url, args.endpoint_name, body, args.runs)
            for clients in CLIENTS:
                for threads in eager_threads:
                    torch.set_num_threads(threads)
                    eager_throughput[threads][clients].append(
                        model_throughput(eager, image, clients, args.seconds / 2)
                    )
                if int8 is not None:
                    int8_throughput[clients].append(model_throughput(int8, image, clients, args.seconds / 2))
                throughput[clients].append(
                    endpoint_throughput(url, args.endpoint_name, body, clients, args.seconds)
                )
    finally:
        if process is not None:
            stop_endpoint(process)

    eager_images_per_second = {
        threads: {c: statistics.median(runs[c]) for c in CLIENTS}
        for threads, runs in eager_throughput.items()
    }
    endpoint_images_per_second = {c: statistics.median(throughput[c]) for c in CLIENTS}
    best_eager_p50 = min(percentile_ms(timings, 50) for timings in eager_latency.values())
    best_eager_throughput = {c: max(runs[c] for runs in eager_images_per_second.values()) for c in CLIENTS}

    def latency_row(name: str, timings: list[float], compare: bool = True) -> None:
        p50 = percentile_ms(timings, 50)
        ratio = f"   speed-up over best eager: {best_eager_p50 / p50:.2f}x" if compare else ""
        print(f"{name:52} {p50:8.1f} {percentile_ms(timings, 99):8.1f}{ratio}")

    def throughput_row(name: str, figures: list[str]) -> None:
        print(f"{name:52} " + " ".join(f"{figure:>12}" for figure in figures))

    print(f"\n{args.rounds} rounds; throughput figures are the median round")
    print(f"{'latency per image at batch 1':52} {'p50 ms':>8} {'p99 ms':>8}")
    for threads, timings in eager_latency.items():
        latency_row(f"eager PyTorch, {threads} thread(s), model only", timings, compare=False)
    latency_row(f"ONNX Runtime, {cpus} thread(s), model only", onnx_latency)
    if int8 is not None:
        latency_row(f"ONNX Runtime int8, {cpus} thread(s), model only", int8_latency)
    print(f"the endpoint runs: {endpoint_runtime}")
    latency_row("endpoint, whole request (HTTP + decode + model)", latency)
    print()
    throughput_row("throughput, images/s", [f"{c} client(s)" for c in CLIENTS])
    for threads, figures in eager_images_per_second.items():
        throughput_row(
            f"eager PyTorch, {threads} thread(s), batch = clients", [f"{figures[c]:.1f}" for c in CLIENTS]
        )
    if int8 is not None:
        throughput_row(
            "ONNX Runtime int8, batch = clients",
            [f"{statistics.median(int8_throughput[c]):.1f}" for c in CLIENTS],
        )
    throughput_row("endpoint, concurrent clients", [f"{endpoint_images_per_second[c]:.1f}" for c in CLIENTS])
    throughput_row(
        "endpoint / best eager",
        [f"{endpoint_images_per_second[c] / best_eager_throughput[c]:.2f}x" for c in CLIENTS],
    )
    print(f"\nload average at the end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
