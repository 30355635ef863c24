"""Peak memory of preparing one photo in the Lambda, per accepted format, at the API's pixel cap.

    .venv/bin/python -m bench.decode_memory [--before DIR] [--cases png-rgba,jpeg] [--pixels N]

Every case is a picture of as many pixels as the API accepts for its format (a square under that cap), made
once into a temporary directory. Each measurement runs in a fresh Python process that imports chalicelib,
reads the file and reports its peak resident set (VmHWM in /proc/self/status) before and after
`prepare_image`: the first is the baseline (interpreter, Pillow, the file's bytes), the difference is what
preparing the picture costs. VmHWM is the process's own since its exec, unlike getrusage's ru_maxrss, which
Linux carries over from the parent: a measurement started from a large process (a test run) reads as one
started from a small one. `--before DIR` measures a second checkout (say, `git worktree add /tmp/before
HEAD~3`) in the same run, case by case in alternation, and prints the ratio. The figures are compared with the
Lambda's memory size and with PEAK_BOUND_MB, which tests/test_decode_memory.py holds every case to.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
LAMBDA_MEMORY_MB = 1024  # the dev stage's api_handler (.chalice/config.json); prod has more
# The most preparing one accepted picture may peak at: a third of the Lambda's memory leaves the rest for the
# runtime, its clients and the answer, whatever the format.
PEAK_BOUND_MB = LAMBDA_MEMORY_MB // 3
MIB = 1024 * 1024


def _gradient(mode: str, size: tuple[int, int]):
    """A smooth picture with some detail: compresses well, as a bomb would, but is not a flat colour."""
    from PIL import Image, ImageDraw

    ramp = Image.linear_gradient("L").resize(size)
    other = Image.radial_gradient("L").resize(size)
    image = Image.merge("RGB", (ramp, other, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(image)
    for step in range(0, min(size), max(1, min(size) // 40)):
        draw.line((0, step, size[0], size[1] - step), fill=(step % 256, 40, 200), width=3)
    if mode == "RGBA":
        image.putalpha(other)
    elif mode == "LA":
        image = image.convert("L")
        image.putalpha(other)
    elif mode in ("P", "PT"):
        image = image.quantize(64, method=Image.Quantize.FASTOCTREE)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def _saved(image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _png_16bit(size: tuple[int, int], channels: int) -> bytes:
    """A 16-bit-per-sample PNG (colour type 2 or 6), written by hand: Pillow only writes 8-bit colour PNGs."""
    width, height = size
    colour_type = {3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(6)
    parts = []
    for y in range(height):
        level = (y * 65535 // max(1, height - 1)).to_bytes(2, "big")
        row = b"\x00" + (level * channels) * width
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def _heic(size: tuple[int, int]) -> bytes:
    """A HEIC as a phone writes it, through libheif's x265 encoder (pillow-heif; the Lambda's pi-heif only
    decodes), at its fastest preset: the file is the case, not how well it is compressed."""
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(_gradient("RGB", size)).save(
        buffer, format="HEIF", quality=80, enc_params={"preset": "ultrafast"}
    )
    return buffer.getvalue()


def _avif(size: tuple[int, int], mode: str = "RGB") -> bytes:
    return _saved(_gradient(mode, size), "AVIF", quality=70, speed=10)


def _hidden(make: Callable[[tuple[int, int]], bytes]) -> Callable[[tuple[int, int]], bytes]:
    """The picture `make` codes, behind a header (every `ispe` box) that shows 400 x 400: libheif and libavif
    would decode the whole coded picture and only then crop or scale it."""

    def hidden(size: tuple[int, int]) -> bytes:
        data = bytearray(make(size))
        found = data.find(b"ispe")
        while found >= 0:
            struct.pack_into(">II", data, found + 8, 400, 400)  # after the box's version and flags
            found = data.find(b"ispe", found + 4)
        return bytes(data)

    return hidden


def _palette_with_transparency(size):
    image = _gradient("P", size)
    return _saved(image, "PNG", transparency=0)


CASES: dict[str, tuple[str, Callable[[tuple[int, int]], bytes]]] = {
    "jpeg": ("JPEG", lambda size: _saved(_gradient("RGB", size), "JPEG", quality=90)),
    "jpeg-progressive": (
        "JPEG",
        lambda size: _saved(_gradient("RGB", size), "JPEG", quality=90, progressive=True),
    ),
    "jpeg-cmyk": ("JPEG", lambda size: _saved(_gradient("CMYK", size), "JPEG", quality=90)),
    "png-rgb": ("PNG", lambda size: _saved(_gradient("RGB", size), "PNG")),
    "png-rgba": ("PNG", lambda size: _saved(_gradient("RGBA", size), "PNG")),
    "png-la": ("PNG", lambda size: _saved(_gradient("LA", size), "PNG")),
    "png-grey": ("PNG", lambda size: _saved(_gradient("L", size), "PNG")),
    "png-16bit-grey": ("PNG", lambda size: _saved(_gradient("L", size).convert("I;16"), "PNG")),
    "png-16bit-rgb": ("PNG", lambda size: _png_16bit(size, 3)),
    "png-16bit-rgba": ("PNG", lambda size: _png_16bit(size, 4)),
    "png-palette": ("PNG", lambda size: _saved(_gradient("P", size), "PNG")),
    "png-palette-transparent": ("PNG", _palette_with_transparency),
    "png-1bit": ("PNG", lambda size: _saved(_gradient("1", size), "PNG")),
    "webp": ("WEBP", lambda size: _saved(_gradient("RGB", size), "WEBP", quality=80, method=0)),
    "webp-alpha": ("WEBP", lambda size: _saved(_gradient("RGBA", size), "WEBP", quality=80, method=0)),
    "gif": ("GIF", lambda size: _saved(_gradient("P", size), "GIF")),
    "heic": ("HEIF", _heic),
    "avif": ("AVIF", _avif),
    "avif-alpha": ("AVIF", lambda size: _avif(size, "RGBA")),
    # Refused before decoding (chalicelib/coded_size.py): what the refusal costs.
    "heic-hidden": ("HEIF", _hidden(_heic)),
    "avif-hidden": ("AVIF", _hidden(_avif)),
}


def peak_rss_kb() -> int:
    """This process's peak resident set since its exec, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _measure(root: Path, path: Path) -> dict:
    """Run in the child: the peak RSS before and after preparing the file with `root`'s chalicelib."""
    sys.path.insert(0, str(root))
    from chalicelib import settings
    from chalicelib.image import prepare_image

    data = path.read_bytes()
    baseline = peak_rss_kb()
    started = time.perf_counter()
    error = None
    try:
        prepared = prepare_image(
            data,
            # What a stage serving root's default model resizes to (its MODEL_RESIZE_SIZE).
            resize_size=json.loads((root / "models" / "default" / "config.json").read_text())[
                "preprocessing"
            ]["resize_size"],
            max_pixels=settings.MAX_PIXELS,
            quality=settings.JPEG_QUALITY,
        )
        sent = len(prepared.jpeg)
    except Exception as exception:  # noqa: BLE001 - a refusal is a result here
        error, sent = f"{type(exception).__name__}: {exception}", 0
    seconds = time.perf_counter() - started
    peak = peak_rss_kb()
    return {"baseline_kb": baseline, "peak_kb": peak, "seconds": seconds, "sent": sent, "error": error}


