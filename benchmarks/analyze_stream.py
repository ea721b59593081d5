r"""Peak memory and time of ``mergetheory analyze`` streaming a pool, against loading it whole.

Run ``python -m benchmarks.analyze_stream --out benchmarks/out/analyze_stream.json`` (8
experts of 53 MiB: GPT-2 small's tensor names with every width scaled by 1/3) or
``--full`` (8 experts of at least 1 GiB each: GPT-2 small's widths with as many blocks as
it takes, 33, i.e. 273M float32 parameters, 1.09 GB an expert). In a temporary folder
(``--tmp``) it writes a base model and the experts as model folders (``config.json`` +
``model.safetensors``, expert = base + 0.001 N(0, 1) per entry,
:func:`benchmarks.merge_memory.write_inputs`), then runs, each in a fresh interpreter
whose peak resident set size (``ru_maxrss`` of ``os.wait4``) and wall time are recorded:

* ``analyze``: ``mergetheory analyze --base base e0 ... --out report`` (the whole
  command: one streaming pass for the Gram, sign conflicts and the RHT / TIES / DARE
  coverage Grams, then widths, :math:`n^\star` and the report);
* ``gram_stream``: the streaming pass alone
  (:func:`mergetheory.io.pool.stream_pool_statistics`);
* ``load_all``: the baseline that loads every expert whole
  (:func:`mergetheory.io.load_checkpoint`) and then accumulates the same Gram and sign
  counts tensor by tensor from memory. It runs on the first ``--baseline-experts``
  experts (``auto``: as many as fit in 70 % of the memory available, said in the
  results), so its peak can be compared per expert.

The two Gram matrices are compared (relative difference recorded). The inputs are deleted
at the end. Results go, atomically, to ``--out`` (which is not overwritten unless
``--overwrite``), with the load average before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .merge_memory import gpt2_shapes, write_inputs
from .timing import run_child

RESULTS = Path(__file__).resolve().parent / "results" / "analyze_stream.json"
METHODS = ("analyze", "gram_stream", "load_all")

_GRAM_CHILD = r"""
import json, sys
import numpy as np
method, out, base, *experts = sys.argv[1:]
if method == "gram_stream":
    from mergetheory.io.pool import open_expert, stream_pool_statistics
    stats = stream_pool_statistics([open_expert(e) for e in experts], open_expert(base))
    gram, opposite = stats.gram, stats.opposite
else:  # load_all: every expert whole in memory, then the same sums tensor by tensor
    from mergetheory.io import flatten_tree, load_checkpoint
    theta0 = flatten_tree(load_checkpoint(base + "/model.safetensors", check_finite=False))
    thetas = [flatten_tree(load_checkpoint(e + "/model.safetensors", check_finite=False))
              for e in experts]
    n = len(thetas)
    gram, opposite = np.zeros((n, n)), np.zeros((n, n))
    for k in theta0:
        x = np.stack([t[k].astype(np.float64).ravel() - theta0[k].ravel() for t in thetas])
        gram += x @ x.T
        s = np.sign(x)
        opposite += (np.abs(s) @ np.abs(s).T - s @ s.T) / 2
with open(out, "w") as f:
    json.dump({"gram": gram.tolist(), "opposite": opposite.tolist()}, f)
"""


def _log(msg: str) -> None:
    print(
        f"[benchmarks.analyze_stream] {time.strftime('%H:%M:%S')} {msg}",
        file=sys.stderr,
        flush=True,
    )


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def full_layout(min_bytes: int = 2**30) -> tuple[int, dict[str, tuple[int, ...]]]:
    """GPT-2 small's widths with the fewest blocks making an expert of ``min_bytes``."""
    layers = 12
    while 4 * sum(int(np.prod(s)) for s in gpt2_shapes(1.0, layers).values()) < min_bytes:
        layers += 1
    return layers, gpt2_shapes(1.0, layers)


def _baseline_experts(requested: str, num: int, expert_bytes: int, largest: int) -> int:
    if requested != "auto":
        return max(1, min(num, int(requested)))
    budget = 0.7 * _mem_available() - 1.5e9  # interpreter + JAX, room for the others
    for k in range(num, 0, -1):
        # k + 1 models (float32) + the float64 stack, signs and |signs| of the largest tensor
        if (k + 1) * expert_bytes + 3 * 8 * k * largest <= budget:
            return k
    return 1


