"""Benchmark results: every bench writes its figures, and what they hold for, as one JSON file here.

A result file is `bench/results/<name>.json` (the bench's module name, and the model's folder name where the
bench measures one model per run), overwritten by the next run of the same bench: git keeps the earlier ones.
It holds:
- `figures`: the bench's numbers, as it computed them;
- `tables`: the tables it printed (column names and formatted cells), which `python -m bench.render` puts into
  docs/benchmarks.md;
- `provenance`: the git commit (and whether the tree had uncommitted changes), each model's source digest
  (classifier.graph.source_digest), the runtime and device where the bench names them, the CPU and its
  instruction-set features that decide int8 speed and accuracy, the cores, the load average before and after,
  the dates and the command line.

A bench calls `start(...)` first (the load average before it adds its own) and `Run.finish(...)` at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from classifier.cpu import INT8_FEATURES, this_cpu

PROJECT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT / "bench" / "results"
# Written by the benches and by bench.render: a tree that differs from its commit only there is not "dirty".
OWN_OUTPUTS = ("bench/results", "docs/benchmarks.md")
# The x86 features that decide int8 speed and accuracy in ONNX Runtime: without VNNI its U8S8 kernels can
# saturate; AVX-512 and AMX change which kernels run.


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The `--results-dir` option every bench takes."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON result goes (default: {RESULTS_DIR.relative_to(PROJECT)}/)",
    )


def git_state() -> dict:
    """The commit checked out and the tracked files that differ from it (the benches' own outputs aside)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.rstrip("\n")

    try:
        commit = git("rev-parse", "HEAD")
        changed = git(
            "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{path}" for path in OWN_OUTPUTS)
        ).splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": []}
    return {"commit": commit, "dirty": bool(changed), "changed": [line[3:] for line in changed][:20]}


def cpu() -> dict:
    """The CPU's model name, the int8-relevant features it has and its class (classifier/cpu.py, which the
    endpoint's choice of int8 reads too), and the cores."""
    machine = this_cpu()
    return {
        "model": machine["model"],
        "flags": {feature: feature in machine["features"] for feature in INT8_FEATURES},
        "class": machine["class"],
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
    }


def model_record(model_dir: Path) -> dict:
    # Imported here: classifier.graph imports torch, which a bench of the Lambda's memory must not load.
    from classifier.graph import source_digest

    path = Path(model_dir).resolve()
    try:
        name = str(path.relative_to(PROJECT))
    except ValueError:
        name = str(path)
    return {"path": name, "source_digest": source_digest(path)}


def software() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("torch", "onnxruntime"):
        module = sys.modules.get(package)
        if module is not None:
            versions[package] = module.__version__
    return versions


def load_average() -> list[float]:
    return [round(load, 2) for load in os.getloadavg()]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Run:
    """One bench run: what was known at its start; `finish` adds the figures and writes the file."""

    name: str
    models: list[dict]
    command: str
    results_dir: Path
    started: str = field(default_factory=now)
    load_before: list[float] = field(default_factory=load_average)

    def finish(
        self,
        figures: dict,
        tables: Iterable[dict] = (),
        runtime: str | None = None,
        device: str | None = None,
    ) -> Path:
        """Writes the result file and says where; `tables` as made by `table(...)`."""
        result = {
            "bench": self.name,
            "figures": figures,
            "tables": list(tables),
            "provenance": {
                **git_state(),
                "models": self.models,
                "runtime": runtime,
                "device": device,
                "cpu": cpu(),
                "software": software(),
                "load_before": self.load_before,
                "load_after": load_average(),
                "started": self.started,
                "finished": now(),
                "command": self.command,
            },
        }
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.name}.json"
        path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
        print(f"result: {display(path)}")
        return path


def start(module: str, name: str, results_dir: Path, models: Iterable[Path] = ()) -> Run:
    """A run of the bench `name` (the result file's name) over `models`, as `python -m module` ran it."""
    return Run(
        name=name,
        models=[model_record(model_dir) for model_dir in models],
        command=shlex.join(["python", "-m", module, *measuring_arguments(sys.argv[1:])]),
        results_dir=Path(results_dir),
    )


def measuring_arguments(argv: list[str]) -> list[str]:
    """`argv` less --results-dir: where a result was written is not what it measured."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--results-dir":
            skip = True
        elif not argument.startswith("--results-dir="):
            kept.append(argument)
    return kept


def runtime_and_device(described: Iterable[str]) -> dict[str, str]:
    """`finish`'s runtime and device from endpoints' "RUNTIME on DEVICE" (bench.endpoint_speed.ping_body)."""
    pairs = [text.partition(" on ")[::2] for text in described]
    return {
        "runtime": ", ".join(sorted({runtime for runtime, _ in pairs})),
        "device": ", ".join(sorted({device for _, device in pairs})),
    }


def table(title: str, columns: list[str], rows: Iterable[Iterable]) -> dict:
    """A printed table as the result keeps it: every cell a string, as the bench formatted it."""
    rows = [[str(cell) for cell in row] for row in rows]
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"{title}: every row needs {len(columns)} cells")
    return {"title": title, "columns": list(columns), "rows": rows}


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:
        return str(path)


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def all_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """name -> result, for every result file in `results_dir`."""
    return {path.stem: read(path) for path in sorted(Path(results_dir).glob("*.json"))}
