r"""Per-instance mergeability on the language base (Rahamim et al.'s unit, reconstructed).

Reads ``results/instance_mergeability`` (``experiments/instance_mergeability.py``) and
draws six panels, one per claim:

(a) the distribution of :math:`\hat S` (``M = 50``, ``N = 5``) per operator against the
    :math:`\mathrm{Binomial}(N, \bar p)` null (dashed): is mergeability a trait?
(b) base knowledge per score level: the mean score gap :math:`s_\text{top} -
    s_\text{label}` (nats) of the updates at each :math:`\hat S` level (the saturated
    :math:`\Delta_\text{base}` has the same ranks up to ties);
(c) dominance: Spearman :math:`\rho` of :math:`\hat S` with :math:`\Delta_\text{base}`,
    :math:`\|\Delta W\|_F`, :math:`\sigma_\max` and the partial :math:`\rho` of
    :math:`\Delta_\text{base}` given the two, with cluster-bootstrap intervals over files;
(d) stability: Spearman of the swept estimators with the reference scores;
(e) locality: survival of the top-level updates merged with partners from each bin;
(f) the per-task level: retained gain of the zoo's LoRA task experts at ``M = 10`` against
    the base's bits per byte on the task, and (title) the base-knowledge weighted merge
    minus the mean on the tasks the base knows least / best (mean over replicates).

Output: ``figures/out/fig_instance_mergeability.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_instance_mergeability"
RESULTS = ("instance_mergeability",)

_COLORS = ("tab:blue", "tab:orange", "tab:green")
_LABELS = {
    "delta_base": r"$\Delta_{base}$",
    "frobenius": r"$\|\Delta W\|_F$",
    "sigma_max": r"$\sigma_{max}$",
    "partial_delta_base": r"$\Delta_{base}$ | both",
    "score_gap": "score gap",
}


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays (indexing and means only)."""
    ops = [str(o) for o in arrays["operators"]]
    levels = arrays["levels"]
    fig, grid = plt.subplots(2, 3, figsize=(15.0, 8.6))
    axes = grid.reshape(-1)
    width = 0.8 / len(ops)

    ax = axes[0]
    for k, op in enumerate(ops):
        x = np.arange(levels.size) + (k - 1) * width
        ax.bar(x, arrays["null_observed"][k], width=width, color=_COLORS[k], alpha=0.75,
               label=op)  # fmt: skip
        ax.plot(x, arrays["null_expected"][k], color=_COLORS[k], ls="--", marker=".")
    ax.set_xticks(np.arange(levels.size), [f"{v:.1f}" for v in levels])
    ax.set_yscale("symlog", linthresh=10)
    conf = metadata.get("config", {})
    ax.set_xlabel(rf"$\hat S$ ($M$ = {conf.get('num_partners', '?')}, "
                  rf"$N$ = {conf.get('num_trials', '?')})")  # fmt: skip
    ax.set_ylabel("updates")
    ax.set_title("(a) score distribution vs binomial null")
    ax.legend()

    ax = axes[1]
    for k, op in enumerate(ops):
        s = arrays["s_ref"][k]
        at = [np.isclose(s, lv) for lv in levels]
        gap = [arrays["score_gap"][m].mean() if m.any() else np.nan for m in at]
        ax.plot(levels, gap, "o-", color=_COLORS[k], label=op)
    ax.set_xlabel(r"$\hat S$ level")
    ax.set_ylabel(r"mean $s_{top} - s_{label}$ of the base (nats)")
    ax.set_title("(b) base knowledge per score level")
    ax.legend()

    ax = axes[2]
    preds = [str(p) for p in arrays["predictors"]][:4]
    dom = arrays["dominance"]
    for k, op in enumerate(ops):
        x = np.arange(len(preds)) + (k - 1) * width
        v, lo, hi = dom[k, 0, :4], dom[k, 1, :4], dom[k, 2, :4]
        ax.bar(x, v, width=width, color=_COLORS[k], alpha=0.75, label=op)
        ax.errorbar(x, v, yerr=[v - lo, hi - v], ls="none", color="k", capsize=2)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(preds)), [_LABELS[p] for p in preds], fontsize=8)
    ax.set_ylabel(r"Spearman $\rho$ with $\hat S$")
    ax.set_title("(c) dominance (95% cluster bootstrap)")
    ax.legend(fontsize=8)

    ax = axes[3]
    settings = arrays["sweep_settings"]
    names = [f"M={m}\nN={n}" for m, n in settings]
    for k, op in enumerate(ops):
        x = np.arange(len(names)) + (k - 1) * width
        ax.bar(x, arrays["stability"][k], width=width, color=_COLORS[k], alpha=0.75, label=op)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(r"Spearman with the reference $\hat S$")
    ax.set_title(f"(d) estimator stability vs M = {conf.get('num_partners', '?')}, "
                 f"N = {conf.get('num_trials', '?')}")  # fmt: skip
    ax.legend(fontsize=8)

    ax = axes[4]
    e = arrays["locality_edges"]
    bins = [f"S < {e[1]:g}", f"{e[1]:g} <= S < {e[2]:g}", f"S >= {e[2]:g}"]
    for k, op in enumerate(ops):
        loc, se = arrays["locality"][k], arrays["locality_stderr"][k]
        if np.all(np.isnan(loc)):
            continue
        ax.errorbar(np.arange(3), loc, yerr=se, marker="o", capsize=3, color=_COLORS[k],
                    label=op)  # fmt: skip
    ax.set_xticks(np.arange(3), bins, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("bin the partners are drawn from")
    ax.set_ylabel("survival of top-level updates")
    ax.set_title("(e) locality")
    ax.legend(fontsize=8)
    ax = axes[5]
    base = arrays["task_base_bpb"]
    for k, op in enumerate(ops):
        s_task = arrays["task_retained"][k].mean(0)
        v, lo, hi = arrays["task_rho"][k, 0]
        ax.plot(base, s_task, "o", color=_COLORS[k], alpha=0.8,
                label=rf"{op}: $\rho$ = {v:.2f} [{lo:.2f}, {hi:.2f}]")  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("base bits per byte on the task (higher: knows less)")
    ax.set_ylabel(r"retained gain $\hat S$ ($M$ = 10)")
    diff = arrays["weighted_diff"]
    ax.set_title("(f) task experts; weighted - mean, low/high: "
                 f"{diff[1].mean():+.3f} / {diff[2].mean():+.3f}", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)
    fig.suptitle("Per-instance LoRA updates on the byte-level language base: mergeability "
                 "(reconstruction of Rahamim et al.)")  # fmt: skip
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
