"""The timing rule every benchmark here uses: warm-up calls, then the median."""

from __future__ import annotations

import time
from collections.abc import Callable


def call_seconds(function: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall times of ``repeats`` calls of ``function`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``repeats`` calls of ``function`` after ``warmup`` calls."""
    times = call_seconds(function, repeats, warmup)
    return sorted(times)[len(times) // 2]
