"""Render the held-out pet figures of models into their docs table.

    python -m training.pets_report --docs docs/models.md models/default models/fast

Reads each model's `pets-heldout.json` (written by training.fit_dog), prints the table and, with `--docs`,
puts it between the page's `<!-- pets-heldout -->` and `<!-- /pets-heldout -->` markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.fit_dog import RESULT_FILE
from training.pets import render_table

START, END = "<!-- pets-heldout -->", "<!-- /pets-heldout -->"


def table_for(model_dirs: list[Path]) -> str:
    return render_table([json.loads((model_dir / RESULT_FILE).read_text()) for model_dir in model_dirs])


def replace_section(page: str, table: str) -> str:
    """The page with the text between the markers replaced by `table`; ValueError without the markers."""
    if page.count(START) != 1 or page.count(END) != 1 or page.index(START) > page.index(END):
        raise ValueError(f"the page needs one {START} ... {END} section")
    head, rest = page.split(START)
    tail = rest.split(END)[1]
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--docs", type=Path, help="the Markdown page whose section to rewrite")
    args = parser.parse_args(argv)
    try:
        table = table_for(args.model_dirs)
        if args.docs:
            args.docs.write_text(replace_section(args.docs.read_text(), table))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(table)


if __name__ == "__main__":
    main()
