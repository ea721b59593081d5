r"""Compile time, the :math:`2^{24}` cliff and per-leaf costs of the merge operators on trees.

Run ``python -m benchmarks.tree_compile --out PATH`` (or set ``BENCH_OUT``; default
``benchmarks/results/tree_compile.json``). Two parts, each in a fresh subprocess (its own
compilation cache and peak memory), results written atomically with machine information
and the load average before and after (this machine is shared: every ratio compares runs
in the same process, timed round-robin with the probe).

(a) ``tree``: a GPT-2-small-shaped tree (the leaf shapes of GPT-2 small: token and position
    embeddings, per block ``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``,
    ``mlp.c_fc``, ``mlp.c_proj`` weights and biases, ``ln_f``; 9 distinct shapes). The
    default is scaled down, ``n = 4`` experts and 4 blocks (52 leaves, 67.7M entries per
    expert, 1.1 GB); ``--full`` is ``n = 8`` and 12 blocks (148 leaves, 124M per expert, 4 GB).
    For TIES, DARE-TIES, DARE-linear and Task Arithmetic (``--ops`` picks some): the first
    call of the eager entry (compile included), the first call of a user's ``jax.jit``
    wrapper, the number of XLA compiles each caused and the seconds spent tracing,
    lowering and XLA-compiling, the first call's time over a warm call's (``over_warm_s``),
    then warm times, eager and jitted, against
    the probe (NumPy ``x.sum(0)`` over every leaf). TIES on one flat ``[n, D]`` leaf of
    the same total size is timed too (target: tree ratio within 1.5x of it).
(b) ``flat``: TIES on one flat ``[n, D]`` float32 leaf for ``D`` from ``1e6`` to ``3.2e7``
    (``--full``: ``n = 8``, up to ``1e8``), jitted and warm, against the NumPy probe
    ``X.sum(0)``; the fitted slope of :math:`\log t` against :math:`\log D` and the
    ratio at ``D = 1.68e7`` over the ratio at ``1.6e7`` (the :math:`2^{24}` cliff).

Numbers and their history: ``docs/merge_kernels.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "tree_compile.json"
PARTS = ("tree", "flat")
TREE_OPS = ("ties", "dare_ties", "dare_linear", "task_arithmetic")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def _log(msg: str) -> None:
    print(f"[benchmarks.tree_compile] {msg}", file=sys.stderr, flush=True)  # noqa: T201


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _machine() -> dict[str, Any]:
    import jax
    import numpy as np

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
    }


def gpt2_shapes(num_layers: int = 12) -> dict[str, tuple[int, ...]]:
    """Leaf shapes of GPT-2 small (HF ``Conv1D`` layout) with ``num_layers`` blocks."""
    d, v, p = 768, 50257, 1024
    shapes: dict[str, tuple[int, ...]] = {"wte": (v, d), "wpe": (p, d)}
    for i in range(num_layers):
        block = {
            "ln_1.g": (d,),
            "ln_1.b": (d,),
            "attn.c_attn.w": (d, 3 * d),
            "attn.c_attn.b": (3 * d,),
            "attn.c_proj.w": (d, d),
            "attn.c_proj.b": (d,),
            "ln_2.g": (d,),
            "ln_2.b": (d,),
            "mlp.c_fc.w": (d, 4 * d),
            "mlp.c_fc.b": (4 * d,),
            "mlp.c_proj.w": (4 * d, d),
            "mlp.c_proj.b": (d,),
        }
        shapes.update({f"h{i}.{k}": s for k, s in block.items()})
    shapes.update({"ln_f.g": (d,), "ln_f.b": (d,)})
    return shapes


class _Compiles:
    """Counts XLA compiles and the seconds of tracing, lowering and XLA compiling them."""

    def __init__(self) -> None:
        import jax

        self.count = 0
        self.seconds = {_COMPILE_EVENT: 0.0, _TRACE_EVENT: 0.0, _LOWER_EVENT: 0.0}
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, name: str, duration: float, **_kw: Any) -> None:
        if name in self.seconds:
            self.seconds[name] += duration
        if name == _COMPILE_EVENT:
            self.count += 1

    def measure(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """First call of ``fn``: wall time, XLA compiles and where the compile time went."""
        import jax

        c0, s0 = self.count, dict(self.seconds)
        t0, p0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        return {
            "first_call_s": time.perf_counter() - t0,
            "first_call_cpu_s": time.process_time() - p0,
            "xla_compiles": self.count - c0,
            "xla_compile_s": self.seconds[_COMPILE_EVENT] - s0[_COMPILE_EVENT],
            "trace_s": self.seconds[_TRACE_EVENT] - s0[_TRACE_EVENT],
            "lower_s": self.seconds[_LOWER_EVENT] - s0[_LOWER_EVENT],
        }


def _round_robin(
    probe: Callable[[], Any], fns: dict[str, Callable[[], Any]], repeat: int
) -> dict[str, Any]:
    """Time ``probe`` and each of ``fns`` alternately (all warm); ratios of the minima.

    The probe runs three times per round (it is cheap, and its minimum is the unit of every
    ratio: on a loaded machine one probe call per round is too noisy).
    """
    import jax

    times: dict[str, list[float]] = {"probe": [], **{k: [] for k in fns}}
    for _ in range(repeat):
        for k, fn in [("probe", probe), ("probe", probe), ("probe", probe), *fns.items()]:
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    pmin = min(times["probe"])
    probe_rounds = [min(times["probe"][3 * i : 3 * i + 3]) for i in range(repeat)]
    out: dict[str, Any] = {"probe_min_s": pmin, "repeat": repeat}
    for k in fns:
        v = times[k]
        out[k] = {
            "min_s": min(v),
            "median_s": statistics.median(v),
            "ratio_of_minima": min(v) / pmin,
            "median_paired_ratio": statistics.median(
                a / b for a, b in zip(v, probe_rounds, strict=True)
            ),
        }
    return out


def _random_tree(shapes: dict[str, tuple[int, ...]], num: int, seed: int) -> dict[str, Any]:
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        k: jnp.asarray(rng.standard_normal((num, *s), dtype=np.float32)) for k, s in shapes.items()
    }


def part_tree(
    full: bool,
    num: int | None,
    layers: int | None,
    repeat: int,
    ops: tuple[str, ...] = TREE_OPS,
) -> dict[str, Any]:
    """Compile and warm times of the operators on a GPT-2-shaped tree, and TIES flat."""
    import jax
    import numpy as np

    from mergetheory.merge import MERGE_OPERATORS

    num = num or (8 if full else 4)
    layers = layers if layers is not None else (12 if full else 4)
    shapes = gpt2_shapes(layers)
    compiles = _Compiles()
    tree = _random_tree(shapes, num, 0)
    total = sum(math.prod(s) for s in shapes.values())
    res: dict[str, Any] = {
        "num_experts": num,
        "num_layers": layers,
        "num_leaves": len(shapes),
        "num_distinct_shapes": len(set(shapes.values())),
        "entries_per_expert": total,
        "probe": "numpy x.sum(0) over every leaf of the tree",
        "operators": {},
    }
    leaves_np = [np.asarray(x) for x in tree.values()]  # views, no copy

    def probe() -> Any:
        return [x.sum(0) for x in leaves_np]

    key = jax.random.key(0)
    for name in ops:
        op = MERGE_OPERATORS[name]
        hp = dict(op.default_hparams)
        _log(f"tree: {name} ({len(shapes)} leaves, n = {num})")

        def eager(op: Any = op, hp: dict = hp) -> Any:
            return op.fn(tree, key, **hp)

        jitted_fn = jax.jit(lambda tv, k, op=op, hp=hp: op.fn(tv, k, **hp))

        def jitted(jitted_fn: Any = jitted_fn) -> Any:
            return jitted_fn(tree, key)

        entry: dict[str, Any] = {"hparams": hp}
        entry["eager_first"] = compiles.measure(eager)
        entry["jit_wrapper_first"] = compiles.measure(jitted)
        entry["warm"] = _round_robin(probe, {"eager": eager, "jit": jitted}, repeat)
        for first, kind in [("eager_first", "eager"), ("jit_wrapper_first", "jit")]:
            # the first call's overhead over a warm call: tracing, compiling, dispatch
            entry[first]["over_warm_s"] = (
                entry[first]["first_call_s"] - entry["warm"][kind]["min_s"]
            )
        res["operators"][name] = entry
    tree.clear()  # free the leaves (and their views) before the flat array is built
    leaves_np.clear()
    if "ties" not in ops:
        return res

    _log(f"tree: ties on one flat [{num}, {total}] leaf")
    x_np = np.random.default_rng(1).standard_normal((num, total), dtype=np.float32)
    flat = {"x": jax.numpy.asarray(x_np)}
    op = MERGE_OPERATORS["ties"]
    ties_jit = jax.jit(lambda tv, k: op.fn(tv, k, **op.default_hparams))
    first = compiles.measure(lambda: ties_jit(flat, key))
    warm = _round_robin(lambda: x_np.sum(0), {"ties": lambda: ties_jit(flat, key)}, repeat)
    res["ties_flat_same_total"] = {"shape": [num, total], "first": first, "warm": warm}
    tree_ratio = res["operators"]["ties"]["warm"]["jit"]["ratio_of_minima"]
    res["ties_tree_over_flat_ratio"] = tree_ratio / warm["ties"]["ratio_of_minima"]
    return res


def part_flat(full: bool, num: int | None, dims: list[int] | None, repeat: int) -> dict[str, Any]:
    """TIES on one flat ``[n, D]`` leaf over a range of ``D``: ratio to the probe, slope."""
    import jax
    import numpy as np

    from mergetheory.merge import MERGE_OPERATORS

    num = num or (8 if full else 4)
    if not dims:
        dims = [1_000_000, 4_000_000, 16_000_000, 16_800_000, 32_000_000]
        if full:
            dims += [100_000_000]
    op = MERGE_OPERATORS["ties"]
    key = jax.random.key(0)
    compiles = _Compiles()
    rows = []
    for d in dims:
        _log(f"flat: ties on [{num}, {d}]")
        x_np = np.random.default_rng(d).standard_normal((num, d), dtype=np.float32)
        tv = {"x": jax.numpy.asarray(x_np)}
        fn = jax.jit(lambda tv, k: op.fn(tv, k, **op.default_hparams))
        first = compiles.measure(lambda fn=fn, tv=tv: fn(tv, key))
        warm = _round_robin(
            lambda x_np=x_np: x_np.sum(0), {"ties": lambda fn=fn, tv=tv: fn(tv, key)}, repeat
        )
        rows.append({"dim": d, "first": first, "warm": warm})
        del tv, x_np
    logd = [math.log(r["dim"]) for r in rows]
    logt = [math.log(r["warm"]["ties"]["min_s"]) for r in rows]
    logp = [math.log(r["warm"]["probe_min_s"]) for r in rows]
    slope = statistics.linear_regression(logd, logt).slope if len(rows) > 1 else None
    pslope = statistics.linear_regression(logd, logp).slope if len(rows) > 1 else None
    ratio = {r["dim"]: r["warm"]["ties"]["ratio_of_minima"] for r in rows}
    out: dict[str, Any] = {
        "num_experts": num,
        "probe": "numpy X.sum(0) over the same [n, D] float32 array",
        "rows": rows,
        "fitted_slope_log_time_vs_log_dim": slope,
        "fitted_slope_probe_log_time_vs_log_dim": pslope,
    }
    if 16_000_000 in ratio and 16_800_000 in ratio:
        out["cliff_ratio_1.68e7_over_1.6e7"] = ratio[16_800_000] / ratio[16_000_000]
    return out


def _run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.tree_compile", "--part", part]
    for flag, val in [
        ("--num-experts", args.num_experts),
        ("--layers", args.layers),
        ("--repeat", args.repeat),
        ("--dims", args.dims),
        ("--ops", args.ops),
    ]:
        if val not in (None, ""):
            cmd += [flag, str(val)]
    if args.full:
        cmd.append("--full")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    t0 = time.perf_counter()
    # stderr (progress lines, tracebacks) goes straight to ours; stdout carries the JSON
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} (see the progress output)"}
    res = json.loads(proc.stdout)
    res["wall_s"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (both parts, or one with ``--part``) and write the results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tree_compile")
    parser.add_argument("--full", action="store_true", help="GPT-2 small at n = 8 (4 GB)")
    parser.add_argument("--num-experts", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None, help="transformer blocks")
    parser.add_argument("--dims", default="", help="comma-separated D for the flat part")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds")
    parser.add_argument("--ops", default="", help=f"tree part: a subset of {','.join(TREE_OPS)}")
    parser.add_argument("--part", choices=PARTS, help="run one part in this process")
    parser.add_argument("--only", choices=PARTS, help="run only this part (subprocess)")
    parser.add_argument("--label", default="", help="free text stored with the results")
    parser.add_argument(
        "--out", default=os.environ.get("BENCH_OUT", str(RESULTS)), help="results file"
    )
    args = parser.parse_args(argv)
    dims = [int(float(d)) for d in args.dims.split(",") if d] or None
    if dims is not None and min(dims) < 1:
        parser.error(f"--dims: every D must be >= 1, got {args.dims}")
    unknown = sorted(set(o for o in args.ops.split(",") if o) - set(TREE_OPS))
    if unknown:
        parser.error(f"--ops: unknown operator(s) {unknown}; choose from {TREE_OPS}")

    if args.part:
        if args.part == "tree":
            ops = tuple(o for o in args.ops.split(",") if o) or TREE_OPS
            res = part_tree(args.full, args.num_experts, args.layers, args.repeat, ops)
        else:
            res = part_flat(args.full, args.num_experts, dims, args.repeat)
        res["loadavg_end"] = _loadavg()
        print(json.dumps(res, indent=2))  # noqa: T201
        return 0

    from mergetheory.io import atomic_write

    results: dict[str, Any] = {"full": args.full, "label": args.label, "parts": {}}
    results["loadavg_before"] = _loadavg()
    for part in [args.only] if args.only else PARTS:
        _log(f"{part} ...")
        results["parts"][part] = _run_part(part, args)
    results["machine"] = _machine()
    results["loadavg_after"] = _loadavg()
    results["note"] = (
        "shared 2-core machine: minimum over round-robin repeats, ratios against the probe "
        "timed in the same process (see the load averages)."
    )
    with atomic_write(Path(args.out), "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
