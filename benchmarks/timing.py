"""Timing and memory helpers shared by the benchmarks (minimum over repeats, RSS)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["maxrss_bytes", "rss_bytes", "timeit"]


def timeit(fn: Callable[[], Any], *, repeat: int, warmup: int = 1) -> dict[str, float]:
    """``fn()`` after ``warmup`` calls, ``repeat`` times: min / median wall time, CPU time."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times, cpu = [], []
    for _ in range(repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "min_s": min(times),
        "median_s": statistics.median(times),
        "cpu_s_of_min": cpu[times.index(min(times))],
        "repeat": repeat,
    }


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