def make_case(name: str, side: int, path: Path) -> None:
    """Write case `name` as a `side` x `side` picture to `path`, in a child process, which gives back the
    memory making it took."""
    subprocess.run([sys.executable, __file__, "--make", name, str(side), str(path)], check=True)


def measure_in_child(root: Path, path: Path) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", str(path), "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(output.stdout)


def pixel_cap(root: Path, format: str) -> int:
    """The pixel cap `root`'s chalicelib applies to `format` (its per-format table, if it has one)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); from chalicelib import settings; "
        "caps = getattr(settings, 'MAX_PIXELS_BY_FORMAT', {}); "
        "print(json.dumps(caps.get(sys.argv[2], settings.MAX_PIXELS)))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, str(root), format], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout)


def measure_case(name: str, path: Path, side: int, roots: dict[str, Path], case: dict) -> tuple[str, list]:
    """Measure one case's file in each checkout; fills `case` and returns the printed line and table row."""
    line = f"{name:<24} {side * side:>11,} {path.stat().st_size / MIB:>8.2f}"
    row = [name, f"{side * side:,}", f"{path.stat().st_size / MIB:.2f}"]
    adds = {}
    for label, root in roots.items():
        result = measure_in_child(root, path)
        peak_mb = result["peak_kb"] / 1024
        adds[label] = (result["peak_kb"] - result["baseline_kb"]) / 1024
        case[label] = {"peak_mb": peak_mb, "adds_mb": adds[label], **result}
        line += f" | {peak_mb:>15.0f} {adds[label]:>8.0f} {result['seconds']:>5.1f}"
        row += [f"{peak_mb:.0f}", f"{adds[label]:.0f}", f"{result['seconds']:.1f}"]
        if result["error"]:
            line += f" ({result['error'][:60]})"
            row[-3] += f" ({result['error'][:60]})"
        if peak_mb > PEAK_BOUND_MB:
            line += " (over the bound)"
    if len(roots) == 2:
        line += f" | {max(adds['after'], 1) / max(adds['before'], 1):>12.2f}"
        row.append(f"{max(adds['after'], 1) / max(adds['before'], 1):.2f}")
    return line, row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to measure alongside this one")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--pixels", type=int, default=0, help="override the pixel cap (0: the API's own)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make", nargs=3, metavar=("CASE", "SIDE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=PROJECT, help=argparse.SUPPRESS)
    parser.add_argument(
        "--results-dir", type=Path, help="where the JSON result goes (default: bench/results/)"
    )
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(args.root, args.measure)))
        return
    if args.make:
        name, side, path = args.make
        Path(path).write_bytes(CASES[name][1]((int(side), int(side))))
        return
    # Imported here: the children run this file as a script, where the bench package is not importable.
    from bench import results

    run = results.start("bench.decode_memory", "decode_memory", args.results_dir or results.RESULTS_DIR)

    roots = {"after": PROJECT}
    if args.before:
        roots = {"before": args.before.resolve(), **roots}
    names = [name for name in args.cases.split(",") if name]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")

    print(
        f"peak RSS of prepare_image per format, fresh process per case; Lambda memory {LAMBDA_MEMORY_MB} MB, "
        f"bound {PEAK_BOUND_MB} MB"
    )
    header = f"{'case':<24} {'pixels':>11} {'file MB':>8}"
    for label in roots:
        header += f" | {label + ' peak MB':>15} {'adds MB':>8} {'s':>5}"
    if len(roots) == 2:
        header += f" | {'after/before':>12}"
    print(header)
    figures, rows = {"lambda_memory_mb": LAMBDA_MEMORY_MB, "cases": {}}, []
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as directory:
        for name in names:
            format = CASES[name][0]
            # The largest square the stricter of the two checkouts accepts, so both decode the same file.
            cap = args.pixels or min(pixel_cap(root, format) for root in roots.values())
            side = math.isqrt(cap)
            path = Path(directory) / name
            make_case(name, side, path)
            case = figures["cases"][name] = {"pixels": side * side, "file_bytes": path.stat().st_size}
            line, row = measure_case(name, path, side, roots, case)
            print(line, flush=True)
            rows.append(row)
            path.unlink()
    columns = ["case", "pixels", "file MB"]
    for label in roots:
        columns += [f"{label} peak MB", "adds MB", "s"]
    if len(roots) == 2:
        columns.append("after/before")
    title = f"peak RSS of prepare_image, fresh process per case; Lambda memory {LAMBDA_MEMORY_MB} MB"
    run.finish(figures, [results.table(title, columns, rows)])


if __name__ == "__main__":
    main()
