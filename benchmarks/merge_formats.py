r"""Peak memory and time of ``mergetheory merge`` on npz / msgpack / orbax inputs.

``python -m benchmarks.merge_formats --out PATH`` writes, in a temporary folder, a base and
``--experts`` experts in each format (``--tensors`` float32 tensors ``[1024, 1024]``, 4 MiB
each), then runs in a fresh interpreter per case (peak RSS from ``os.wait4``):

* ``streamed``: ``mergetheory merge --operator task_arithmetic --base BASE --out OUT
  E1 ...``, the output in the inputs' format (per-tensor: one tensor of every expert in
  memory, written tensor by tensor);
* ``whole``: the same with ``--operator ties --hparam trim=global`` (a global trim: every
  expert loaded, the stacked tree merged at once);
* for orbax, ``streamed_groups``: the streamed merge with the orbax writer's groups set to
  16 MiB (``mergetheory.io.orbax.ORBAX_BATCH_BYTES``; default 1 GiB, so one group here);
* ``baseline``: a process that only imports JAX and the CLI.

Results go atomically to ``--out`` (JSON), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .timing import run_child

SUFFIX = {"npz": ".npz", "msgpack": ".msgpack", "orbax": ""}
CODE = (
    "import sys; import mergetheory.io.orbax as o; o.ORBAX_BATCH_BYTES = int(sys.argv[1]); "
    "from mergetheory.cli import main; sys.exit(main(sys.argv[2:]))"
)


def _write(folder: Path, fmt: str, experts: int, tensors: int) -> tuple[str, list[str], int]:
    from mergetheory.io import save_msgpack, save_orbax

    rng = np.random.default_rng(0)
    shape = (1024, 1024)
    base = {
        "layers": {f"{i}": {"w": rng.standard_normal(shape, np.float32)} for i in range(tensors)}
    }
    paths, size = [], 0
    for k in range(experts + 1):
        tree = (
            base
            if k == 0
            else {
                "layers": {
                    i: {"w": (v["w"] + 0.01 * rng.standard_normal(shape, np.float32))}
                    for i, v in base["layers"].items()
                }
            }
        )
        path = folder / f"m{k}{SUFFIX[fmt]}"
        if fmt == "npz":
            np.savez(path, **{f"layers.{i}.w": v["w"] for i, v in tree["layers"].items()})
        elif fmt == "msgpack":
            save_msgpack(path, tree)
        else:
            save_orbax(path, tree)
        size += sum(
            f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file()
        )
        paths.append(str(path))
    return paths[0], paths[1:], size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--tensors", type=int, default=24)
    p.add_argument("--formats", default="npz,msgpack,orbax")
    p.add_argument("--timeout", type=float, default=1200)
    args = p.parse_args(argv)
    py = sys.executable
    results: dict = {"experts": args.experts, "tensors": args.tensors, "tensor_bytes": 4 << 20}
    results["baseline"] = run_child([py, "-c", "import jax, mergetheory.cli.merge"], args.timeout)
    for fmt in args.formats.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            base, experts, size = _write(folder, fmt, args.experts, args.tensors)
            row: dict = {"input_bytes": size}
            cases = {
                "streamed": (1 << 30, ["--operator", "task_arithmetic"]),
                "whole": (1 << 30, ["--operator", "ties", "--hparam", "trim=global"]),
            }
            if fmt == "orbax":
                cases["streamed_groups"] = (16 << 20, ["--operator", "task_arithmetic"])
            for name, (group, op) in cases.items():
                out = str(folder / f"out_{name}{SUFFIX[fmt]}")
                cmd = [py, "-c", CODE, str(group), "merge", *op, "--base", base, "--out", out]
                row[name] = run_child([*cmd, *experts], args.timeout)
                print(fmt, name, row[name], file=sys.stderr, flush=True)
            results[fmt] = row
    results["load_average"] = os.getloadavg()
    from mergetheory.io.atomic import atomic_write_bytes

    atomic_write_bytes(Path(args.out), json.dumps(results, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
