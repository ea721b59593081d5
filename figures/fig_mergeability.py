r"""Mergeability of digits experts against base knowledge (Rahamim et al., reconstructed).

Reads ``results/mergeability`` (written by ``experiments/mergeability.py``) and draws six
panels:

(a) task-level mergeability :math:`\hat S(\tau_t)` against the base model's accuracy on
    task ``t``, one colour per merge operator (error bars: Monte Carlo stderr), with the
    pooled Spearman :math:`\rho` and its bootstrap CI in the legend (H-BK);
(b) the retained fine-tuning gain :math:`(\hat S - \mathrm{acc}_0)/(\mathrm{acc}_t -
    \mathrm{acc}_0)` against base accuracy (experts with gain >= ``min_gain``);
(c) Spearman :math:`\rho` per operator with its CI and per-replicate values (H-MOD);
(d) example level: mean :math:`\hat S` of the examples fine-tuning fixed, in quantile
    bins of the base margin :math:`\Delta_\text{base} = p_0(\text{top}) - p_0(y)`;
(e) histogram of success counts of those examples against the
    :math:`\mathrm{Binomial}(N, \bar p)` null, per operator;
(f) the base-knowledge weighted merge of all experts: accuracy on the tasks the base
    knows least / best against the temperature, with the plain mean as dashed lines.

Output: ``figures/out/fig_mergeability.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_mergeability"
RESULTS = ("mergeability",)

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays (no computation beyond indexing)."""
    ops = [str(o) for o in arrays["operators"]]
    base_acc = arrays["base_acc"].reshape(-1)
    s_task = arrays["s_task"].reshape(len(ops), -1)
    s_err = arrays["s_task_stderr"].reshape(len(ops), -1)
    summary = metadata.get("config", {}).get("summary", {})
    level = summary.get("confidence_pct", 95)
    fig, axes = plt.subplots(2, 3, figsize=(12.0, 7.2))
    ax = axes[0, 0]
    for k, op in enumerate(ops):
        lo, hi = arrays["spearman_ci"][:, k]
        ax.errorbar(
            base_acc,
            s_task[k],
            yerr=s_err[k],
            ls="none",
            marker="o",
            color=_COLORS[k],
            alpha=0.8,
            label=rf"{op}: $\rho$ = {arrays['spearman'][k]:.2f} [{lo:.2f}, {hi:.2f}]",
        )
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8, label=r"$\hat S$ = base acc")
    ax.set_xlabel("base accuracy on the expert's task")
    ax.set_ylabel(r"mergeability $\hat S(\tau_t)$")
    ax.set_title(f"(a) H-BK, task level ({level}% CI)")
    ax.legend(loc="lower right")

    ax = axes[0, 1]
    keep = arrays["gain_kept"].reshape(-1)
    retained = arrays["retained_gain"].reshape(len(ops), -1)
    for k, op in enumerate(ops):
        label = op
        if "spearman_gain" in arrays:
            lo, hi = arrays["spearman_gain_ci"][:, k]
            label = rf"{op}: $\rho$ = {arrays['spearman_gain'][k]:.2f} [{lo:.2f}, {hi:.2f}]"
        ax.plot(base_acc[keep], retained[k, keep], "o", color=_COLORS[k], alpha=0.8, label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("base accuracy on the expert's task")
    ax.set_ylabel(r"retained gain $(\hat S - acc_0)/(acc_t - acc_0)$")
    ax.set_title("(b) H-BK on the fine-tuning gain")
    ax.legend(loc="best")

    ax = axes[0, 2]
    x = np.arange(len(ops))
    rho = arrays["spearman"]
    ci = arrays["spearman_ci"]
    ax.errorbar(
        x,
        rho,
        yerr=[rho - ci[0], ci[1] - rho],
        ls="none",
        marker="s",
        color="k",
        label="pooled",
    )
    per_rep = arrays["spearman_per_replicate"]
    for r in range(per_rep.shape[1]):
        ax.plot(
            x + 0.12,
            per_rep[:, r],
            "o",
            color="tab:grey",
            alpha=0.6,
            label="per replicate" if r == 0 else None,
        )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(x, ops)
    ax.set_ylabel(r"Spearman $\rho$(base acc, $\hat S$)")
    ax.set_title("(c) H-MOD: effect per operator")
    ax.legend(loc="best")

    ax = axes[1, 0]
    for k, op in enumerate(ops):
        lo, hi = arrays["spearman_margin_ci"][:, k]
        ax.plot(
            arrays["margin_bin_center"],
            arrays["margin_bin_s"][k],
            marker="o",
            color=_COLORS[k],
            label=rf"{op}: $\rho$ = {arrays['spearman_margin'][k]:.2f} [{lo:.2f}, {hi:.2f}]",
        )
    ax.set_xlabel(r"base margin $\Delta_{base} = p_0(top) - p_0(y)$ (bin mean)")
    ax.set_ylabel(r"mean $\hat S$ of fixed examples")
    ax.set_title(f"(d) H-BK, example level (n = {int(arrays['fixed'].sum())})")
    ax.legend(loc="best")

    ax = axes[1, 1]
    counts = np.arange(arrays["null_observed"].shape[1])
    width = 0.8 / len(ops)
    for k, op in enumerate(ops):
        ax.bar(
            counts + (k - (len(ops) - 1) / 2) * width,
            arrays["null_observed"][k],
            width=width,
            color=_COLORS[k],
            alpha=0.7,
            label=f"{op} observed",
        )
        ax.plot(counts, arrays["null_expected"][k], color=_COLORS[k], ls="--", marker=".")
    ax.set_xlabel(r"successes out of $N$ trials (fixed examples)")
    ax.set_ylabel("number of examples")
    ax.set_title(r"(e) binomial null (dashed: Binomial$(N, \bar p)$)")
    ax.legend(loc="upper center")

    ax = axes[1, 2]
    temps = arrays["temperatures"]
    ax.plot(temps, arrays["weighted_low_by_temp"], "o-", color="tab:red", label="weighted, low")
    ax.plot(temps, arrays["weighted_high_by_temp"], "o-", color="tab:blue", label="weighted, high")
    ax.axhline(float(arrays["mean_merge_low"]), color="tab:red", ls="--", label="mean, low")
    ax.axhline(float(arrays["mean_merge_high"]), color="tab:blue", ls="--", label="mean, high")
    ax.set_xscale("log")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.minorticks_off()
    ax.set_xlabel(r"temperature $\tau$ of softmax$((1 - acc_0)/\tau)$")
    ax.set_ylabel("accuracy of the merge of all experts")
    ax.set_title("(f) base-knowledge weighted merge")
    ax.legend(loc="best", title="tasks the base knows")
    fig.suptitle(
        "Mergeability of digits experts and base-model knowledge (reconstruction of Rahamim et al.)"
    )
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
