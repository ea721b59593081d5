r"""Per-instance mergeability against the LoRA rank: does base knowledge dominate size?

Reads ``results/instance_mergeability`` (``experiments/instance_mergeability.py``; the rank
sweep of ``experiments/instance_rank_sweep.py`` plus the default rank) and draws two
panels under the reference operator (KnOTS, ``M = 50``, ``N = 5``), one point per rank,
with 95% cluster-bootstrap intervals over source files:

(a) Spearman :math:`\rho` of :math:`\hat S` with :math:`\Delta_\text{base}`, with the
    update's size (:math:`\|\Delta W\|_F`, :math:`\sigma_\max`) and the partial
    :math:`\rho` of :math:`\Delta_\text{base}` given both (below 0: predicts lower
    mergeability);
(b) dominance, tested: the paired difference :math:`\rho(\Delta_\text{base}) -
    \rho(\text{size})` (below 0: base knowledge the stronger predictor), with the number of
    fixed updates and the mean :math:`\hat S` per rank in the tick labels.

Output: ``figures/out/fig_instance_rank_sweep.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_instance_rank_sweep"
RESULTS = ("instance_mergeability",)

_SERIES = (  # column of the dominance arrays (experiments.instance_rank_sweep.PREDICTORS)
    ("delta_base", r"$\Delta_{base}$", "tab:blue", "o"),
    ("partial_delta_base", r"$\Delta_{base}$ given both sizes (partial)", "tab:purple", "D"),
    ("frobenius", r"$\|\Delta W\|_F$", "tab:orange", "s"),
    ("sigma_max", r"$\sigma_{max}$", "tab:green", "^"),
)
_DIFFS = (
    ("delta_base_minus_frobenius", r"$\rho(\Delta_{base}) - \rho(\|\Delta W\|_F)$",
     "tab:orange", "s"),
    ("delta_base_minus_sigma_max", r"$\rho(\Delta_{base}) - \rho(\sigma_{max})$",
     "tab:green", "^"),
)  # fmt: skip


def _by_rank(arrays: dict[str, np.ndarray], summary: dict):
    """Ranks (sorted), their ``[3, P]`` dominance stats, fixed counts and mean S-hat."""
    rank0 = int(summary["lora_rank"])
    ranks = [rank0] + [int(r) for r in arrays["rank_sweep_ranks"]]
    dom = [arrays["dominance"][0]] + list(arrays["rank_sweep_dominance"])
    fixed = [int(summary["num_fixed"])] + [int(f) for f in arrays["rank_sweep_fixed"]]
    mean_s = [summary[f"S_mean_{arrays['operators'][0]}"]]
    mean_s += [summary.get(f"rank_sweep_{r}_s", np.nan) for r in ranks[1:]]
    order = np.argsort(ranks)
    return (np.array(ranks)[order], np.stack(dom)[order], np.array(fixed)[order],
            np.array(mean_s, float)[order], rank0)  # fmt: skip


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the summary in ``metadata``."""
    conf = metadata.get("config", {})
    summary = conf.get("summary", {})
    preds = [str(p) for p in arrays["predictors"]]
    ranks, dom, fixed, mean_s, rank0 = _by_rank(arrays, summary)
    x = np.arange(ranks.size)
    ticks = [f"r = {r}{' (default)' if r == rank0 else ''}\n{f} fixed\nmean $\\hat S$ {s:.2f}"
             for r, f, s in zip(ranks, fixed, mean_s, strict=True)]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.6), layout="constrained")
    for ax, series, title in (
        (axes[0], _SERIES, r"(a) Spearman $\rho$ with $\hat S$"),
        (axes[1], _DIFFS, "(b) dominance: paired difference (< 0: base knowledge stronger)"),
    ):
        offsets = np.linspace(-0.12, 0.12, len(series))
        for (col, label, color, marker), dx in zip(series, offsets, strict=True):
            j = preds.index(col)
            v, lo, hi = dom[:, 0, j], dom[:, 1, j], dom[:, 2, j]
            ax.errorbar(x + dx, v, yerr=[v - lo, hi - v], marker=marker, color=color,
                        capsize=3, label=label)  # fmt: skip
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, ticks, fontsize=9)
        ax.set_xlim(-0.5, ranks.size - 0.5)
        ax.set_xlabel("LoRA rank of the per-instance updates")
        ax.set_title(title, fontsize=11)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=2)
    axes[0].set_ylabel(r"Spearman $\rho$ (95% file bootstrap)")
    axes[1].set_ylabel(r"difference of Spearman $\rho$")
    setting = f"{arrays['operators'][0]}, M = {conf.get('num_partners', '?')}, "
    setting += f"N = {conf.get('num_trials', '?')}"
    fig.suptitle(f"Base knowledge vs update size across LoRA ranks ({setting})")
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
