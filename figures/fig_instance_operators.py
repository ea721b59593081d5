r"""Per-instance mergeability: weaker vs stronger operators, and the weighted merges.

Reads ``results/instance_mergeability`` (``experiments/instance_mergeability.py``, the
analyses of ``experiments/instance_operators.py``) and draws three panels:

(a) per operator (mean, TIES, KnOTS), the base-knowledge effect on :math:`\hat S`: Spearman
    :math:`\rho` with :math:`\Delta_\text{base}`, its partial value given the update's size,
    and :math:`\rho` with the score gap, with 95% cluster-bootstrap intervals over files;
(b) the paired differences between operators (stronger minus weaker, the same files
    resampled for both): above 0 the effect shrinks under the stronger operator, below 0 it
    grows;
(c) the weighted merges on random sets of the zoo's task experts: retained gain of the
    base-knowledge weighted merge minus its unweighted version (linear: minus the mean;
    weighted KnOTS: minus KnOTS; plain KnOTS minus the mean in the title), on all tasks and
    on the halves the base knows least / best (mean over replicates, 95% t-interval;
    temperature chosen on val, gains on test).

Output: ``figures/out/fig_instance_operators.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_instance_operators"
RESULTS = ("instance_mergeability",)

_STATS = (  # experiments.instance_operators.CONTRAST_STATS order
    (r"$\Delta_{base}$", "tab:blue"),
    (r"$\Delta_{base}$ given size (partial)", "tab:purple"),
    ("score gap", "tab:red"),
)
_WEIGHTED = (
    ("weighted_minus_mean", "weighted - mean (linear)", "tab:blue"),
    ("weighted_knots_minus_knots", "weighted KnOTS - KnOTS", "tab:orange"),
)
_NAMES = {"average": "mean", "ties": "TIES", "knots": "KnOTS"}
_PARTS = (("all", "all tasks"), ("low", "base knows least"), ("high", "base knows best"))


def _bars(ax, values, lows, highs, labels, colors, names) -> None:
    """Grouped bars ``values [groups, series]`` with intervals; series labelled."""
    width = 0.8 / values.shape[1]
    for k in range(values.shape[1]):
        x = np.arange(values.shape[0]) + (k - (values.shape[1] - 1) / 2) * width
        v = values[:, k]
        ax.bar(x, v, width=width, color=colors[k], alpha=0.8, label=labels[k])
        ax.errorbar(x, v, yerr=[v - lows[:, k], highs[:, k] - v], ls="none", color="k")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(values.shape[0]), names, fontsize=10)
    ax.legend(fontsize=9)


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the summary in ``metadata``."""
    summary = metadata.get("config", {}).get("summary", {})
    ops = [str(o) for o in arrays["operators"]]
    order = [ops.index(o) for o in ("average", "ties", "knots") if o in ops]  # weak -> strong
    per_op = arrays["operator_contrast_per_op"][:, order]  # [3, ops, stats]
    labels, colors = [s[0] for s in _STATS], [s[1] for s in _STATS]
    fig, axes = plt.subplots(1, 3, figsize=(15.0, 5.0), layout="constrained")

    ax = axes[0]
    _bars(ax, per_op[0], per_op[1], per_op[2], labels, colors,
          [_NAMES.get(ops[i], ops[i]) for i in order])  # fmt: skip
    ax.set_ylabel(r"Spearman $\rho$ with $\hat S$ (95% file bootstrap)", fontsize=10)
    ax.set_title(r"(a) base-knowledge effect per operator (weak $\to$ strong)", fontsize=11)

    ax = axes[1]
    diff = arrays["operator_contrast"]  # [3, pairs, stats]
    pairs = [" - ".join(_NAMES.get(o, o) for o in str(p).split("-"))
             for p in arrays["operator_contrast_pairs"]]  # fmt: skip
    _bars(ax, diff[0], diff[1], diff[2], labels, colors, pairs)
    ax.set_ylabel(r"difference of $\rho$ (paired over files)", fontsize=10)
    ax.set_title("(b) stronger minus weaker (> 0: the effect shrinks)", fontsize=11)

    ax = axes[2]
    get = lambda c, p, t: summary.get(f"{c}_{p}{t}", np.nan)  # noqa: E731
    vals = np.array([[[get(c, p, t) for c, *_ in _WEIGHTED] for p, _ in _PARTS]
                     for t in ("", "_lo", "_hi")])  # fmt: skip
    _bars(ax, vals[0], vals[1], vals[2], [w[1] for w in _WEIGHTED], [w[2] for w in _WEIGHTED],
          [p[1] for p in _PARTS])  # fmt: skip
    ax.set_ylabel("retained gain difference (test)", fontsize=10)
    reps, tasks = summary.get("weighted_replicates", "?"), summary.get("weighted_tasks", "?")
    knots = summary.get("knots_minus_mean_all", np.nan)
    ax.set_title(f"(c) weighted merges ({reps} sets of {tasks} task experts)\n"
                 f"(plain KnOTS - mean, all tasks: {knots:+.2f})", fontsize=11)  # fmt: skip
    fig.suptitle("Operator strength and base-knowledge weighting (reconstruction of "
                 "Rahamim et al.)", fontsize=12)  # fmt: skip
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
