"""int8: a statically quantized ONNX graph of a model, and its accuracy on the valid split beside fp32.

    python -m training.quantize --model-dir models/fast [--data ../shared/data/dogs] [--variant NAME ...]

Calibration uses a few hundred TRAINING images (a fixed sample, a few per breed), never the valid split the
figures come from. Every variant asked for is built and measured on the whole valid split beside the fp32
graph (top-1, top-5, and dog photos whose dog probability falls below the model's own dog threshold); the
first variant listed is written as DIR/model-int8.onnx and the figures of all of them as
DIR/quantization-valid.json, with the CPU they were measured on and the CPU classes each holds for
(classifier/cpu.py: int8 kernels differ on x86 CPUs without VNNI).
The int8 graph becomes the model's default runtime only when it passes `qualifies` (see
classifier/runtime.py's choice of runtime): otherwise it stays an option (`--runtime onnx-int8`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.cpu import holds_on, this_cpu
from classifier.graph import DIGEST_KEY, INPUT_NAME, OUTPUT_NAMES, source_digest, stamp_graph
from classifier.logs import configure_cli_logging
from classifier.model import (
    CONFIG_FILE,
    DOG_THRESHOLD,
    LABELS_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    QUANTIZATION_FILE,
    label_from_folder,
)
from classifier.preprocessing import Preprocessing
from training.data import load_image, read_image_folder

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 360  # 3 per breed: enough for stable activation ranges, a minute to run
# The bar for int8 to replace fp32 as a model's default runtime (issue #11).
MAX_TOP1_DROP_POINTS = 0.3
MAX_DOG_PHOTOS_LOST = 0


@dataclass(frozen=True)
class Variant:
    """One way to quantize: ONNX Runtime's format and calibration, and which nodes stay float."""

    name: str
    per_channel: bool = True
    qdq: bool = True
    method: str = "minmax"  # minmax, entropy or percentile
    keep_stem: bool = False  # the convolutions reading the input image stay float
    # everything after the pooled features: breed head, ImageNet head, dog probability
    keep_heads: bool = False
    reduce_range: bool = False  # 7-bit weights
    uint8_weights: bool = False  # U8U8 rather than U8S8
    extra: dict = field(default_factory=dict)

    @property
    def saturation_free(self) -> bool:
        """Whether ONNX Runtime's x86 kernels without VNNI compute it exactly (see classifier/cpu.py)."""
        return self.reduce_range or self.uint8_weights


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("qoperator-per-tensor", per_channel=False, qdq=False),
        Variant("qdq-per-channel"),
        Variant("qdq-per-channel-float-heads", keep_heads=True),
        Variant("qdq-per-channel-float-stem-heads", keep_stem=True, keep_heads=True),
        Variant("qdq-float-stem-heads-percentile", keep_stem=True, keep_heads=True, method="percentile"),
        Variant("qdq-float-stem-heads-entropy", keep_stem=True, keep_heads=True, method="entropy"),
        Variant("qdq-float-stem-heads-reduce-range", keep_stem=True, keep_heads=True, reduce_range=True),
        Variant("qdq-float-stem-heads-u8u8", keep_stem=True, keep_heads=True, uint8_weights=True),
    )
}
DEFAULT_VARIANT = "qdq-per-channel-float-stem-heads"


