"""Peak memory of preparing one image on the endpoint, for the shapes an outside probe sent, before and after.

    .venv/bin/python -m bench.image_memory [--model-dir models/default] [--cap-gb 3]

Each case runs in a fresh process, which reports how far its peak resident memory (ru_maxrss) rose above
what it held once the image bytes were read. Modes:
- before: decode (compositing transparency on white with alpha_composite), then scale the whole picture so its
  shorter side is the resize size, then take the centre square: the preprocessing as it was, with no check of
  the image's shape;
- preprocessing: decode, then classifier.preprocessing as it is now (only the crop is resized), with no check;
- endpoint: the real handlers, input_fn then the model's preprocessing, as a request runs them.
A case that would need more than --cap-gb of address space more is stopped there (RLIMIT_AS) and shown so.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from bench import results

PROJECT = Path(__file__).resolve().parents[1]

SAMPLE = PROJECT.parent / "shared" / "data" / "samples" / "Labrador_retriever_06455.jpg"
DEFAULT_MODEL = PROJECT / "models" / "default"
MODES = ("before", "preprocessing", "endpoint")
# The probe's shapes: tiny PNGs of extreme dimensions, a legal 10 MP strip, a large RGBA square, and a photo.
CASES = {
    "8000x2 PNG": ("L", (8000, 2)),
    "65000x1 PNG": ("L", (65000, 1)),
    "40000x260 PNG": ("RGB", (40000, 260)),
    "6320x6320 RGBA PNG": ("RGBA", (6320, 6320)),
    "sample photo": None,
}


def write_cases(folder: Path) -> dict[str, Path]:
    paths = {}
    for index, (name, shape) in enumerate(CASES.items()):
        path = folder / f"case{index}"
        if shape is None:
            path.write_bytes(SAMPLE.read_bytes())
        else:
            mode, size = shape
            # Memory follows the pixels, not the bytes: a flat colour keeps the files small and quick to make.
            Image.new(mode, size, 128).save(path, format="PNG")
        paths[name] = path
    return paths


def open_image_before(data: bytes) -> Image.Image:
    """classifier.preprocessing.open_image before this change, kept here as the baseline."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_then_crop(image: Image.Image, image_size: int, resize_size: int) -> Image.Image:
    """The preprocessing before this change, kept here as the baseline."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resize_size / min(width, height)
    resized = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = (resized[0] - image_size) // 2
    top = (resized[1] - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def child(mode: str, path: Path, model_dir: Path, cap_bytes: int) -> dict:
    """Runs in its own process: one case in one mode; what happened and the peak memory it took."""
    from classifier.model import read_config
    from classifier.preprocessing import Preprocessing, open_image
    from serving import contract, inference

    config, _, _ = read_config(model_dir)
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    data = path.read_bytes()
    # On top of what the process has mapped already (torch alone maps gigabytes it never touches).
    limit = _mapped_bytes() + cap_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        if mode == "before":
            image = open_image_before(data)
            preprocessing.to_array(
                resize_then_crop(image, preprocessing.image_size, preprocessing.resize_size)
            )
        elif mode == "preprocessing":
            preprocessing(open_image(data))
        else:
            for image in inference.input_fn(data, contract.PNG).images:
                preprocessing(image)
        outcome = "prepared"
    except inference.RequestError as error:
        outcome = f"refused {int(error.status_code)}"
    except MemoryError:
        outcome = "out of memory"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"outcome": outcome, "peak_mb": (peak - baseline) / 1024, "seconds": time.perf_counter() - started}


def _mapped_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run_case(mode: str, path: Path, model_dir: Path, cap_gb: float) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.image_memory",
            "--child",
            mode,
            str(path),
            "--model-dir",
            str(model_dir),
            "--cap-gb",
            str(cap_gb),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        return {"outcome": f"crashed ({result.returncode})", "peak_mb": float("nan"), "seconds": float("nan")}
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--cap-gb", type=float, default=3.0, help="address space each case may use")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    results.add_argument(parser)
    args = parser.parse_args()
    cap_bytes = int(args.cap_gb * 1024**3)
    if args.child:
        mode, path = args.child
        print(json.dumps(child(mode, Path(path), args.model_dir, cap_bytes)))
        return

    run = results.start(
        __spec__.name, f"image_memory-{args.model_dir.resolve().name}", args.results_dir, [args.model_dir]
    )
    print(f"model: {args.model_dir}; each case capped at {args.cap_gb:g} GB of address space")
    print(f"{'case':<20} " + " ".join(f"{mode:>28}" for mode in MODES))
    figures, rows = {"cap_gb": args.cap_gb, "cases": {}}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, path in write_cases(Path(folder)).items():
            cells = []
            figures["cases"][name] = {}
            for mode in MODES:
                result = run_case(mode, path, args.model_dir, args.cap_gb)
                figures["cases"][name][mode] = {
                    key: None if value != value else value
                    for key, value in result.items()  # NaN: crashed
                }
                cells.append(f"{result['outcome']} {result['peak_mb']:7.1f} MB {result['seconds']:5.2f} s")
            print(f"{name:<20} " + " ".join(f"{cell:>28}" for cell in cells))
            rows.append([name, *(" ".join(cell.split()) for cell in cells)])
    table = results.table(
        f"peak memory above the image's bytes, each case capped at {args.cap_gb:g} GB", ["case", *MODES], rows
    )
    run.finish(figures, [table], device="cpu")


if __name__ == "__main__":
    main()
