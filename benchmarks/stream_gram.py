r"""Benchmark of the streaming Gram pass (issue 12 item 2): peak RSS and time vs input size.

Run ``python -m benchmarks.stream_gram --size 8 --out benchmarks/out/stream_gram.json``.
For each size it writes, in a temporary folder deleted afterwards, a base and
``--num-experts`` experts as safetensors files of ``--size`` MB each (``--tensors``
tensors of equal size, float32), then measures in a fresh subprocess each (so each peak
RSS, ``ru_maxrss``, is the method's own):

* ``stream``: :func:`mergetheory.io.pool.stream_pool_statistics` over lazily read
  files, one tensor of every expert at a time (expected peak ~ interpreter + n tensors);
* ``load_all``: every expert loaded whole (:func:`mergetheory.io.load_safetensors`),
  task vectors stacked ``[n, D]`` and ``X @ X.T`` (peak ~ n models).

Both give the same Gram matrix (checked: max relative difference recorded). The paper's
target runs use 8 experts of >= 1 GB each (``--size 1024``); the default is small.
Results go, atomically, to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, resource, sys, time
import numpy as np
method, folder, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
from pathlib import Path
folder = Path(folder)
t = time.perf_counter()
if method == "stream":
    from mergetheory.io.pool import open_expert, stream_pool_statistics
    base = open_expert(folder / "base.safetensors")
    experts = [open_expert(folder / f"e{i}.safetensors") for i in range(n)]
    gram = stream_pool_statistics(experts, base).gram
else:
    from mergetheory.io import load_safetensors
    base = load_safetensors(folder / "base.safetensors")
    exps = [load_safetensors(folder / f"e{i}.safetensors") for i in range(n)]
    x = np.stack([np.concatenate([(e[k].astype(np.float64) - base[k]).ravel()
                                  for k in sorted(base)]) for e in exps])
    gram = x @ x.T
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux: kB)
print(json.dumps({"seconds": dt, "peak_rss_mb": peak, "gram": gram.tolist()}))
"""


def _write_pool(folder: Path, size_mb: float, num: int, tensors: int, seed: int) -> int:
    from mergetheory.io import save_safetensors

    per = max(1, int(size_mb * 2**20 / 4 / tensors))
    rng = np.random.default_rng(seed)
    base = {f"t{k}": rng.standard_normal(per, dtype=np.float32) for k in range(tensors)}
    save_safetensors(folder / "base.safetensors", base)
    for i in range(num):
        ex = {k: v + 0.01 * rng.standard_normal(per, dtype=np.float32) for k, v in base.items()}
        save_safetensors(folder / f"e{i}.safetensors", ex)
    return per * tensors * 4 * (num + 1)


def _run(method: str, folder: Path, num: int) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "JAX_ENABLE_X64": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, method, str(folder), str(num)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=float, nargs="+", default=[8.0], help="MB per expert")
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--tensors", type=int, default=16, help="tensors per expert")
    p.add_argument("--out", required=True, help="results JSON")
    args = p.parse_args(argv)
    rows = []
    for size in args.size:
        with tempfile.TemporaryDirectory(prefix="stream_gram_") as tmp:
            total = _write_pool(Path(tmp), size, args.num_experts, args.tensors, seed=0)
            res = {m: _run(m, Path(tmp), args.num_experts) for m in ("stream", "load_all")}
        g1, g2 = np.asarray(res["stream"].pop("gram")), np.asarray(res["load_all"].pop("gram"))
        rows.append(
            {
                "size_mb_per_expert": size,
                "total_input_mb": total / 2**20,
                "max_rel_diff": float(np.max(np.abs(g1 - g2)) / np.max(np.abs(g2))),
                **{f"{m}_{k}": v for m, r in res.items() for k, v in r.items()},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    from mergetheory.io.atomic import atomic_write

    with atomic_write(args.out, "w") as f:
        json.dump(
            {
                "num_experts": args.num_experts,
                "tensors": args.tensors,
                "rows": rows,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
            f,
            indent=1,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
