"""The pipeline's evaluation step: measure a trained model.tar.gz on a split its training never saw, write the
figures the quality gate reads, and repack the archive exactly as `deploy` would, for the registry.

    python -m training.registry_evaluation --model-archive model.tar.gz --data DATA/test \\
        --evaluation out/evaluation --repacked out/repacked

The SageMaker processing job runs this module from its code archive (source_bundle.evaluation_archive);
the measures are training.evaluate's. `evaluation.json` holds:

    {"metrics": {"top1": ..., "top5": ..., "ece": ..., "confident_share": ..., "confident_precision": ...,
                 "non_dog_images": ..., "false_dogs": ..., "false_dog_share": ..., "images": ...},
     "evaluation": <training.evaluate's full report>}

`ece` is the calibrated one (the probabilities the endpoint answers with). The test split is not the valid
split: training reports on valid, and the tuner picks hyperparameters by it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from classifier.logs import configure_cli_logging
from training import evaluate
from training.jobs.source_bundle import repack_model

EVALUATION_FILE = "evaluation.json"
REPACKED_FILE = "model.tar.gz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-archive", type=Path, required=True, help="a training job's model.tar.gz")
    parser.add_argument("--data", type=Path, required=True, help="the held-out split: <data>/<class>/*.jpg")
    parser.add_argument("--evaluation", type=Path, required=True, help=f"folder for {EVALUATION_FILE}")
    parser.add_argument("--repacked", type=Path, required=True, help=f"folder for {REPACKED_FILE}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return parser.parse_args(argv)


def _figure(value: float | None) -> float | None:
    # JSON has no NaN: a figure that does not exist (no confident answer at all) is null.
    return None if value is None or math.isnan(value) else round(value, 6)


def finite(value):
    """`value` with every NaN replaced by None, so it is JSON that any reader parses."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def gate_metrics(report: dict) -> dict:
    """The figures the gate and the registry show, from training.evaluate's report."""
    calibration = report["calibration"]
    confident = calibration.get("confident", {})
    non_dogs = report.get("non_dogs", {})
    figures = {
        "images": report["images"],
        "top1": _figure(report["top1"]),
        "top5": _figure(report["top5"]),
        "ece": _figure(calibration["calibrated"]["ece"]),
        "confident_share": _figure(confident.get("coverage")),
        "confident_precision": _figure(confident.get("precision")),
    }
    if non_dogs:
        figures.update(
            non_dog_images=non_dogs["images"],
            false_dogs=len(non_dogs["false_dogs"]),
            false_dog_share=_figure(len(non_dogs["false_dogs"]) / max(1, non_dogs["images"])),
        )
    return figures


def run(args: argparse.Namespace) -> dict:
    """Evaluate and repack; returns the gate's figures. Raises ValueError/tarfile.ReadError for a bad archive
    or data the model does not know."""
    archive = args.model_archive.read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            tar.extractall(model_dir, filter="data")
        report = evaluate.run(
            argparse.Namespace(
                model_dir=model_dir,
                data=args.data,
                threads=args.threads,
                batch_size=32,
                cache_dir=None,
                onnx=True,
                non_dogs=True,
                # Its own charts stay in the scratch folder; the job keeps evaluation.json below.
                output_dir=model_dir / "evaluation",
                write_model_dir=False,
            )
        )
    figures = gate_metrics(report)
    args.evaluation.mkdir(parents=True, exist_ok=True)
    report.update(model_dir=str(args.model_archive))  # not the scratch folder it was unpacked into
    written = {"metrics": figures, "evaluation": finite(report)}
    (args.evaluation / EVALUATION_FILE).write_text(json.dumps(written, indent=1, allow_nan=False) + "\n")
    args.repacked.mkdir(parents=True, exist_ok=True)
    (args.repacked / REPACKED_FILE).write_bytes(repack_model(archive))
    print(f"gate figures: {json.dumps(figures)}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> None:
    configure_cli_logging()
    try:
        run(parse_args(argv))
    except (ValueError, FileNotFoundError, tarfile.ReadError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
