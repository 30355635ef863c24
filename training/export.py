"""`python -m training.export --model-dir DIR`: write DIR/model.onnx, exported from the artifact's model,
checked against PyTorch and stamped for its config and weights (classifier.checked_graph)."""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.checked_graph import build_checked_graph
from classifier.graph import graph_is_current
from classifier.model import ONNX_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, action="append", help="repeatable")
    parser.add_argument(
        "--if-missing", action="store_true", help="skip a model whose graph is there and stamped for it"
    )
    args = parser.parse_args()
    for model_dir in args.model_dir:
        if args.if_missing and graph_is_current(model_dir / ONNX_FILE, model_dir):
            print(f"{model_dir / ONNX_FILE} is current")
            continue
        path, gap = build_checked_graph(model_dir)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), max probability gap to PyTorch {gap:.1e}")


if __name__ == "__main__":
    main()
