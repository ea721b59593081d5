r"""DARE keep masks: the counter-based hash against ``jax.random.bernoulli`` (issue 10).

Run ``python -m benchmarks.dare_bits --out PATH`` (``--dim 1000000`` for a smaller run).
For a ``[8, D]`` float32 leaf (``D = 1e7`` by default) it times, in one process, jitted
and warm, the DARE step ``where(mask, x / rho, 0)`` with the mask from

* ``hash``: :func:`mergetheory.merge.dare_keep_mask` (the library's counter-based hash);
* ``threefry2x32``, ``rbg``, ``unsafe_rbg``: ``jax.random.bernoulli(key, rho, shape)`` with a
  key of that implementation (``jax.random.key(seed, impl=...)``);

and the NumPy probe ``X.sum(0)`` (one read of the data, docs/width_engine.md). Timings are
round-robin over the variants, ``--rounds`` times; reported per variant: compile time,
min and median seconds and ``min / min(probe)``. Results go to ``--out`` as JSON (the
script never writes into ``benchmarks/results/`` unless told to).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = ("hash", "threefry2x32", "rbg", "unsafe_rbg")


def _timed(fn, *args) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results JSON path")
    parser.add_argument("--dim", type=int, default=10_000_000, help="entries per task")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--density", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.dim < 1 or args.tasks < 1 or args.rounds < 1:
        print("dare_bits: --dim, --tasks and --rounds must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from mergetheory.merge import dare_keep_mask, dare_rescale

    shape = (args.tasks, args.dim)
    x_np = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = jnp.asarray(x_np)
    rho = jnp.float32(args.density)

    def make(variant: str):
        if variant == "hash":
            key = jr.key(0)

            @jax.jit
            def run(x, key, rho):
                return dare_rescale(x, dare_keep_mask(key, x.shape, rho), rho)

        else:
            key = jr.key(0, impl=variant)

            @jax.jit
            def run(x, key, rho):
                return dare_rescale(x, jr.bernoulli(key, rho, x.shape), rho)

        return run, key

    fns = {v: make(v) for v in VARIANTS}
    compile_s = {v: _timed(fn, x, key, rho) for v, (fn, key) in fns.items()}
    times: dict[str, list[float]] = {v: [] for v in ("probe", *VARIANTS)}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        x_np.sum(0)
        times["probe"].append(time.perf_counter() - t0)
        for v, (fn, key) in fns.items():
            times[v].append(_timed(fn, x, key, rho))
    probe = min(times["probe"])
    results = {
        v: {
            "min_s": min(ts),
            "median_s": statistics.median(ts),
            "ratio_to_probe": min(ts) / probe,
            **({"compile_s": compile_s[v]} if v in compile_s else {}),
        }
        for v, ts in times.items()
    }
    record = {
        "shape": list(shape),
        "dtype": "float32",
        "density": args.density,
        "rounds": args.rounds,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "load_avg": os.getloadavg(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out)
    for v, r in results.items():
        print(f"{v:>10}: min {r['min_s']:.4f} s  ({r['ratio_to_probe']:.1f}x probe)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
