"""Timing and memory helpers shared by the benchmarks (minimum over repeats, RSS, children)."""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["maxrss_bytes", "rss_bytes", "run_child", "timeit"]

ROOT = Path(__file__).resolve().parents[1]


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


_LAUNCHER = r"""
import resource, subprocess, sys
out, *cmd = sys.argv[1:]
code = subprocess.call(cmd)
with open(out, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_child(cmd: list[str], timeout: float, *, show_stderr: bool = False) -> dict[str, Any]:
    """Run ``cmd`` in a fresh interpreter; its own peak RSS and wall time.

    The child runs in the repository root with it on ``PYTHONPATH`` and
    ``OPENBLAS_NUM_THREADS=1`` unless set. ``show_stderr`` passes its stderr (progress
    bars) through; otherwise the last line is kept as ``error`` when it fails.

    The peak RSS is the child's ``ru_maxrss`` as seen by a small launcher process that
    starts it: a child started straight from this process (``vfork`` + ``exec``) would
    inherit this process's own peak as a floor of its ``ru_maxrss`` (Linux records the
    old memory's peak at ``exec``), e.g. after a benchmark wrote gigabytes of inputs.

    Returns:
      ``{"wall_s", "cpu_s", "peak_rss_bytes", "exit_code"}`` (+ ``"error"``), or
      ``{"error": "timed out ..."}``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    with tempfile.TemporaryFile() as err_file, tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(rss_file), *cmd],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=None if show_stderr else err_file,
            start_new_session=True,  # a timeout kills the launcher and the child
        )
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                return {"error": f"timed out after {timeout:.0f} s"}
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
        maxrss_kib = int(rss_file.read_text()) if rss_file.is_file() else usage.ru_maxrss
    code = os.waitstatus_to_exitcode(status)
    out = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": maxrss_kib * 1024,  # Linux: kilobytes
        "exit_code": code,
    }
    if code != 0:
        out["error"] = err.strip().splitlines()[-1:] or ["failed (see the output above)"]
    return out
