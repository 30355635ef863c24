"""Start-up of a fresh local endpoint: process start to the first `/ping` 200, with and without the graph.

    .venv/bin/python -m bench.startup [--runs 2] models/default models/fast

"with graph" is the model directory as `make setup` leaves it (model.onnx stamped for its weights);
"without graph" is a copy without model.onnx and an empty export cache, so the endpoint exports and checks
the graph as it starts, as every new instance did before archives carried it; "pytorch" serves the model
directory with eager PyTorch (no graph at all), the baseline. Each row alternates with the others over the
runs, so a change in the machine's other load hits them alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import results
from classifier.model import ONNX_FILE

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seconds_to_ready(model_dir: Path, runtime: str, cache: Path, limit: float = 600) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the server) from starting `python -m serving.server` to its first
    /ping 200; the server is stopped. CPU seconds hardly depend on what else runs on the machine."""
    port = free_port()
    env = {**os.environ, "DOGBREEDS_CACHE": str(cache)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model-dir", str(model_dir), "--port", str(port)]
        + ["--runtime", runtime],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - started < limit:
            if process.poll() is not None:
                raise SystemExit(f"the endpoint exited with {process.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return time.perf_counter() - started, cpu_seconds(process.pid)
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise SystemExit(f"not ready within {limit} s")
    finally:
        process.terminate()
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    results.add_argument(parser)
    args = parser.parse_args(argv)
    run = results.start(__spec__.name, "startup", args.results_dir, args.model_dirs)
    print(f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    figures, rows = {"runs": args.runs, "models": {}}, []
    for model_dir in args.model_dirs:
        if not (model_dir / ONNX_FILE).is_file():
            raise SystemExit(f"{model_dir / ONNX_FILE} is missing: run make setup first")
        timings = time_cases(model_dir, args.runs)
        print(f"\n{model_dir}: process start to the first /ping 200, median of {args.runs} (wall s, CPU s)")
        medians = {
            name: [statistics.median(column) for column in zip(*values, strict=True)]
            for name, values in timings.items()
        }
        base_wall, base_cpu = medians["with graph (onnx)"]
        figures["models"][str(model_dir)] = {
            name: {"wall_s": wall, "cpu_s": cpu} for name, (wall, cpu) in medians.items()
        }
        for name, (wall, cpu) in medians.items():
            print(
                f"  {name:32s} wall {wall:6.1f} s ({wall / base_wall:4.1f}x)   "
                f"CPU {cpu:6.1f} s ({cpu / base_cpu:4.1f}x)"
            )
            rows.append(
                [
                    str(model_dir),
                    name,
                    f"{wall:.1f}",
                    f"{wall / base_wall:.1f}x",
                    f"{cpu:.1f}",
                    f"{cpu / base_cpu:.1f}x",
                ]
            )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    table = results.table(
        f"process start to the first /ping 200, median of {args.runs}",
        ["model", "start", "wall s", "wall vs with graph", "CPU s", "CPU vs with graph"],
        rows,
    )
    run.finish(figures, [table], device="cpu")


def time_cases(model_dir: Path, runs: int) -> dict[str, list[tuple[float, float]]]:
    """(wall s, CPU s) of each run of each start-up case, the cases alternating."""
    with tempfile.TemporaryDirectory() as scratch:
        bare = Path(scratch) / "model"
        shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("*.onnx"))
        cases = {
            "with graph (onnx)": (model_dir, "auto"),
            "without graph (export at start)": (bare, "auto"),
            "pytorch": (model_dir, "pytorch"),
        }
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for run in range(runs):
            for name, (directory, runtime) in cases.items():
                cache = Path(scratch) / f"cache-{run}-{len(timings[name])}"  # empty: a fresh instance
                timings[name].append(seconds_to_ready(directory, runtime, cache))
    return timings


if __name__ == "__main__":
    main()
