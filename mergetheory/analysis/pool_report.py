"""Write a :class:`~mergetheory.analysis.pool.PoolAnalysis` as a report folder.

``analysis.json`` (every number, the config, versions and input fingerprints),
``analysis.md`` (a readable summary with verdicts) and figures ``width_curves``,
``cosine`` and ``coverage`` (PNG + PDF). Every file is written atomically. matplotlib
(the ``experiments`` extra) is imported here only, when the figures are drawn; without it
the JSON and Markdown are still written and the figures are reported missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_write
from ..verdict import Verdict
from .pool import PoolAnalysis

__all__ = ["analysis_to_json", "write_pool_report"]


def _plain(x: Any) -> Any:
    if isinstance(x, Verdict):
        return str(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def analysis_to_json(analysis: PoolAnalysis) -> dict[str, Any]:
    """Every field of ``analysis`` as JSON-ready Python (verdicts as their prose form)."""
    return {k: _plain(v) for k, v in analysis._asdict().items()}


def _fmt(row: Any) -> str:
    return " | ".join(f"{v:.3f}" for v in row)


def _markdown(a: PoolAnalysis) -> str:
    n = len(a.experts)
    names = [Path(p).name for p in a.experts]
    off = ~np.eye(n, dtype=bool)
    lines = [
        "# Pool analysis",
        "",
        f"{n} experts{' (PEFT LoRA, Gram from the factors)' if a.factored else ''}, "
        f"D = {a.num_params} parameters, base: {a.base or 'none (inputs are deltas)'}.",
        f"Seed {a.config['seed']}, {a.config['num_samples']} Gaussian samples, "
        f"{a.config['num_orders']} random orders, order: {a.config['order']}.",
        "",
        "## Verdicts",
        "",
        f"- Concavity of n -> w(hull0): **{a.concavity['verdict']}**",
    ]
    for name, out in a.n_star.items():
        lines.append(
            f"- n* ({name}): **{out['n_star']}** (confidence set {out['ci_low']}..{out['ci_high']}"
            f"{', censored' if out['censored'] else ''}): {out['verdict']}"
        )
    lines += [
        "",
        "n* definitions: gain ratio (first n whose marginal hull0 gain is below kappa times "
        f"the first), utility (argmax of log w_n - {a.config['utility_cost']:g} n), kinematic "
        "(first n with delta(C_n) + m >= D - a_eta sqrt(D), eta = "
        f"{a.config['eta']:g}; m, the dimension of the loss-preserving subspace, is not known "
        "from checkpoints: "
        + (
            "given with --kinematic-m)."
            if a.config["kinematic_m"]
            else "by default m = D - a_eta sqrt(D) - q delta(C_N), q = 1/4, 1/2, 3/4, so n* is "
            "the first n whose cone reaches that fraction of the pool's statistical dimension)."
        ),
    ]
    lines += [
        "",
        "## Geometry",
        "",
        f"- mean off-diagonal cosine: {a.cosine[off].mean():.4f}",
        f"- mean off-diagonal sign conflict: {a.sign_conflict[off].mean():.4f}",
        "",
        "| expert | norm |",
        "|---|---|",
        *[f"| {nm} | {v:.4g} |" for nm, v in zip(names, a.norms, strict=True)],
        "",
        "## Width curves (order: " + ", ".join(names[i] for i in a.order) + ")",
        "",
        "| curve | " + " | ".join(f"n={i + 1}" for i in range(n)) + " |",
        "|---|" + "---|" * n,
    ]
    for kind, c in a.curves.items():
        lines.append(f"| {kind} (order) | {_fmt(c['order']['mean'])} |")
        lines.append(f"| {kind} (random orders) | {_fmt(c['random_orders']['mean'])} |")
    lines += _coverage_lines(a.coverage)
    lines += ["", "Every number, with standard errors, is in `analysis.json`.", ""]
    return "\n".join(lines)


def _coverage_lines(cov: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Coverage at equal norm budget ({cov['kind']} of the experts, each operator "
        f"acting on every expert alone; density {cov['density']:g} where taken)",
        "",
        "Coverage c = w / R (R: the largest norm in the set). The log width gain of an "
        "operator's merged set splits into rescaling (its norm budget) and geometry (the gain "
        "left at the experts' norm budget); standard errors are paired Monte Carlo ones.",
        "",
        "| operator | coverage before | coverage after | width at equal budget | "
        "log-gain = rescaling + geometry | verdict (extends coverage?) |",
        "|---|---|---|---|---|---|",
    ]
    for name, ev in cov["operators"].items():
        cb, ca, we = ev["coverage_before"], ev["coverage_after"], ev["equal_budget_width"]
        lines.append(
            f"| {name} | {cb[0]:.4f} +- {cb[1]:.2g} | {ca[0]:.4f} +- {ca[1]:.2g} | "
            f"{we[0]:.4g} +- {we[1]:.2g} | {ev['log_total_gain']:+.4f} = "
            f"{ev['log_rescale_gain']:+.4f} + ({ev['log_geometry_gain']:+.4f} +- "
            f"{ev['log_geometry_gain_stderr']:.2g}) | {ev['verdict']} |"
        )
    return lines


def _figures(a: PoolAnalysis, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("figures need matplotlib: pip install 'mergetheory[experiments]'") from e
    written = []
    ns = np.arange(1, len(a.experts) + 1)
    fig, axes = plt.subplots(1, len(a.curves), figsize=(4 * len(a.curves), 3.2))
    for ax, (kind, c) in zip(np.atleast_1d(axes), a.curves.items(), strict=True):
        for label, d in (("order", c["order"]), ("random orders", c["random_orders"])):
            ax.errorbar(ns, d["mean"], yerr=d["stderr"], marker="o", ms=3, label=label)
        ax.set_xlabel("n experts")
        ax.set_title(kind)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written += _save(fig, out / "width_curves")
    fig, ax = plt.subplots(figsize=(4, 3.4))
    im = ax.imshow(a.cosine, vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(im, ax=ax)
    ax.set_title("cosine")
    written += _save(fig, out / "cosine")
    written += _coverage_figure(plt, a.coverage, out)
    plt.close("all")
    return written


def _coverage_figure(plt: Any, cov: dict[str, Any], out: Path) -> list[Path]:
    names = list(cov["operators"])
    evs = [cov["operators"][k] for k in names]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    before = evs[0]["coverage_before"] if evs else (0.0, 0.0)
    ax1.axhline(before[0], color="k", ls="--", lw=1, label="experts")
    ax1.bar(x, [e["coverage_after"][0] for e in evs], yerr=[e["coverage_after"][1] for e in evs])
    ax1.set_title("coverage w / R of the merged set")
    ax1.legend(fontsize=7)
    ax2.bar(
        x,
        [e["log_geometry_gain"] for e in evs],
        yerr=[e["log_geometry_gain_stderr"] for e in evs],
    )
    ax2.axhline(0.0, color="k", lw=1)
    ax2.set_title("log width gain at equal norm budget")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=30, fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "coverage")


def _save(fig: Any, stem: Path) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_write(path) as f:
            fig.savefig(f, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(path)
    return paths


def write_pool_report(analysis: PoolAnalysis, out_dir: str | Path) -> tuple[list[Path], str]:
    """Write ``analysis.json``, ``analysis.md`` and the figures into ``out_dir``.

    Returns:
      ``(paths written, note)``; ``note`` says why figures are missing ("" if none).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "analysis.json", "w") as f:
        json.dump(analysis_to_json(analysis), f, indent=1, sort_keys=True)
    with atomic_write(out / "analysis.md", "w") as f:
        f.write(_markdown(analysis))
    written = [out / "analysis.json", out / "analysis.md"]
    try:
        written += _figures(analysis, out)
    except ImportError as e:
        return written, str(e)
    return written, ""
