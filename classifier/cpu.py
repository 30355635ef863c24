"""The CPU features that decide how ONNX Runtime computes an int8 graph, and the class of CPU they make.

On x86 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with an instruction that
adds pairs of products into 16 bits and saturates (VPMADDUBSW), so a graph whose weights use the whole int8
range can answer differently there than on a CPU with VNNI or AMX, whose dot products add up in 32 bits.
Weights quantized to 7 bits (reduce_range) or as uint8 (U8U8, whose kernels widen before they multiply)
cannot saturate: their figures hold on both classes. training.quantize records the class it measured on
(quantization-valid.json); classifier.runtime serves int8 only on a class the record holds for.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags (as Linux names them in /proc/cpuinfo) that pick ONNX Runtime's int8 kernels on x86.
INT8_FEATURES = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")
EXACT_INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")

X86_VNNI = "x86-vnni"  # int8 products add up in 32 bits
X86_NO_VNNI = "x86-no-vnni"  # U8S8 pairs add up in 16 bits and may saturate
OTHER = "other"  # not x86 (Arm's kernels differ again): int8 holds there only where measured there
CPU_CLASSES = (X86_VNNI, X86_NO_VNNI, OTHER)
# Where a graph that cannot saturate gives the figures measured on either x86 class.
SATURATION_FREE_CLASSES = (X86_VNNI, X86_NO_VNNI)


def _cpuinfo_field(cpuinfo: str, name: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_features(cpuinfo: str) -> list[str]:
    """The INT8_FEATURES among the first processor's flags in `cpuinfo` (/proc/cpuinfo's text)."""
    flags = set(_cpuinfo_field(cpuinfo, "flags").split())
    return [feature for feature in INT8_FEATURES if feature in flags]


def cpu_class(features: list[str], machine: str) -> str:
    """X86_VNNI, X86_NO_VNNI or OTHER for a CPU with `features` (cpu_features) and `machine` (uname -m)."""
    if machine.lower() not in ("x86_64", "amd64", "i686", "i386"):
        return OTHER
    return X86_VNNI if set(features) & set(EXACT_INT8_FEATURES) else X86_NO_VNNI


def this_cpu() -> dict:
    """This machine's CPU: {"model": name, "features": int8 features, "class": cpu_class}."""
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:  # not Linux: no flags to read, so the cautious class
        cpuinfo = ""
    features = cpu_features(cpuinfo)
    return {
        "model": _cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine(),
        "features": features,
        "class": cpu_class(features, platform.machine()),
    }


def holds_on(measured_class: str, saturation_free: bool) -> list[str]:
    """The CPU classes an int8 graph's figures, measured on a CPU of `measured_class`, hold for."""
    if saturation_free and measured_class in SATURATION_FREE_CLASSES:
        return list(SATURATION_FREE_CLASSES)
    return [measured_class]
