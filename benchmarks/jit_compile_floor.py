r"""What a user's ``jax.jit`` around TIES compiles: the threshold search or the merge?

Run ``python -m benchmarks.jit_compile_floor --out PATH`` (default
``benchmarks/results/jit_compile_floor.json``). For GPT-2-small-shaped trees
(``benchmarks.tree_compile.gpt2_shapes``; ``--layers 12,25``: 148 and 304 leaves, ``n = 2``
float32 experts), it lowers and XLA-compiles, without running, two programs, round-robin in
one process (``--rounds``):

* ``ties``: ``jax.jit(lambda tv, key: ties(tv, key))``, what a user's wrapper compiles today
  (each leaf's exact top-k threshold searched, or sorted, inside the program);
* ``thresholds_given``: ``jax.jit`` of :func:`mergetheory.merge.ties.ties_merge_thresholded`
  on every leaf with the thresholds passed in as arguments: the same merge with no
  threshold computation at all, i.e. the floor that any rewrite of the threshold search
  (one shared search loop over all leaves, for instance) could reach.

For each it records the process CPU seconds of tracing + lowering and of the XLA compile,
and the compile's wall time, with the load average (the machine is shared).
Numbers: ``docs/merge_kernels.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .tree_compile import gpt2_shapes

RESULTS = Path(__file__).resolve().parent / "results" / "jit_compile_floor.json"


def _variants(num: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[Any, tuple]]:
    import jax
    import jax.numpy as jnp

    from mergetheory.merge import get_operator
    from mergetheory.merge.ties import ties_merge_thresholded

    op = get_operator("ties")
    tree = {k: jax.ShapeDtypeStruct((num, *s), jnp.float32) for k, s in shapes.items()}
    thr = {k: jax.ShapeDtypeStruct((num,), jnp.float32) for k in shapes}

    def ties(tv: Any, key: Any) -> Any:
        return op.fn(tv, key, **op.default_hparams)

    def given(tv: Any, thresholds: Any) -> Any:
        return {k: ties_merge_thresholded(x, thresholds[k]) for k, x in tv.items()}

    return {
        "ties": (ties, (tree, jax.random.key(0))),
        "thresholds_given": (given, (tree, thr)),
    }


def measure(layers: int, num: int, rounds: int) -> dict[str, Any]:
    """Round-robin lower + compile of each variant; per-variant lists and medians."""
    import jax

    shapes = gpt2_shapes(layers)
    variants = _variants(num, shapes)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (fn, args) in variants.items():
            fresh = lambda *a, fn=fn: fn(*a)  # noqa: E731 (a new function: nothing cached)
            c0 = time.process_time()
            lowered = jax.jit(fresh).lower(*args)
            c1, t1 = time.process_time(), time.perf_counter()
            lowered.compile()
            c2, t2 = time.process_time(), time.perf_counter()
            runs[name].append(
                {
                    "trace_lower_cpu_s": c1 - c0,
                    "compile_cpu_s": c2 - c1,
                    "compile_wall_s": t2 - t1,
                    "loadavg_1m": os.getloadavg()[0],
                }
            )
    out: dict[str, Any] = {"num_leaves": len(shapes), "num_experts": num, "variants": {}}
    for name, rs in runs.items():
        out["variants"][name] = {
            "runs": rs,
            "median_compile_cpu_s": statistics.median(r["compile_cpu_s"] for r in rs),
            "min_compile_cpu_s": min(r["compile_cpu_s"] for r in rs),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure every ``--layers`` value and write the results atomically."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jit_compile_floor")
    parser.add_argument("--layers", default="12,25", help="comma-separated block counts")
    parser.add_argument("--num-experts", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import jax

    from mergetheory.io import atomic_write

    results: dict[str, Any] = {
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "trees": {},
    }
    for layers in (int(v) for v in args.layers.split(",") if v):
        res = measure(layers, args.num_experts, args.rounds)
        results["trees"][str(res["num_leaves"])] = res
        for name, v in res["variants"].items():
            med, low = v["median_compile_cpu_s"], v["min_compile_cpu_s"]
            print(  # noqa: T201
                f"{res['num_leaves']} leaves, {name}: XLA compile {med:.2f} s CPU "
                f"(median of {args.rounds}, min {low:.2f} s)"
            )
    results["loadavg_after"] = os.getloadavg()
    results["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with atomic_write(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
