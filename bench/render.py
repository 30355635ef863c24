"""The benchmark tables in the docs, rendered from the committed results (bench/results/*.json).

    .venv/bin/python -m bench.render [--check] [--doc docs/benchmarks.md]

Each result's tables go between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in the doc (NAME: the result
file's name without .json), with a line saying which run they come from: the command, commit, models, CPU,
date and load. Where the same bench was run again into `bench/results/repeat/` (`make bench-all` runs every
bench twice), a cell whose two runs differ shows both, first run / second run, and both runs are named.
Text outside the markers is left as it is; a result with no markers yet is added at the end.
`--check` changes nothing and exits 1 when the doc is not what the results render to.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench import results

DOC = results.PROJECT / "docs" / "benchmarks.md"
REPEAT_DIR = "repeat"  # under the results folder: the second run of each bench
BLOCK = re.compile(r"<!-- bench:(?P<name>[\w.-]+) -->\n.*?<!-- /bench:(?P=name) -->", re.DOTALL)


def cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def markdown_table(table: dict) -> list[str]:
    lines = [f"**{table['title']}**", ""]
    lines.append("| " + " | ".join(cell(name) for name in table["columns"]) + " |")
    lines.append(
        "|" + "|".join(":---" if index == 0 else "---:" for index in range(len(table["columns"]))) + "|"
    )
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table["rows"]]
    return lines


def source_line(name: str, result: dict, results_dir: str = "bench/results") -> str:
    """Which run the figures come from."""
    run = result["provenance"]
    commit = (run["commit"] or "unknown")[:10]
    if run["dirty"]:
        commit += " with uncommitted changes"
    models = ", ".join(f"{model['path']} (digest {model['source_digest']})" for model in run["models"])
    machine = run["cpu"]
    features = ", ".join(flag for flag, present in machine["flags"].items() if present) or "none"
    runtime = " on ".join(part for part in (run.get("runtime"), run.get("device")) if part)
    load = f"{run['load_before'][0]:.2f} before, {run['load_after'][0]:.2f} after"
    return (
        f"From `{results_dir}/{name}.json`: `{run['command']}` at commit {commit}"
        + (f"; {models}" if models else "")
        + (f"; {runtime}" if runtime else "")
        + f"; {machine['model']}, {machine['cores_usable']} of {machine['cores']} cores ({features});"
        + f" {run['started'].replace('T', ' ').replace('+00:00', ' UTC')}; load average {load}."
    )


def same_shape(first: dict, second: dict) -> bool:
    return first["columns"] == second["columns"] and [row[0] for row in first["rows"]] == [
        row[0] for row in second["rows"]
    ]


def both_runs(first: dict, second: dict) -> dict:
    """`first` with each cell that `second` gives otherwise as "first / second", and the second's title too
    where it differs (some titles hold figures)."""
    rows = [
        [a if a == b else f"{a} / {b}" for a, b in zip(row, again, strict=True)]
        for row, again in zip(first["rows"], second["rows"], strict=True)
    ]
    title = first["title"]
    if second["title"] != title:
        title += f" (second run: {second['title']})"
    return {**first, "title": f"{title} (where two runs differ: first / second)", "rows": rows}


def block(name: str, result: dict, repeat: dict | None = None) -> str:
    lines = [f"<!-- bench:{name} -->"]
    tables = result["tables"]
    if repeat is not None and len(repeat["tables"]) == len(tables):
        tables = [
            both_runs(table, again) if same_shape(table, again) else table
            for table, again in zip(tables, repeat["tables"], strict=True)
        ]
    for table in tables:
        lines += [*markdown_table(table), ""]
    lines.append(source_line(name, result))
    if repeat is not None:
        lines += ["", "Second run: " + source_line(name, repeat, f"bench/results/{REPEAT_DIR}")]
    lines.append(f"<!-- /bench:{name} -->")
    return "\n".join(lines)


def render(doc: str, found: dict[str, dict], repeats: dict[str, dict] | None = None) -> str:
    """`doc` with every marked block rendered from `found` (name -> result) and, where there is one, its
    second run in `repeats`; the results it lacks are added. Raises KeyError for a block whose result is
    missing."""
    repeats = repeats or {}
    missing = [match["name"] for match in BLOCK.finditer(doc) if match["name"] not in found]
    if missing:
        raise KeyError(f"no result for the block(s): {', '.join(missing)}")
    placed = {match["name"] for match in BLOCK.finditer(doc)}

    def rendered(name: str) -> str:
        return block(name, found[name], repeats.get(name))

    text = BLOCK.sub(lambda match: rendered(match["name"]), doc)
    for name in sorted(set(found) - placed):
        text = text.rstrip("\n") + f"\n\n## {name}\n\n{rendered(name)}\n"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 when the doc is out of date")
    args = parser.parse_args(argv)
    before = args.doc.read_text() if args.doc.exists() else ""
    try:
        after = render(
            before,
            results.all_results(args.results_dir),
            results.all_results(args.results_dir / REPEAT_DIR),
        )
    except KeyError as error:
        sys.exit(f"error: {args.doc}: {error.args[0]}")
    if args.check:
        if after != before:
            sys.exit(
                f"{args.doc} differs from what {args.results_dir} renders to: run python -m bench.render"
            )
        return
    if after != before:
        args.doc.write_text(after)
        print(f"rewrote the tables in {args.doc}")


if __name__ == "__main__":
    main()
