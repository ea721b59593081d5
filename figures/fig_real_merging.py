r"""Real experts: merged performance against n per operator, with the width curve overlaid.

Reads ``results/real_merging`` (``experiments/real_merging.py``). One row per modality and
expert set (full fine-tunes, LoRA). Left: normalised performance on the *merged* tasks
(1 = each task's own expert) per operator, mean over the random nested subsets with 2
standard-error bands. Right: normalised performance on *all* tasks (coverage), and on a
second axis the hull0 width :math:`w(\operatorname{conv}\{0,\tau_{1..n}\})` of the same task
vectors on the same subsets, divided by :math:`w_1` (dashed black). The two axes have
different units: only the shapes (where each curve flattens) are comparable.

Output: ``figures/out/fig_real_merging.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_real_merging"
RESULTS = ("real_merging",)
MAIN_OPERATORS = (
    "average",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "rht",
    "base_knowledge",
    "tsv_m",
    "iso_c",
)


def tag(label: str) -> str:
    """Results key of an operator label (as ``experiments.real_merging.tag``)."""
    return label.replace("@", "_at_").replace("[AB]", "_ab")


def panels(arrays: dict, metadata: dict) -> list[tuple[str, str]]:
    """``(modality, expert set)`` pairs present in the results."""
    mods = metadata["config"]["modalities"]
    return [(m, s) for m in mods for s in ("full", "lora") if f"{m}_{s}_width" in arrays]


def mean_band(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over paths and twice its standard error."""
    return paths.mean(0), 2 * paths.std(0, ddof=1) / np.sqrt(paths.shape[0])


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    ops = [o for o in MAIN_OPERATORS if o in metadata["config"]["operators"]]
    rows = panels(a, metadata)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10.5, 3.1 * len(rows)), squeeze=False)
    for r, (mod, es) in enumerate(rows):
        pre = f"{mod}_{es}"
        for c, curve in enumerate(("perf_merged", "perf_all")):
            ax = axes[r, c]
            for i, op in enumerate(ops):
                if f"{pre}_{tag(op)}_{curve}" not in a:
                    continue
                m, b = mean_band(a[f"{pre}_{tag(op)}_{curve}"])
                ns = np.arange(1, m.size + 1)
                ax.plot(ns, m, marker="o", ms=2.5, color=f"C{i}", label=op)
                ax.fill_between(ns, m - b, m + b, color=f"C{i}", alpha=0.15, lw=0)
            ax.set_xlabel("number of merged experts n")
            what = "merged tasks" if c == 0 else "all tasks"
            ax.set_ylabel(f"normalised perf., {what}")
            ax.set_title(f"{mod}, {es} experts: {what}")
            if c == 1:
                w, wb = mean_band(a[f"{pre}_width"])
                ax2 = ax.twinx()
                ax2.plot(ns, w / w[0], "k--", lw=1.6, label=r"hull0 width $w_n/w_1$")
                ax2.fill_between(ns, (w - wb) / w[0], (w + wb) / w[0], color="k", alpha=0.1)
                ax2.set_ylabel(r"width $w_n / w_1$ (dashed)")
                ax2.grid(False)
                ax2.legend(loc="lower right", fontsize=7)
        if r == 0:
            axes[0, 0].legend(ncol=2, fontsize=7)
    fig.suptitle("Real merges vs the width of the same task vectors (bands: 2 s.e. over subsets)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
