r"""``mergetheory merge --config`` against mergekit itself, method by method (issue 12, item 3).

Run ``python -m benchmarks.mergekit_compare --mergekit-yaml /path/to/mergekit-yaml``
(mergekit is *not* a dependency of this project: install it in a separate environment,
e.g. ``python3.11 -m venv mk && mk/bin/pip install mergekit``; without ``--mergekit-yaml``
the script looks for ``mergekit-yaml`` on ``PATH`` and skips with a message if absent).

In a temporary folder it writes a small GPT-2-shaped base model and ``n`` experts as model
folders (``config.json`` + ``model.safetensors``, float32; each expert is the base plus
``0.01 N(0, 1)`` and a shared direction so that signs partly agree), and for every mapped
mergekit method (:data:`mergetheory.cli.merge_models.MERGEKIT_METHODS`) one YAML config,
merged by both ``mergekit-yaml config.yml OUT`` and ``mergetheory merge --config config.yml
--out OUT``. It records per method the largest absolute difference of the merged weights
(mergekit's output tensor names are canonical ``transformer.``-prefixed aliases of the
inputs'), the largest merged task vector entry for scale, and both wall times. DARE is
random in both tools (different generators), so for ``dare_ties`` the difference is not
expected to vanish; the kept fraction and the norm of the merged task vector of the two
are recorded instead. Results go to ``benchmarks/results/mergekit_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.merge_memory import GPT2, ROOT, gpt2_config, gpt2_shapes

RESULTS = Path(__file__).resolve().parent / "results" / "mergekit_compare.json"
WEIGHTS = (1.0, 0.5, 2.0)

CASES: dict[str, tuple[str, str, bool]] = {
    # name: (merge_method, top-level parameters, per-model weights)
    "linear": ("linear", "", True),  # no base_model: the weighted mean of the experts
    "linear_with_base": ("linear", "", True),  # the base listed with a weight, averaged too
    "task_arithmetic": ("task_arithmetic", "lambda: 0.7", True),
    "ties": ("ties", "density: 0.5", True),
    "ties_normalize_false": ("ties", "density: 0.5, normalize: false", True),
    "ties_int8_mask": ("ties", "density: 0.3, int8_mask: true", True),
    "breadcrumbs": ("breadcrumbs", "density: 0.8, gamma: 0.05", True),
    "model_stock": ("model_stock", "", False),
    "dare_ties": ("dare_ties", "density: 0.5", True),
}
"""The configs compared (every method of the mapping; some switch values too)."""


def write_pool(folder: Path, num: int, seed: int = 12) -> tuple[Path, list[Path]]:
    """A base and ``num`` experts as GPT-2 model folders (float32)."""
    from mergetheory.io import save_safetensors

    shapes = gpt2_shapes(0.05)
    rng = np.random.default_rng(seed)
    base = {n: 0.02 * rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    shared = {n: 0.01 * rng.standard_normal(s) for n, s in shapes.items()}
    cfg = json.dumps(gpt2_config(shapes))
    paths = []
    for i in range(num + 1):
        model = (
            base
            if i == 0
            else {
                n: (v + shared[n] + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                for n, v in base.items()
            }
        )
        p = folder / ("base" if i == 0 else f"expert{i - 1}")
        p.mkdir()
        (p / "config.json").write_text(cfg)
        save_safetensors(p / "model.safetensors", model)
        paths.append(p)
    return paths[0], paths[1:]


def _yaml(case: str, base: Path, experts: list[Path]) -> str:
    method, params, weighted = CASES[case]
    models = [base, *experts] if case == "linear_with_base" else experts
    text = "models:\n"
    for i, e in enumerate(models):
        text += f"  - model: {e}\n"
        if weighted:
            text += f"    parameters: {{weight: {WEIGHTS[i % len(WEIGHTS)]}}}\n"
    if case != "linear":
        text += f"base_model: {base}\n"
    text += f"merge_method: {method}\ndtype: float32\n"
    return text + (f"parameters: {{{params}}}\n" if params else "")


def read_folder(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder (sharded or not), ``transformer.`` prefix dropped."""
    from mergetheory.io import load_safetensors

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        for k, v in load_safetensors(f, check_finite=False).items():
            out[k.removeprefix("transformer.")] = v
    return out


def _timed(cmd: list[str]) -> tuple[float, str]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {' | '.join(tail)}")
    return wall, proc.stdout


