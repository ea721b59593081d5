r"""Peak memory and time of ``mergetheory merge`` on a GPT-2-shaped model (issue 13, item 5).

Run ``python -m benchmarks.merge_memory`` (8 experts of about 55 MB each: GPT-2-small's
148 tensors with every width scaled by 1/3) or ``--full`` (8 experts of 498 MB: GPT-2
small itself, 124M float32 parameters; 4 GB in). In a temporary folder it writes a base
model and the experts (``base + 0.001 N(0, 1)`` per entry) as model folders
(``config.json`` + ``model.safetensors``, GPT-2's tensor names) and runs, in a fresh
interpreter per layout and operator, both input paths of the CLI:

* ``files``: ``mergetheory merge --operator OP --base base/model.safetensors --out
  merged.safetensors e0/model.safetensors ...`` (the per-tensor streaming merge of
  safetensors files, in the inputs' dtype);
* ``folders``: ``mergetheory merge --operator OP --base base --out merged e0 ...`` (the
  per-tensor streaming merge of model folders, in float64);
* ``config``: ``mergetheory merge --config OP.yml --out merged`` (a mergekit YAML, every
  expert weighted 1; ``ties`` with ``density: 0.2``);
* ``mergekit``: ``mergekit-yaml OP.yml merged`` on the same YAML (``--mergekit-yaml PATH``;
  mergekit is installed outside this project);

then reads each process's peak resident set size
(``ru_maxrss`` of ``os.wait4``) and wall time, and deletes the folder. A baseline process
that only imports JAX and the CLI's merge module gives the fixed footprint. Results go
atomically to ``benchmarks/results/merge_memory.json`` (``--out``), with the load average.

Target (issue 13): for ``--full``, peak RSS below 2 GB (half the input), and time at most
mergekit's on the same inputs. The scaled default reports the same ratios; its 2 GB check
is scaled to the input (peak below half the input plus the baseline footprint).
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

from .timing import run_child

RESULTS = Path(__file__).resolve().parent / "results" / "merge_memory.json"
GPT2 = {"d_model": 768, "vocab": 50257, "n_ctx": 1024, "n_layer": 12}


def gpt2_shapes(scale: float = 1.0, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """GPT-2-small's tensor names and shapes (HF ``GPT2Model``), widths times ``scale``
    (``num_layers`` blocks, default GPT-2 small's 12)."""
    d = max(32, round(GPT2["d_model"] * scale / 32) * 32)
    vocab, ctx = round(GPT2["vocab"] * scale), round(GPT2["n_ctx"] * scale)
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d)}
    for i in range(GPT2["n_layer"] if num_layers is None else num_layers):
        p = f"h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (d, 3 * d),
                p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d),
                p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (d, 4 * d),
                p + "mlp.c_fc.bias": (4 * d,),
                p + "mlp.c_proj.weight": (4 * d, d),
                p + "mlp.c_proj.bias": (d,),
            }
        )
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def gpt2_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A Hugging Face GPT-2 ``config.json`` for a model of these shapes (mergekit reads the
    architecture and layer count from it)."""
    vocab, d = shapes["wte.weight"]
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": GPT2["n_layer"],
        "n_embd": d,
        "n_head": max(1, d // 64),
        "vocab_size": vocab,
        "n_positions": shapes["wpe.weight"][0],
        "n_ctx": shapes["wpe.weight"][0],
        "tie_word_embeddings": True,
    }


def write_inputs(folder: Path, shapes: dict[str, tuple[int, ...]], num_experts: int) -> list[Path]:
    """Write ``base`` and ``expert{i}``, each a model folder (``config.json`` +
    ``model.safetensors``); return the folders ``[base, experts...]``."""
    from mergetheory.io import save_safetensors

    rng = np.random.default_rng(13)
    base = {n: 0.02 * rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}

    def save(name: str, tensors: dict[str, np.ndarray]) -> Path:
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(gpt2_config(shapes)))
        save_safetensors(folder / name / "model.safetensors", tensors)
        return folder / name

    paths = [save("base", base)]
    for i in range(num_experts):
        expert = {
            n: v + np.float32(1e-3) * rng.standard_normal(v.shape, dtype=np.float32)
            for n, v in base.items()
        }
        paths.append(save(f"expert{i}", expert))
        del expert
    return paths


MERGEKIT_CASES = {
    "task_arithmetic": ("task_arithmetic", ""),
    "ties": ("ties", "parameters: {density: 0.2}\n"),
}
"""Operator -> (mergekit method, top-level parameters) for the config / mergekit layouts
(every expert weighted 1)."""


def mergekit_yaml(op: str, base: Path, experts: list[Path]) -> str:
    """A mergekit config merging ``experts`` onto ``base`` with the method of ``op``."""
    method, params = MERGEKIT_CASES[op]
    models = "".join(f"  - model: {e}\n    parameters: {{weight: 1.0}}\n" for e in experts)
    return f"models:\n{models}base_model: {base}\nmerge_method: {method}\n{params}"


_BASELINE = (
    "import jax, jax.numpy as jnp; jnp.zeros(8).block_until_ready(); "
    "import mergetheory.cli.merge, mergetheory.io"
)


def main(argv: list[str] | None = None) -> int:
    """Generate the inputs, run the merges, write the results, delete the inputs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge_memory")
    parser.add_argument("--full", action="store_true", help="GPT-2 small itself: 8 x 498 MB")
    parser.add_argument("--num-experts", type=int, default=8)
    parser.add_argument("--ops", default="task_arithmetic", help="comma-separated operators")
    parser.add_argument(
        "--layouts",
        default="files,folders",
        help="comma-separated: files (.safetensors), folders (model folders), config "
        "(mergetheory merge --config merge.yml), mergekit (mergekit-yaml, same YAML)",
    )
    parser.add_argument("--mergekit-yaml", help="mergekit's CLI, for the mergekit layout")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per merge")
    parser.add_argument("--out", default=str(RESULTS), help="results file")
    args = parser.parse_args(argv)
    from mergetheory.io import atomic_write

    scale = 1.0 if args.full else 1.0 / 3.0
    shapes = gpt2_shapes(scale)
    expert_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "layout": f"GPT-2 small (HF names, {len(shapes)} tensors), widths x {scale:.3g}",
        "num_experts": args.num_experts,
        "expert_bytes": expert_bytes,
        "input_bytes": args.num_experts * expert_bytes,
        "baseline_import_jax_and_cli": run_child([sys.executable, "-c", _BASELINE], 300),
        "merges": {},
    }
    with tempfile.TemporaryDirectory(prefix="merge_memory_") as tmp:
        t0 = time.perf_counter()
        base, *experts = write_inputs(Path(tmp), shapes, args.num_experts)
        results["write_inputs_s"] = time.perf_counter() - t0
        for layout in args.layouts.split(","):
            for op in args.ops.split(","):
                # files: the .safetensors files in, one .safetensors out (whole-tree path);
                # folders: the model folders in and out (per-tensor streaming path)
                sub = "model.safetensors" if layout == "files" else ""
                out = Path(tmp) / f"merged_{layout}_{op}{'.safetensors' if sub else ''}"
                cmd = [sys.executable, "-m", "mergetheory.cli", "merge", "--operator", op]
                cmd += ["--base", str(base / sub), "--out", str(out)]
                cmd += [str(p / sub) for p in experts]
                if layout in ("config", "mergekit"):
                    yml = Path(tmp) / f"{op}.yml"
                    yml.write_text(mergekit_yaml(op, base, experts))
                    cmd = [sys.executable, "-m", "mergetheory.cli", "merge", "--config", str(yml)]
                    cmd += ["--out", str(out)]
                if layout == "mergekit":
                    if not args.mergekit_yaml:
                        print("mergekit layout skipped: give --mergekit-yaml", file=sys.stderr)
                        continue
                    cmd = [args.mergekit_yaml, str(yml), str(out), "--quiet"]
                    cmd += ["--no-copy-tokenizer", "--no-write-model-card"]
                print(f"[benchmarks.merge_memory] {layout} {op} ...", file=sys.stderr, flush=True)
                load = os.getloadavg()
                res = run_child(cmd, args.timeout)
                res["loadavg_before"] = load
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(True)
                if "peak_rss_bytes" in res:
                    res["peak_over_input"] = res["peak_rss_bytes"] / results["input_bytes"]
                results["merges"][f"{layout}/{op}"] = res
    base_rss = results["baseline_import_jax_and_cli"].get("peak_rss_bytes", 0)
    limit = 2e9 if args.full else results["input_bytes"] / 2 + base_rss
    results["target"] = (
        "peak RSS < 2 GB for 8 x 500 MB (--full); scaled run: < input / 2 + baseline RSS"
    )
    results["target_bytes"] = limit
    for res in results["merges"].values():
        if "peak_rss_bytes" in res:
            res["target_met"] = res["peak_rss_bytes"] < limit
    results["loadavg_before"] = load_before
    results["loadavg_after"] = os.getloadavg()
    results["cpu_count"] = os.cpu_count()
    results["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with atomic_write(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    gib = 2.0**30
    print(
        f"input {results['input_bytes'] / gib:.2f} GiB ({args.num_experts} x "
        f"{expert_bytes / 2**20:.0f} MiB); baseline process {base_rss / gib:.2f} GiB"
    )
    for op, res in results["merges"].items():
        if "error" in res:
            print(f"{op}: FAILED {res['error']}")
            continue
        print(
            f"{op}: peak RSS {res['peak_rss_bytes'] / gib:.2f} GiB = "
            f"{res['peak_over_input']:.2f}x the input, {res['wall_s']:.1f} s "
            f"(target {limit / gib:.2f} GiB: {'met' if res['target_met'] else 'missed'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
