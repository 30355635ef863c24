"""The benchmark tables in the docs, rendered from the committed results (bench/results/*.json).

    .venv/bin/python -m bench.render [--check] [--doc docs/benchmarks.md]

Each result's tables go between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in the doc (NAME: the result
file's name without .json), with a line saying which run they come from: the command, commit, models, CPU,
date and load. Text outside the markers is left as it is; a result with no markers yet is added at the end.
`--check` changes nothing and exits 1 when the doc is not what the results render to.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench import results

DOC = results.PROJECT / "docs" / "benchmarks.md"
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


def source_line(name: str, result: dict) -> str:
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
        f"From `bench/results/{name}.json`: `{run['command']}` at commit {commit}"
        + (f"; {models}" if models else "")
        + (f"; {runtime}" if runtime else "")
        + f"; {machine['model']}, {machine['cores_usable']} of {machine['cores']} cores ({features});"
        + f" {run['started'].replace('T', ' ').replace('+00:00', ' UTC')}; load average {load}."
    )


def block(name: str, result: dict) -> str:
    lines = [f"<!-- bench:{name} -->"]
    for table in result["tables"]:
        lines += [*markdown_table(table), ""]
    lines += [source_line(name, result), f"<!-- /bench:{name} -->"]
    return "\n".join(lines)


def render(doc: str, found: dict[str, dict]) -> str:
    """`doc` with every marked block rendered from `found` (name -> result), and the results it lacks added.
    Raises KeyError for a block whose result is missing."""
    missing = [match["name"] for match in BLOCK.finditer(doc) if match["name"] not in found]
    if missing:
        raise KeyError(f"no result for the block(s): {', '.join(missing)}")
    placed = {match["name"] for match in BLOCK.finditer(doc)}
    text = BLOCK.sub(lambda match: block(match["name"], found[match["name"]]), doc)
    for name in sorted(set(found) - placed):
        text = text.rstrip("\n") + f"\n\n## {name}\n\n{block(name, found[name])}\n"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 when the doc is out of date")
    args = parser.parse_args(argv)
    before = args.doc.read_text() if args.doc.exists() else ""
    try:
        after = render(before, results.all_results(args.results_dir))
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
