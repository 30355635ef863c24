"""How training scales from 1 rank to 2 ranks (1 thread each), measured in the same run.

    .venv/bin/python -m bench.train [--classes 20 --per-class 40 --backbone efficientnet-lite0]

Both runs train on the same subset of ../shared/data/dogs (symlinked, never copied) with an empty feature
cache, so an epoch is what the first epoch of a real run costs: computing the backbone features of every
image (and of the mirrored valid images; each rank its share), then one pass of the head. The two set-ups
alternate over --repeats rounds and the fastest round of each counts, which damps other load on the
machine. The 2-rank run is started by torchrun, as on a multi-GPU box; SageMaker multi-instance runs go
through the same code with SM_HOSTS instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import results

PROJECT = Path(__file__).resolve().parents[1]
DOGS = PROJECT.parent / "shared" / "data" / "dogs"


def subset(destination: Path, classes: int, per_class: int) -> Path:
    for split, count in (("train", per_class), ("valid", max(1, per_class // 4))):
        for folder in sorted((DOGS / split).iterdir())[:classes]:
            (destination / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.glob("*.jpg"))[:count]:
                (destination / split / folder.name / image.name).symlink_to(image)
    return destination


def train(data: Path, workdir: Path, name: str, ranks: int, backbone: str, onnx_file: Path | None) -> dict:
    cache = workdir / f"cache-{name}"
    cache.mkdir()
    if onnx_file is not None:
        # Only the exported graph is shared: every run computes its features from scratch.
        shutil.copy(onnx_file, cache / onnx_file.name)
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", "29547"]
    command = [
        *launcher, "-m", "training.train", "--backbone", backbone, "--epochs", "1",
        "--train", str(data / "train"), "--valid", str(data / "valid"), "--model-dir", str(workdir / name),
        "--cache-dir", str(cache), "--threads", "1", "--workers", "0",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("SM_")}
    started = time.perf_counter()
    subprocess.run(
        command, check=True, cwd=PROJECT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    metrics = json.loads((workdir / name / "metrics.json").read_text())
    epoch = metrics["history"][0]["seconds"]
    return {
        "ranks": ranks,
        "wall": wall,
        "features": metrics["feature_seconds"],
        "head_epoch": epoch,
        "epoch": metrics["feature_seconds"] + epoch,
        "valid_top1": metrics["splits"]["valid"]["top1"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--repeats", type=int, default=2)
    results.add_argument(parser)
    args = parser.parse_args(argv)
    result = results.start(__spec__.name, "train", args.results_dir)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        workdir = Path(scratch)
        data = subset(workdir / "dogs", args.classes, args.per_class)
        images = sum(1 for _ in (data / "train").glob("*/*")) + sum(1 for _ in (data / "valid").glob("*/*"))
        # Export the ONNX graph once, outside the timed runs.
        warmup = train(data, workdir, "warmup", 1, args.backbone, None)
        onnx_file = next((workdir / "cache-warmup").glob("*.onnx"), None)
        rounds = {1: [], 2: []}
        for repeat in range(args.repeats):
            for ranks in (1, 2):
                rounds[ranks].append(
                    train(data, workdir, f"r{repeat}-{ranks}", ranks, args.backbone, onnx_file)
                )
        one, two = (min(rounds[ranks], key=lambda run: run["epoch"]) for ranks in (1, 2))

    print(
        f"{args.backbone}, {images} images, 1 thread per rank, {os.cpu_count()} cores, "
        f"fastest of {args.repeats} rounds"
    )
    columns = ["", "features s", "head epoch s", "epoch s", "wall s", "valid top1"]
    rows = [
        [
            label,
            f"{run['features']:.2f}",
            f"{run['head_epoch']:.3f}",
            f"{run['epoch']:.2f}",
            f"{run['wall']:.1f}",
            f"{run['valid_top1']:.3f}",
        ]
        for label, run in (("1 rank x 1 thread", one), ("2 ranks x 1 thread", two))
    ]
    widths = (11, 13, 9, 8, 11)
    print(f"{'':22}" + "".join(f"{name:>{width}}" for name, width in zip(columns[1:], widths, strict=True)))
    for label, *cells in rows:
        print(f"{label:22}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True)))
    print(f"speed-up of one epoch, 2 ranks vs 1: {one['epoch'] / two['epoch']:.2f}x")
    print(f"(warm-up run with the ONNX export: {warmup['wall']:.1f} s wall)")
    figures = {
        "backbone": args.backbone,
        "images": images,
        "repeats": args.repeats,
        "one_rank": one,
        "two_ranks": two,
        "speedup": one["epoch"] / two["epoch"],
        "warmup_wall_s": warmup["wall"],
    }
    rows.append(
        ["speed-up of one epoch, 2 ranks vs 1", "", "", f"{one['epoch'] / two['epoch']:.2f}x", "", ""]
    )
    title = f"{args.backbone}, {images} images, 1 thread per rank, fastest of {args.repeats} rounds"
    result.finish(figures, [results.table(title, columns, rows)], device="cpu")


if __name__ == "__main__":
    main()
