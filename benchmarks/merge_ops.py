r"""Speed of every registered merge operator against a memory-bandwidth probe.

Run ``python -m benchmarks.merge_ops`` (``--dim 1000000`` for a smaller run, ``--ops ties,rht``
to pick operators). For ``n = 8`` experts of ``D = 1e7`` float32 entries (one ``[n, D]``
leaf) it times, in one process:

* the **probe**: NumPy ``X.sum(0)`` over the same ``[n, D]`` array (one read of the data;
  the unit of docs/width_engine.md);
* every operator of :data:`mergetheory.merge.MERGE_OPERATORS` (zoo operators included
  automatically), jitted, warm, with its registry ``default_hparams``;
* a NumPy reference TIES (``np.partition`` top-k, the fastest exact CPU selection in the
  stack) for context.

Timings are taken round-robin (probe, operator, probe, operator, ...) because this machine
is shared: the ratio reported is ``min(operator) / min(probe)``, and the median over rounds
of the per-round ratio is recorded too, with absolute times (min, median), compile time and
the load average before and after. Results go atomically (temp file + ``os.replace``) to
``benchmarks/results/merge_ops.json``.

Layout per operator: an operator whose output does not change when a matrix leaf is
flattened (all elementwise / per-tensor-flat operators) runs on the ``[n, D]`` leaf; one
that depends on the matrix shape (SVD-based, per-row) runs on one ``[n, s, s]`` leaf with
``s = floor(sqrt(D))`` (``[8, 3162, 3162]`` at ``D = 1e7``), noted in the results. An
operator needing inputs this script cannot supply (``needs`` other than
``base_accuracy`` / ``base``) is skipped with the reason recorded, and so is one whose
time per call, projected from a pilot run at 1/16 of the size (``D / 16`` entries, or a
``[n, s/4, s/4]`` leaf scaled by the cubic cost of dense SVDs), exceeds ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "merge_ops.json"


def _machine_info() -> dict[str, Any]:
    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _round_robin(probe: Callable[[], Any], fn: Callable[[], Any], *, repeat: int) -> dict[str, Any]:
    """Time ``probe`` and ``fn`` alternately; both are already warm."""
    import jax

    probe_t, fn_t = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        probe()
        probe_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        fn_t.append(time.perf_counter() - t0)
    ratios = [f / p for f, p in zip(fn_t, probe_t, strict=True)]
    return {
        "min_s": min(fn_t),
        "median_s": statistics.median(fn_t),
        "probe_min_s": min(probe_t),
        "probe_median_s": statistics.median(probe_t),
        "ratio_of_minima": min(fn_t) / min(probe_t),
        "median_paired_ratio": statistics.median(ratios),
        "repeat": repeat,
    }


def _numpy_ties(x: np.ndarray, density: float) -> np.ndarray:
    """Reference TIES in NumPy (PEFT semantics, ``np.partition`` for the top-k)."""
    n, d = x.shape
    k = int(density * d)
    a = np.abs(x)
    thr = np.partition(a, d - k, axis=1)[:, d - k]
    pruned = np.where(a >= thr[:, None], x, np.float32(0))
    sign = np.where(pruned.sum(0) >= 0, np.float32(1), np.float32(-1))
    agree = pruned * sign > 0
    num = np.where(agree, pruned, np.float32(0)).sum(0)
    return num / np.maximum(agree.sum(0), 1)


def _small_layout_probe(op: Any, needs: dict[str, Any], num: int) -> str:
    """``"flat"`` if the operator ignores the matrix shape, ``"matrix"`` otherwise."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    mat = jnp.asarray(rng.standard_normal((num, 48, 40)).astype(np.float32))
    key = jax.random.key(0)
    try:
        out_mat = op.fn({"x": mat}, key, **op.default_hparams, **needs)["x"]
    except Exception:  # noqa: BLE001 - an operator failing on a matrix is recorded below
        out_mat = None
    try:
        out_flat = op.fn({"x": mat.reshape(num, -1)}, key, **op.default_hparams, **needs)["x"]
    except Exception:  # noqa: BLE001
        return "matrix" if out_mat is not None else "unsupported"
    if out_mat is None:
        return "flat"
    same = np.allclose(np.asarray(out_mat).reshape(-1), np.asarray(out_flat), rtol=1e-5, atol=1e-6)
    return "flat" if same else "matrix"


def _needs(op: Any, num: int, leaf_shape: tuple[int, ...]) -> dict[str, Any] | str:
    import jax.numpy as jnp

    out: dict[str, Any] = {}
    for need in op.needs:
        if need == "base_accuracy":
            out[need] = jnp.asarray(np.linspace(0.2, 0.8, num, dtype=np.float32))
        elif need == "base":
            out[need] = {"x": jnp.zeros(leaf_shape, jnp.float32)}
        else:
            return f"needs {need!r}, which this benchmark cannot supply"
    return out


