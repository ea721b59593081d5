"""The ``mergetheory analyze`` subcommand: a pool of experts -> widths, n* and a report.

::

    mergetheory analyze --base base/ expert1/ expert2/ expert3/ --out report/
    mergetheory analyze adapter1/ adapter2/ adapter3/ --out report/      # PEFT: no base
    mergetheory analyze --config merge.yml --out report/                  # mergekit YAML

Inputs may be PEFT adapter folders, Hugging Face model folders (single or sharded
safetensors), ``.safetensors`` / ``.msgpack`` / ``.npz`` files or orbax directories; the
report folder gets ``analysis.json``, ``analysis.md`` and figures (PNG + PDF; see
:func:`mergetheory.analysis.pool_report.write_pool_report`).
"""

from __future__ import annotations

import argparse
import sys

from .common import CliError, add_format_argument, one_line

__all__ = ["HELP", "add_arguments", "run"]

HELP = "analyze a pool of experts (PEFT, HF folders, safetensors, orbax, ...) into a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experts", nargs="*", metavar="EXPERT", help="expert files or folders")
    p.add_argument("--base", metavar="BASE", help="base model (not needed for PEFT adapters)")
    p.add_argument("--config", metavar="MERGE.yml", help="mergekit YAML listing the models")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--seed", type=int, default=0, help="every random number derives from it")
    p.add_argument("--num-samples", type=int, default=4096, help="Gaussian samples per curve")
    p.add_argument("--num-orders", type=int, default=8, help="random orders averaged")
    p.add_argument("--order", choices=("given", "greedy"), default="given")
    p.add_argument("--step", type=int, help="orbax CheckpointManager step (default: latest)")
    add_format_argument(p)
    p.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="NAME",
        help="add a registered or plugin operator to the RHT / TIES / DARE coverage "
        "comparison (repeatable)",
    )
    p.add_argument(
        "--density",
        type=float,
        default=0.7,
        help="density of every compared operator that takes one (default 0.7)",
    )
    p.add_argument("--coverage-set", choices=("hull", "hull0"), default="hull")
    p.add_argument(
        "--utility-cost",
        type=float,
        default=0.05,
        help="cost per expert of n* = argmax log w - c n",
    )
    p.add_argument(
        "--kinematic-m",
        type=float,
        action="append",
        metavar="M",
        help="dimension of the loss-preserving subspace for the kinematic n* (repeatable; "
        "default: three values, see analysis.md)",
    )
    p.add_argument("--eta", type=float, default=0.05, help="ALMT failure probability (kinematic)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False)
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import jax

    jax.config.update("jax_enable_x64", True)
    from ..analysis.pool import analyze_pool
    from ..analysis.pool_report import write_pool_report
    from ..io import CheckpointError
    from ..io.mergekit import load_mergekit_config

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    experts, base = list(args.experts), args.base
    try:
        if args.config:
            if experts:
                raise CliError("give either --config or EXPERT paths, not both")
            cfg = load_mergekit_config(args.config)
            experts = [str(p) for p in cfg.models]
            base = base or (str(cfg.base_model) if cfg.base_model else None)
        if len(experts) < 3:
            raise CliError(f"a pool analysis needs at least 3 experts, got {len(experts)}")
        for name, value in (("--num-samples", args.num_samples), ("--num-orders", args.num_orders)):
            if value < 2:
                raise CliError(f"{name} must be at least 2, got {value}")
        analysis = analyze_pool(
            experts,
            base,
            seed=args.seed,
            num_samples=args.num_samples,
            num_orders=args.num_orders,
            order=args.order,
            step=args.step,
            fmt=args.format,
            operators=args.operator,
            density=args.density,
            coverage_kind=args.coverage_set,
            utility_cost=args.utility_cost,
            kinematic_m=args.kinematic_m,
            eta=args.eta,
            progress=_progress(args.quiet),
        )
    except (CheckpointError, ValueError) as exc:  # PluginError is a ValueError
        raise CliError(one_line(str(exc))) from None
    written, note = write_pool_report(analysis, out)
    if note:
        sys.stderr.write(f"mergetheory analyze: note: {one_line(note)} (json and md written)\n")
    verdict = analysis.concavity["verdict"]
    n_star = analysis.n_star["gain_ratio_kappa=0.5"]
    cov = analysis.coverage["operators"]
    best = max(cov, key=lambda k: cov[k]["equal_budget_width"][0])
    sys.stdout.write(
        f"analyzed {len(experts)} experts (D = {analysis.num_params}) -> {out}: "
        f"concavity {verdict.status}; n* (kappa=0.5) = {n_star['n_star']} "
        f"[{n_star['ci_low']}, {n_star['ci_high']}]; widest at equal norm budget: {best}; "
        f"{len(written)} files\n"
    )
    return 0
