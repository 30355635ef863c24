"""What observability adds to the API's cold start: import times in fresh interpreters.

Each run is a new `python` process (as a Lambda cold start is) that imports, in order and timing each step:
1. the API without observability: chalice and the chalicelib modules that do the work (the baseline);
2. Powertools' Logger and Metrics and chalicelib/observability.py, then the rest of app.py;
3. the X-Ray SDK that Powertools' Tracer would need (not shipped; for comparison).
Prints the median of each step over the runs and its ratio to the baseline, twice: with every module compiled
from source, as on Lambda (a chalice zip holds no bytecode and /var/task is read-only, so none is cached),
and with cached bytecode, as on a developer's machine.

    .venv/bin/python -m bench.cold_import --runs 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import results

PROJECT = Path(__file__).resolve().parents[1]

STEPS = {
    "baseline": "import chalice, chalicelib.settings, chalicelib.errors, chalicelib.fetch, chalicelib.image, "
    "chalicelib.invoke",
    "observability": "import aws_lambda_powertools.logging, aws_lambda_powertools.metrics, "
    "chalicelib.observability, app",
    "xray_sdk": "import aws_xray_sdk.core",
}

RUNNER = """
import json, time
times = {}
for name, statement in STEPS.items():
    started = time.perf_counter()
    exec(statement)
    times[name] = (time.perf_counter() - started) * 1000
print(json.dumps(times))
"""


def one_run(bytecode_dir: str, write_bytecode: bool) -> dict[str, float]:
    code = f"STEPS = {STEPS!r}\n{RUNNER}"
    # The prefix makes Python ignore the __pycache__ folders beside the sources: only this folder counts.
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPYCACHEPREFIX": bytecode_dir}
    if not write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True, env=env
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


LABELS = {
    "baseline": "API without observability (baseline)",
    "observability": "+ Powertools Logger/Metrics, app.py",
    "xray_sdk": "+ aws_xray_sdk (Tracer; not shipped)",
}


def report(title: str, runs: list[dict[str, float]]) -> tuple[dict[str, float], dict]:
    """Prints the medians of `runs`; returns them and their table."""
    medians = {name: statistics.median(run[name] for run in runs) for name in STEPS}
    base = medians["baseline"]
    title = f"{title}, median of {len(runs)} fresh interpreters (ms)"
    print(f"{title}:")
    print(f"  {LABELS['baseline']:<38} {base:7.1f}")
    rows = [[LABELS["baseline"], f"{base:.1f}", ""]]
    for name in ("observability", "xray_sdk"):
        print(f"  {LABELS[name]:<38} {medians[name]:7.1f}  ({medians[name] / base:.2f}x the baseline)")
        rows.append([LABELS[name], f"{medians[name]:.1f}", f"{medians[name] / base:.2f}x"])
    return medians, results.table(title, ["imports", "ms", "vs the baseline"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    results.add_argument(parser)
    args = parser.parse_args(argv)
    run = results.start(__spec__.name, "cold_import", args.results_dir)
    with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as cached:
        one_run(cached, write_bytecode=True)  # fills the bytecode cache and the OS's file cache
        source_runs, cached_runs = [], []
        # Interleaved, so that a change in the machine's load shows in both.
        for _ in range(args.runs):
            source_runs.append(one_run(empty, write_bytecode=False))
            cached_runs.append(one_run(cached, write_bytecode=False))
    source, source_table = report("compiled from source, as on Lambda", source_runs)
    cached_figures, cached_table = report("cached bytecode", cached_runs)
    figures = {"runs": args.runs, "from_source_ms": source, "cached_bytecode_ms": cached_figures}
    run.finish(figures, [source_table, cached_table])


if __name__ == "__main__":
    main()