class SplitPixels:
    """A split's images resized and cropped once, kept as uint8 (a quarter of float32's memory)."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self.pixels = np.stack(
            [np.asarray(preprocessing.resize_and_crop(load_image(path))) for path in paths]
        )

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.preprocessing.to_array(Image.fromarray(p)) for p in self.pixels[start:stop]])


def calibration_paths(train_root: Path, count: int = CALIBRATION_IMAGES, seed: int = 0) -> list[Path]:
    """`count` training images, the same few of each breed in turn, fixed by `seed`."""
    split = read_image_folder(train_root)
    by_class: dict[int, list[Path]] = {}
    for path, target in zip(split.paths, split.targets, strict=True):
        by_class.setdefault(target, []).append(path)
    generator = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    for paths in by_class.values():
        generator.shuffle(paths)
    chosen, depth = [], 0
    while len(chosen) < count:
        chosen.extend(paths[depth] for paths in by_class.values() if depth < len(paths))
        depth += 1
    return sorted(chosen[:count])


def _downstream_of(graph, op_types: tuple[str, ...]) -> set[str]:
    """Names of the nodes fed, directly or not, by a node of one of `op_types`."""
    tainted = {output for node in graph.node if node.op_type in op_types for output in node.output}
    names = set()
    for node in graph.node:  # ONNX nodes are topologically sorted
        if any(name in tainted for name in node.input):
            names.add(node.name)
            tainted.update(node.output)
    return names


def float_nodes(model_path: Path, variant: Variant) -> list[str]:
    """The nodes a variant leaves in float."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    keep: set[str] = set()
    if variant.keep_heads:
        keep |= _downstream_of(graph, ("GlobalAveragePool", "ReduceMean"))
    if variant.keep_stem:
        # The first convolution of each backbone: the one its input reaches before any other conv.
        produced_by = {output: node for node in graph.node for output in node.output}
        for node in graph.node:
            if node.op_type != "Conv":
                continue
            source = produced_by.get(node.input[0])
            while source is not None and source.op_type != "Conv":
                source = produced_by.get(source.input[0]) if source.input else None
            if source is None:
                keep.add(node.name)
    return sorted(keep)


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed images, a few at a time."""

    def __init__(self, pixels: SplitPixels, batch: int = 8):
        self.pixels, self.batch, self.start = pixels, batch, 0

    def get_next(self):
        if self.start >= len(self.pixels):
            return None
        stop = min(self.start + self.batch, len(self.pixels))
        images = self.pixels.batch(self.start, stop)
        self.start = stop
        return {INPUT_NAME: images}

    def rewind(self):
        self.start = 0


def quantize(fp32_path: Path, out_path: Path, calibration: SplitPixels, variant: Variant) -> Path:
    """Write the int8 graph of `fp32_path` to `out_path`, calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        # Shape inference and folding first, as ONNX Runtime recommends for static quantization.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        partial = Path(scratch) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(partial),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ if variant.qdq else QuantFormat.QOperator,
            per_channel=variant.per_channel,
            reduce_range=variant.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if variant.uint8_weights else QuantType.QInt8,
            calibrate_method=methods[variant.method],
            nodes_to_exclude=float_nodes(prepared, variant),
            # Ranges are folded in every few batches: holding every activation of hundreds of images of
            # the default ensemble would take tens of GB.
            extra_options={
                "CalibTensorRangeSymmetric": False,
                "CalibMaxIntermediateOutputs": 4,
                **variant.extra,
            },
        )
        os.replace(partial, out_path)
    return out_path


@dataclass
class Scores:
    top1: float
    top5: float
    dog_probabilities: np.ndarray
    top1_labels: np.ndarray
    seconds: float


def score(session, pixels: SplitPixels, targets: np.ndarray, batch: int = 16) -> Scores:
    """Top-1, top-5, and per-image dog probability and top-1 answer of one graph on a split."""
    started = time.perf_counter()
    logits, dogs = [], []
    for start in range(0, len(pixels), batch):
        breed, dog = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels.batch(start, start + batch)})
        logits.append(breed)
        dogs.append(dog)
    logits = np.concatenate(logits)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return Scores(
        top1=float((top5[:, 0] == targets).mean()),
        top5=float((top5 == targets[:, None]).any(axis=1).mean()),
        dog_probabilities=np.concatenate(dogs),
        top1_labels=top5[:, 0],
        seconds=time.perf_counter() - started,
    )


def compare(fp32: Scores, int8: Scores, dog_threshold: float) -> dict:
    """The int8 figures beside fp32 (is_dog as the model's own dog threshold decides it), and whether int8
    may be the default runtime."""
    dog_fp32 = fp32.dog_probabilities >= dog_threshold
    dog_int8 = int8.dog_probabilities >= dog_threshold
    figures = {
        "top1": round(int8.top1, 4),
        "top5": round(int8.top5, 4),
        "top1_drop_points": round(100 * (fp32.top1 - int8.top1), 2),
        "answers_changed": int((fp32.top1_labels != int8.top1_labels).sum()),
        "dog_photos_lost": int((dog_fp32 & ~dog_int8).sum()),  # is_dog true with fp32, false with int8
        "dog_photos_below_threshold": int((~dog_int8).sum()),
        "max_dog_probability_change": round(
            float(np.abs(fp32.dog_probabilities - int8.dog_probabilities).max()), 4
        ),
        "seconds": round(int8.seconds, 1),
    }
    figures["qualifies"] = qualifies(figures)
    return figures


