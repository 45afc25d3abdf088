"""The timing loop and statistics, with no dependency beyond the standard library.

The official SDK's side of the TensorData benchmark imports this very file inside the SDK's own
virtualenv, so both sides are measured by the same code.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["MIN_RUN_SECONDS", "calibrate", "per_call_seconds", "percentile", "summarize"]

# A run of a very fast operation repeats it until it lasts this long, so the clock's resolution
# and the loop's own overhead stay far below what is measured.
MIN_RUN_SECONDS = 0.02


def calibrate(fn: Callable[[], Any], min_seconds: float = MIN_RUN_SECONDS) -> int:
    """How many calls of ``fn`` make one run last at least ``min_seconds`` (1 for slow ones)."""
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    if single >= min_seconds:
        return 1
    return max(1, math.ceil(min_seconds / max(single, 1e-9)))


def per_call_seconds(fn: Callable[[], Any], number: int) -> float:
    """One run: ``number`` calls of ``fn``; returns seconds per call."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min, max (and the raw runs) of one variant's measurements."""
    if not values:
        raise ValueError("summarize of no values")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "runs": list(values),
    }