def _write(out: Path, results: dict[str, Any]) -> None:
    from mergetheory.io.atomic import atomic_write

    results["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    """Generate the inputs, run the three methods, write the results, delete the inputs."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.analyze_stream")
    p.add_argument("--full", action="store_true", help="8 experts of >= 1 GiB each")
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--baseline-experts", default="auto", help="experts the load_all baseline loads")
    p.add_argument("--tmp", help="folder for the temporary inputs (default: the system's)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--out", default=str(RESULTS), help="results file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        p.error(f"--out {out} exists (committed results?): pass --overwrite to replace it")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    layers, shapes = full_layout() if args.full else (12, gpt2_shapes(1.0 / 3.0))
    params = sum(int(np.prod(s)) for s in shapes.values())
    largest = max(int(np.prod(s)) for s in shapes.values())
    expert_bytes, num = 4 * params, args.num_experts
    k = _baseline_experts(args.baseline_experts, num, expert_bytes, largest)
    results: dict[str, Any] = {
        "layout": f"GPT-2 small tensor names (HF), {len(shapes)} float32 tensors, {layers} "
        f"blocks, widths x {1.0 if args.full else 1 / 3:.3g}",
        "num_experts": num,
        "expert_bytes": expert_bytes,
        "largest_tensor_params": largest,
        "input_bytes": (num + 1) * expert_bytes,
        "baseline_experts": k,
        "mem_available_bytes_at_start": _mem_available(),
        "cpu_count": os.cpu_count(),
        "runs": {},
    }
    tmp_root = Path(args.tmp) if args.tmp else None
    need = 1.1 * (num + 1) * expert_bytes + 2**30
    free = shutil.disk_usage(tmp_root or tempfile.gettempdir()).free
    if free < need:
        p.error(f"needs {need / 1e9:.1f} GB of disk for the inputs, {free / 1e9:.1f} GB free")
    with tempfile.TemporaryDirectory(prefix="analyze_stream_", dir=tmp_root) as tmp:
        tmp = Path(tmp)
        _log(f"writing base + {num} experts of {expert_bytes / 2**20:.0f} MiB to {tmp} ...")
        t0 = time.perf_counter()
        base, *experts = write_inputs(tmp, shapes, num)
        results["write_inputs_s"] = time.perf_counter() - t0
        for method in methods:
            if method == "analyze":
                cmd = [sys.executable, "-m", "mergetheory.cli", "analyze", "--base", str(base)]
                cmd += [*map(str, experts), "--out", str(tmp / "report")]
            else:
                used = experts if method == "gram_stream" else experts[:k]
                cmd = [sys.executable, "-c", _GRAM_CHILD, method, str(tmp / f"{method}.json")]
                cmd += [str(base), *map(str, used)]
            _log(f"{method} ...")
            before = os.getloadavg()
            res = run_child(cmd, args.timeout, show_stderr=method == "analyze")
            res["loadavg_before"], res["loadavg_after"] = before, os.getloadavg()
            if "peak_rss_bytes" in res:
                res["peak_over_input"] = res["peak_rss_bytes"] / results["input_bytes"]
            _log(f"{method}: {json.dumps(res)}")
            results["runs"][method] = res
            _write(out, results)  # after every run: a long run killed keeps what it measured
        grams = {}
        for m in ("gram_stream", "load_all"):
            if (tmp / f"{m}.json").is_file():
                grams[m] = np.asarray(json.loads((tmp / f"{m}.json").read_text())["gram"])
        if len(grams) == 2:
            a, b = grams["gram_stream"][:k, :k], grams["load_all"]
            results["gram_max_rel_diff"] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    _log("inputs deleted")
    _write(out, results)
    gib = 2.0**30
    print(
        f"input {results['input_bytes'] / gib:.2f} GiB (base + {num} x "
        f"{expert_bytes / gib:.2f} GiB); largest tensor {largest * 4 / 2**20:.0f} MiB"
    )
    for m, res in results["runs"].items():
        if "error" in res:
            print(f"{m}: FAILED {res['error']}")
            continue
        print(
            f"{m}: peak RSS {res['peak_rss_bytes'] / gib:.2f} GiB "
            f"({res['peak_over_input']:.3f} x the input), {res['wall_s']:.0f} s, "
            f"load {res['loadavg_before'][0]:.1f} -> {res['loadavg_after'][0]:.1f}"
            + (f" ({k} experts)" if m == "load_all" else "")
        )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
