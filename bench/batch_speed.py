"""Batch benchmark: a folder of photos through `python -m clients.batch` and the local endpoint.

    .venv/bin/python -m bench.batch_speed [--model-dir DIR ...] [--data ../shared/data/dogs/valid] [--limit N]

For each model it starts `python -m serving.server` on a free port and runs the batch command on the folder
(2,061 valid images by default) twice: one image per request, one request at a time (the baseline), and with
the command's defaults (groups of images per request, several requests in flight). Each figure is images per
second over the classification itself, as the command reports it in its last progress line (its start-up is
left out; the wall time is printed too).
For scale, the endpoint's own throughput at 16 clients (bench/endpoint_speed.py's load: the Lambda-sized
sample
photo over and over) is measured in the same run, just before and just after the defaults' run, and their
mean is what the defaults are compared with (on a shared machine the speed drifts over minutes): the batch
command should reach it, i.e. add no cost of its own. Both runs must classify every image alike.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import urllib3

from bench import results
from bench.endpoint_speed import SAMPLE, ping_body, start_endpoint
from chalicelib.image import prepare_image
from chalicelib.settings import JPEG_QUALITY, MAX_PIXELS
from classifier.model import read_config
from clients.batch import DEFAULT_CONCURRENCY, DEFAULT_ENDPOINT_BATCH

PROJECT = Path(__file__).resolve().parents[1]

JPEG = "image/jpeg"

DATA = PROJECT.parent / "shared" / "data" / "dogs" / "valid"
MODELS = (PROJECT / "models" / "default", PROJECT / "models" / "fast")
PROGRESS = re.compile(r"(\d+)/(\d+) images, (\d+) failed, ([\d.]+) images/s")


def sample_folder(data: Path, limit: int | None, into: Path) -> Path:
    """`data` itself, or a folder of links to every k-th of its files so that `limit` remain."""
    if not limit:
        return data
    files = sorted(path for path in data.rglob("*") if path.is_file())
    step = max(1, len(files) // limit)
    for path in files[::step][:limit]:
        link = into / path.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return into


def endpoint_throughput(url: str, body: bytes, clients: int, seconds: float) -> float:
    """Images per second while `clients` threads each post the same photo to /invocations, one after another
    (bench/endpoint_speed.py's load, through a pool that reconnects when the server drops an idle connection:
    on a loaded machine, warming up 16 clients can outlast uvicorn's 5 s keep-alive.)
    """
    http = urllib3.PoolManager(maxsize=clients, retries=urllib3.Retry(total=2, allowed_methods=None))
    counts = [0] * clients
    errors: list[Exception] = []
    stop_at = time.perf_counter() + seconds

    def run(index: int) -> None:
        try:
            while time.perf_counter() < stop_at:
                answer = http.request("POST", f"{url}/invocations", body=body, headers={"Content-Type": JPEG})
                if answer.status != 200:
                    raise RuntimeError(f"endpoint answered {answer.status}")
                counts[index] += 1
        except Exception as error:  # noqa: BLE001 - reported after the run
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} client(s) failed: {errors[0]}")
    return sum(counts) / (time.perf_counter() - began)


def run_batch(folder: Path, url: str, output: Path, options: list[str]) -> tuple[float, float, dict]:
    """(images/s as the command reports it, wall seconds, key -> label) of one run of the batch command."""
    argv = [
        sys.executable,
        "-m",
        "clients.batch",
        str(folder),
        "-o",
        str(output),
        "--endpoint",
        url,
        *options,
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - started
    figures = PROGRESS.findall(done.stderr)
    if done.returncode != 0 or not figures:
        raise SystemExit(f"the batch command failed ({done.returncode}):\n{done.stderr[-2000:]}")
    images, total, failed, rate = figures[-1]
    if int(failed) or images != total:
        raise SystemExit(f"the batch command classified {images} of {total} images, {failed} failed")
    with output.open(newline="") as stream:
        labels = {row["key"]: row["label"] for row in csv.DictReader(stream)}
    return float(rate), wall, labels


def bench_model(model_dir: Path, folder: Path, images: int, seconds: float, work: Path) -> dict:
    """Prints the model's figures and returns them."""
    config, _, _ = read_config(model_dir)
    print(f"\nmodel: {model_dir.relative_to(PROJECT)} ({config['backbone']}), {images} images")
    process, url = start_endpoint(model_dir, [])
    try:
        runtime = ping_body(url)
        print(f"  the endpoint runs: {runtime}")
        sample = prepare_image(
            SAMPLE.read_bytes(),
            resize_size=config["preprocessing"]["resize_size"],
            max_pixels=MAX_PIXELS,
            quality=JPEG_QUALITY,
        ).jpeg
        endpoint_throughput(url, sample, 16, 1.0)  # warm up
        name = model_dir.name
        sequential, sequential_wall, first = run_batch(
            folder, url, work / f"{name}-1.csv", ["--concurrency", "1", "--batch-size", "1"]
        )
        before = endpoint_throughput(url, sample, 16, seconds)
        default, default_wall, second = run_batch(folder, url, work / f"{name}-default.csv", [])
        after = endpoint_throughput(url, sample, 16, seconds)
        alone = (before + after) / 2
    finally:
        process.terminate()
        process.wait(timeout=60)
    if first != second:
        changed = sum(1 for key in first if first[key] != second.get(key))
        raise SystemExit(f"the two runs disagree on {changed} images")
    defaults = f"{DEFAULT_CONCURRENCY} requests of {DEFAULT_ENDPOINT_BATCH} in flight"
    rows = [
        (
            "endpoint alone, 16 clients (Lambda-sized sample)",
            alone,
            f"before {before:.1f}, after {after:.1f}",
        ),
        ("batch command, 1 image per request, 1 at a time", sequential, f"wall {sequential_wall:.1f} s"),
        (f"batch command, defaults ({defaults})", default, f"wall {default_wall:.1f} s"),
    ]
    for label, rate, note in rows:
        print(f"  {label + ':':<56}{rate:7.1f} images/s ({note})")
    print(
        f"  defaults / sequential: {default / sequential:.2f}x; "
        f"defaults / endpoint at 16 clients: {default / alone:.2f}x"
    )
    return {
        "endpoint_runtime": runtime,
        "images": images,
        "endpoint_16_clients_images_per_s": {"before": before, "after": after, "mean": alone},
        "sequential_images_per_s": sequential,
        "sequential_wall_s": sequential_wall,
        "defaults_images_per_s": default,
        "defaults_wall_s": default_wall,
        "defaults": {"concurrency": DEFAULT_CONCURRENCY, "batch_size": DEFAULT_ENDPOINT_BATCH},
        "rows": [[label, f"{rate:.1f}", note] for label, rate, note in rows]
        + [
            ["defaults / sequential", f"{default / sequential:.2f}x", ""],
            ["defaults / endpoint at 16 clients", f"{default / alone:.2f}x", ""],
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, nargs="+", default=list(MODELS))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, help="use an even sample of this many images")
    parser.add_argument("--seconds", type=float, default=8.0, help="for the endpoint's own throughput")
    results.add_argument(parser)
    args = parser.parse_args(argv)
    run = results.start(__spec__.name, "batch_speed", args.results_dir, args.model_dir)
    print(
        f"CPUs: {len(os.sched_getaffinity(0))}; load average at start: "
        f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}"
    )
    figures, tables = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as scratch:
        folder = sample_folder(args.data, args.limit, Path(scratch) / "images")
        images = sum(1 for path in folder.rglob("*") if path.is_file())
        for model_dir in args.model_dir:
            model = bench_model(model_dir.resolve(), folder, images, args.seconds, Path(scratch))
            figures[results.model_record(model_dir)["path"]] = model
            tables.append(
                results.table(
                    f"{results.model_record(model_dir)['path']}: {images} images, images/s",
                    ["", "images/s", "note"],
                    model.pop("rows"),
                )
            )
    pings = [model["endpoint_runtime"] for model in figures.values()]
    run.finish(figures, tables, **results.runtime_and_device(pings))


if __name__ == "__main__":
    main()
