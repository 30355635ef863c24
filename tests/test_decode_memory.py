"""Preparing the largest picture the API accepts, in each format, in a fresh process, peaks under the bound of
bench/decode_memory.py (the same cases, made and measured the same way)."""

from __future__ import annotations

import math

import pytest
from conftest import PROJECT

from bench import decode_memory
from chalicelib.settings import MAX_PIXELS, MAX_PIXELS_BY_FORMAT

# The formats whose bounds a change is likeliest to break, in `make test`: a transparent PNG (converted in
# strips) and a WebP with alpha (the most memory per pixel, hence its own pixel cap). The rest are slow.
EVERY_RUN = ("png-rgba", "webp-alpha")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(name, marks=[] if name in EVERY_RUN else [pytest.mark.slow])
        for name in decode_memory.CASES
    ],
)
def test_the_largest_accepted_picture_of_each_format_is_prepared_under_the_bound(case, tmp_path):
    format = decode_memory.CASES[case][0]
    side = math.isqrt(min(MAX_PIXELS, MAX_PIXELS_BY_FORMAT.get(format, MAX_PIXELS)))
    path = tmp_path / case
    decode_memory.make_case(case, side, path)

    result = decode_memory.measure_in_child(PROJECT, path)

    assert result["error"] is None
    assert result["sent"] > 0
    peak_mb = result["peak_kb"] / 1024
    assert peak_mb <= decode_memory.PEAK_BOUND_MB, f"{case}: {peak_mb:.0f} MB"
