"""Write a :class:`~mergetheory.analysis.pool.PoolAnalysis` as a report folder.

``analysis.json`` (every number, the config, versions and input fingerprints),
``analysis.md`` (a readable summary with verdicts) and figures ``width_curves.png`` /
``.pdf`` and ``cosine.png`` / ``.pdf``. Every file is written atomically. matplotlib (the
``experiments`` extra) is imported here only, when the figures are drawn; without it the
JSON and Markdown are still written and the figures are reported missing.
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
    lines += ["", "Every number, with standard errors, is in `analysis.json`.", ""]
    return "\n".join(lines)


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
    plt.close("all")
    return written


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