def compare(mk: dict[str, np.ndarray], mt: dict[str, np.ndarray], base: dict[str, np.ndarray]):
    """Max |mergekit - mergetheory| over all tensors, and statistics of the task vectors."""
    missing = sorted(set(base) - set(mk)) + sorted(set(base) - set(mt))
    if missing:
        raise RuntimeError(f"tensor {missing[0]!r} missing from an output")
    diff = max(float(np.max(np.abs(mk[n].astype(np.float64) - mt[n]))) for n in base)
    taus = {
        who: np.concatenate([(out[n].astype(np.float64) - base[n]).ravel() for n in sorted(base)])
        for who, out in (("mergekit", mk), ("mergetheory", mt))
    }
    return {
        "max_abs_diff": diff,
        "max_abs_merged_task_vector": float(np.max(np.abs(taus["mergetheory"]))),
        "relative_l2_diff": float(
            np.linalg.norm(taus["mergekit"] - taus["mergetheory"])
            / max(np.linalg.norm(taus["mergetheory"]), 1e-300)
        ),
        "nonzero_fraction": {k: float(np.mean(t != 0)) for k, t in taus.items()},
        "task_vector_l2": {k: float(np.linalg.norm(t)) for k, t in taus.items()},
        "dtypes": sorted({str(mk[n].dtype) for n in base} | {str(mt[n].dtype) for n in base}),
    }


def mergekit_version(exe: str) -> str:
    """mergekit's version from the interpreter next to ``exe`` (metadata only)."""
    py = Path(exe).parent / "python"
    code = "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'))"
    try:
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True)
        mk, torch = out.stdout.split()
        return f"mergekit {mk}, torch {torch}"
    except (OSError, subprocess.CalledProcessError, ValueError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run every case with both tools; write the results; 0 also when mergekit is absent."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mergekit_compare")
    parser.add_argument("--mergekit-yaml", help="mergekit's CLI (default: mergekit-yaml on PATH)")
    parser.add_argument("--num-experts", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--out", default=str(RESULTS), help="results file")
    args = parser.parse_args(argv)
    exe = args.mergekit_yaml or shutil.which("mergekit-yaml")
    if not exe or not Path(exe).is_file():
        print(
            "mergekit_compare: skipped, mergekit-yaml not found "
            f"({args.mergekit_yaml or 'not on PATH'}); install mergekit in a separate "
            "environment and pass --mergekit-yaml PATH",
            file=sys.stderr,
        )
        return 0
    from mergetheory.io import atomic_write

    results: dict[str, Any] = {
        "mergekit": mergekit_version(exe),
        "layout": f"GPT-2 ({GPT2['n_layer']} layers, HF names), widths x 0.05, float32",
        "num_experts": args.num_experts,
        "weights": [WEIGHTS[i % len(WEIGHTS)] for i in range(args.num_experts)],
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="mergekit_compare_") as tmp:
        base, experts = write_pool(Path(tmp), args.num_experts)
        theta0 = read_folder(base)
        for case in args.cases.split(","):
            cfg = Path(tmp) / f"{case}.yml"
            cfg.write_text(_yaml(case, base, experts))
            out_mk, out_mt = Path(tmp) / f"mk_{case}", Path(tmp) / f"mt_{case}"
            print(f"[mergekit_compare] {case} ...", file=sys.stderr, flush=True)
            res: dict[str, Any] = {"config": cfg.read_text().replace(tmp, "<tmp>")}
            try:
                res["mergekit_wall_s"], _ = _timed([exe, str(cfg), str(out_mk), "--quiet"])
                cmd = [sys.executable, "-m", "mergetheory.cli", "merge", "--config", str(cfg)]
                res["mergetheory_wall_s"], _ = _timed([*cmd, "--out", str(out_mt)])
                res.update(compare(read_folder(out_mk), read_folder(out_mt), theta0))
            except RuntimeError as exc:
                res["error"] = str(exc)
            results["cases"][case] = res
    results["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["loadavg"] = os.getloadavg()
    with atomic_write(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    for case, res in results["cases"].items():
        if "error" in res:
            print(f"{case}: FAILED {res['error']}")
        else:
            print(
                f"{case}: max |mergekit - mergetheory| = {res['max_abs_diff']:.3g} "
                f"(largest merged task vector entry {res['max_abs_merged_task_vector']:.3g}); "
                f"kept {res['nonzero_fraction']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