def run(
    dim: int, num: int, repeat: int, ops: list[str] | None, max_seconds: float = 120.0
) -> dict[str, Any]:
    """Benchmark the registry at ``[num, dim]``; return the results dictionary."""
    import jax
    import jax.numpy as jnp

    from mergetheory.merge import MERGE_OPERATORS

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((num, dim), dtype=np.float32)
    side = int(math.isqrt(dim))
    results: dict[str, Any] = {
        "config": {
            "num_experts": num,
            "dim": dim,
            "dtype": "float32",
            "repeat": repeat,
            "max_seconds": max_seconds,
        },
        "machine": _machine_info(),
        "loadavg_before": _loadavg(),
        "probe": "numpy X.sum(0) over the same [n, D] float32 array",
        "operators": {},
    }

    def probe() -> Any:
        return x_np.sum(0)

    for _ in range(3):
        probe()
    x_flat = jnp.asarray(x_np)
    x_mat: jax.Array | None = None
    key = jax.random.key(0)

    names = sorted(MERGE_OPERATORS) if not ops else ops
    for name in names:
        op = MERGE_OPERATORS[name]
        entry: dict[str, Any] = {"hparams": dict(op.default_hparams)}
        needs_small = _needs(op, num, (48, 40))
        if isinstance(needs_small, str):
            entry["skipped"] = needs_small
            results["operators"][name] = entry
            continue
        layout = _small_layout_probe(op, needs_small, num)
        if layout == "unsupported":
            entry["skipped"] = "raises on both a flat and a matrix leaf (small probe)"
            results["operators"][name] = entry
            continue
        if layout == "flat":
            tv = {"x": x_flat}
            entry["leaf_shape"] = [num, dim]
        else:
            if x_mat is None:
                x_mat = jnp.asarray(x_np[:, : side * side].reshape(num, side, side))
            tv = {"x": x_mat}
            entry["leaf_shape"] = [num, side, side]
            entry["note"] = (
                "output depends on the matrix shape: timed on one [n, s, s] leaf, "
                f"s = floor(sqrt(D)) = {side}; the probe still reads the [n, D] array"
            )
        needs = _needs(op, num, tuple(entry["leaf_shape"][1:]))
        hp = dict(op.default_hparams)
        fn = jax.jit(lambda tv, key, needs, op=op, hp=hp: op.fn(tv, key, **hp, **needs))
        try:
            # pilot at 1/16 of the size: skip operators projected beyond the time budget
            if layout == "flat":
                pilot = {"x": x_flat[:, : max(1, dim // 16)]}
                growth = 16.0
            else:
                assert x_mat is not None
                ps = max(2, side // 4)
                pilot = {"x": x_mat[:, :ps, :ps]}
                growth = (side / ps) ** 3  # dense SVD / matmul cost of an s x s matrix
            pilot_needs = _needs(op, num, tuple(pilot["x"].shape[1:]))
            jax.block_until_ready(fn(pilot, key, pilot_needs))
            t0 = time.perf_counter()
            jax.block_until_ready(fn(pilot, key, pilot_needs))
            pilot_s = time.perf_counter() - t0
            projected = pilot_s * growth
            entry["pilot"] = {"leaf_shape": list(pilot["x"].shape), "warm_s": pilot_s}
            entry["projected_s"] = projected
            if projected > max_seconds:
                entry["skipped"] = (
                    f"projected {projected:.0f} s per call (pilot {pilot_s:.3f} s at "
                    f"{list(pilot['x'].shape)}, scaled by {growth:.0f}) exceeds the "
                    f"--max-seconds budget of {max_seconds:.0f} s"
                )
                results["operators"][name] = entry
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(fn(tv, key, needs))
            entry["first_call_incl_compile_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(fn(tv, key, needs))
            warm = time.perf_counter() - t0
            reps = repeat if warm < 5.0 else 1
            call = functools.partial(fn, tv, key, needs)
            entry.update(_round_robin(probe, call, repeat=reps))
        except Exception as exc:  # noqa: BLE001 - record and go on with the other operators
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=3)
        results["operators"][name] = entry

    # NumPy reference TIES (np.partition top-k) at the registry's default density
    density = float(MERGE_OPERATORS["ties"].default_hparams.get("density", 0.2))
    entry = {"hparams": {"density": density}, "leaf_shape": [num, dim]}
    t0 = time.perf_counter()
    _numpy_ties(x_np, density)
    entry["first_call_s"] = time.perf_counter() - t0
    call = functools.partial(_numpy_ties, x_np, density)
    entry.update(_round_robin(probe, call, repeat=max(1, repeat // 2)))
    results["baselines"] = {"numpy_ties_partition": entry}
    results["loadavg_after"] = _loadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=10_000_000, help="entries per expert")
    parser.add_argument("--num-experts", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per operator")
    parser.add_argument("--ops", default="", help="comma-separated registry names (default all)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="skip an operator whose projected time per call exceeds this",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o] or None
    results = run(args.dim, args.num_experts, args.repeat, ops, args.max_seconds)
    from mergetheory.io import atomic_write

    with atomic_write(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    rows = []
    for name, e in results["operators"].items():
        if "ratio_of_minima" in e:
            rows.append(f"{name:26s} {e['min_s']:9.4f} s  {e['ratio_of_minima']:7.1f}x probe")
        else:
            rows.append(f"{name:26s} {e.get('skipped') or e.get('error')}")
    b = results["baselines"]["numpy_ties_partition"]
    name = "(numpy ties, partition)"
    rows.append(f"{name:26s} {b['min_s']:9.4f} s  {b['ratio_of_minima']:7.1f}x probe")
    sys.stdout.write("\n".join(rows) + f"\nwrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