def qualifies(figures: dict) -> bool:
    """int8 replaces fp32 as the default only within 0.3 points of top-1, every valid dog still a dog."""
    return (
        figures["top1_drop_points"] <= MAX_TOP1_DROP_POINTS
        and figures["dog_photos_lost"] <= MAX_DOG_PHOTOS_LOST
    )


def valid_split(model_dir: Path, valid_root: Path) -> tuple[list[Path], np.ndarray]:
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    by_label = {label: index for index, label in enumerate(labels)}
    split = read_image_folder(valid_root)
    targets = np.array([by_label[label_from_folder(split.folders[t])] for t in split.targets])
    return list(split.paths), targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/dogs")
    parser.add_argument(
        "--variant", action="append", choices=sorted(VARIANTS), help=f"repeatable; default {DEFAULT_VARIANT}"
    )
    parser.add_argument("--valid-every", type=int, default=1, help="every Nth valid image only (screening)")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    if not (args.model_dir / ONNX_FILE).exists():
        parser.error(
            f"{args.model_dir / ONNX_FILE} is missing: "
            f"run python -m training.export --model-dir {args.model_dir}"
        )
    return args


def fp32_report(fp32, valid, calibration, valid_every: int, dog_threshold: float) -> dict:
    """The record's figures of the fp32 graph it is measured against. The int8 figures that follow hold for
    this CPU's int8 kernels (classifier/cpu.py), and for others only as each variant's holds_on says."""
    return {
        "valid_images": len(valid),
        "valid_every": valid_every,
        "calibration_images": len(calibration),
        "dog_threshold": round(dog_threshold, 4),
        "fp32": {
            "top1": round(fp32.top1, 4),
            "top5": round(fp32.top5, 4),
            "dog_photos_below_threshold": int((fp32.dog_probabilities < dog_threshold).sum()),
            "seconds": round(fp32.seconds, 1),
        },
    }


def main(argv: list[str] | None = None) -> None:
    from classifier.runtime import cpu_session

    args = parse_args(argv)
    configure_cli_logging()
    variants = [VARIANTS[name] for name in args.variant or [DEFAULT_VARIANT]]
    fp32_path = args.model_dir / ONNX_FILE
    config = json.loads((args.model_dir / CONFIG_FILE).read_text())
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    # The dog probabilities are the calibrated ones the endpoint answers: so is the threshold they meet.
    dog_threshold = config.get("calibration", {}).get("dog_threshold", DOG_THRESHOLD)

    cpu = this_cpu()
    started = time.perf_counter()
    calibration = SplitPixels(calibration_paths(args.data / "train", args.calibration_images), preprocessing)
    paths, targets = valid_split(args.model_dir, args.data / "valid")
    paths, targets = paths[:: args.valid_every], targets[:: args.valid_every]
    valid = SplitPixels(paths, preprocessing)
    log.info(
        "decoded %d calibration and %d valid images in %.0fs",
        len(calibration),
        len(valid),
        time.perf_counter() - started,
    )
    fp32 = score(cpu_session(fp32_path, args.threads), valid, targets)
    log.info("fp32: top1 %.4f top5 %.4f (%.0fs)", fp32.top1, fp32.top5, fp32.seconds)
    report = {
        **fp32_report(fp32, valid, calibration, args.valid_every, dog_threshold),
        "cpu": cpu,
        "int8": {},
    }
    digest = source_digest(args.model_dir)
    for index, variant in enumerate(variants):
        out = args.model_dir / (ONNX_INT8_FILE if index == 0 else f"model-int8-{variant.name}.onnx")
        began = time.perf_counter()
        quantize(fp32_path, out, calibration, variant)
        stamp_graph(out, DIGEST_KEY, digest)
        built = time.perf_counter() - began
        figures = compare(fp32, score(cpu_session(out, args.threads), valid, targets), dog_threshold)
        figures["build_seconds"] = round(built, 1)
        figures["holds_on"] = holds_on(cpu["class"], variant.saturation_free)
        report["int8"][variant.name] = figures
        log.info("%s: %s", variant.name, figures)
        if index:
            out.unlink()
    report["variant"] = variants[0].name
    # Only figures on the whole valid split can make int8 the default.
    report["default"] = report["int8"][variants[0].name]["qualifies"] and args.valid_every == 1
    report["source_digest"] = digest
    # The CPU classes where the default's figures hold; the endpoint serves fp32 on any other.
    report["holds_on"] = report["int8"][variants[0].name]["holds_on"]
    (args.model_dir / QUANTIZATION_FILE).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
