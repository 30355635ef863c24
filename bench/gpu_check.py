"""The handlers on a CUDA device once, against the CPU: per-image latency of the whole handler chain.

    python -m bench.gpu_check [--model-dir models/default] [--runs 20]

Needs a CUDA build of torch (the project's pin is the CPU build: on the GPU machine install the CUDA wheel
of the same version) and, for ONNX Runtime on the GPU, onnxruntime-gpu instead of onnxruntime. It loads the
model the way model_fn does on that machine (classifier.runtime.choose_device picks ONNX Runtime's CUDA
provider
when onnxruntime-gpu is there, else PyTorch on CUDA), checks that its answers match the CPU's, then times
input_fn -> predict_fn -> output_fn on the sample photos one image at a time, and a batch of 8 through the
model alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench import results
from classifier import runtime
from serving import contract, inference

PROJECT = Path(__file__).resolve().parents[1]

SAMPLES = PROJECT.parent / "shared" / "data" / "samples"


def handler_ms(predictor, photos: list[bytes], runs: int) -> float:
    """Median milliseconds per image through the handler chain, one request at a time."""
    timings = []
    for index in range(runs):
        body = photos[index % len(photos)]
        started = time.perf_counter()
        data = inference.input_fn(body, contract.JPEG)
        inference.output_fn(inference.predict_fn(data, predictor), contract.JSON)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def model_ms_per_image(predictor, batch: int, runs: int) -> float:
    size = predictor.preprocessing.image_size
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    predictor.predict(images)
    started = time.perf_counter()
    for _ in range(runs):
        predictor.predict(images)
    return (time.perf_counter() - started) * 1000 / (runs * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=PROJECT / "models" / "default")
    parser.add_argument("--runs", type=int, default=20)
    results.add_argument(parser)
    args = parser.parse_args()
    run = results.start(
        __spec__.name, f"gpu_check-{args.model_dir.resolve().name}", args.results_dir, [args.model_dir]
    )
    device = runtime.available_device()
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, chosen: {device}")
    if device.name != "cuda":
        raise SystemExit("no CUDA device that torch can use: install torch's CUDA build on a GPU machine")
    print(f"GPU: {torch.cuda.get_device_name(0)}; CPUs: {len(os.sched_getaffinity(0))}")
    photos = [path.read_bytes() for path in sorted(SAMPLES.glob("*.jpg"))]

    gpu = inference.load_predictor(args.model_dir, runtime="auto", device=device)
    cpu = inference.load_predictor(args.model_dir, runtime="auto", device=runtime.choose_device([], False))
    print(f"GPU runner: {gpu.runtime} on {gpu.device}; CPU runner: {cpu.runtime} on {cpu.device}")
    for body in photos:
        on_gpu = inference.predict_fn(inference.input_fn(body, contract.JPEG), gpu)
        on_cpu = inference.predict_fn(inference.input_fn(body, contract.JPEG), cpu)
        assert on_gpu["predictions"][0]["label"] == on_cpu["predictions"][0]["label"], (on_gpu, on_cpu)
        assert abs(on_gpu["dog_probability"] - on_cpu["dog_probability"]) < 1e-3, (on_gpu, on_cpu)
    print("answers agree (top-1 label, dog probability within 1e-3)")

    handler_ms(gpu, photos, 3)  # CUDA context, cuDNN autotuning
    figures = {
        "handler chain, 1 image (ms)": (
            handler_ms(cpu, photos, args.runs),
            handler_ms(gpu, photos, args.runs),
        ),
        "model only, batch 1 (ms/image)": (
            model_ms_per_image(cpu, 1, args.runs),
            model_ms_per_image(gpu, 1, args.runs),
        ),
        "model only, batch 8 (ms/image)": (
            model_ms_per_image(cpu, 8, 5),
            model_ms_per_image(gpu, 8, args.runs),
        ),
    }
    print(f"\n{args.model_dir}: median over {args.runs} runs")
    print(f"  {'':34s} {'CPU':>9s} {'GPU':>9s} {'GPU speed-up':>13s}")
    rows = []
    for name, (on_cpu, on_gpu) in figures.items():
        print(f"  {name:34s} {on_cpu:9.1f} {on_gpu:9.1f} {on_cpu / on_gpu:12.1f}x")
        rows.append([name, f"{on_cpu:.1f}", f"{on_gpu:.1f}", f"{on_cpu / on_gpu:.1f}x"])
    card = torch.cuda.get_device_name(0)
    table = results.table(
        f"{card}: median over {args.runs} runs; GPU runner {gpu.runtime}, CPU runner {cpu.runtime}",
        ["", "CPU", "GPU", "GPU speed-up"],
        rows,
    )
    figures = {name: {"cpu": on_cpu, "gpu": on_gpu} for name, (on_cpu, on_gpu) in figures.items()}
    figures.update(gpu=card, gpu_runtime=gpu.runtime, cpu_runtime=cpu.runtime, runs=args.runs)
    run.finish(figures, [table], runtime=gpu.runtime, device=f"{gpu.device} ({card})")


if __name__ == "__main__":
    main()
