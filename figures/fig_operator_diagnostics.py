"""Every registered merge operator on the same correlated experts, against n.

Reads ``results/operator_diagnostics`` and draws, for the largest correlation in the
sweep, three panels against ``n`` with one curve per operator (stderr error bars):
retention (mean cosine of the merged update with each expert), norm ratio, and the merged
update's sign conflict with the experts.

Output: ``figures/out/fig_operator_diagnostics.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_operator_diagnostics"
RESULTS = ("operator_diagnostics",)
_PANELS = (
    ("retention", "retention: mean cos(merged, expert)"),
    ("norm_ratio", "norm ratio ||merged|| / mean ||expert||"),
    ("merge_sign_conflict", "sign conflict of the merge with experts"),
)


def make_figure(arrays: dict[str, np.ndarray]):
    """Build the figure from the saved arrays (no computation beyond indexing)."""
    ns = arrays["num_tasks_grid"]
    names = [str(s) for s in arrays["operators"]]
    j = len(arrays["rho_grid"]) - 1
    rho = float(arrays["rho_grid"][j])
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.2), sharex=True)
    for ax, (metric, title) in zip(axes, _PANELS, strict=True):
        mean, err = arrays[f"{metric}_mean"], arrays[f"{metric}_stderr"]
        for a, name in enumerate(names):
            ax.errorbar(
                ns,
                mean[a, :, j],
                yerr=err[a, :, j],
                marker="o",
                ms=3,
                color=cmap(a % 20),
                label=name,
            )
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(int(n)) for n in ns])
        ax.set_xlabel("number of experts n")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    fig.suptitle(rf"All registered merge operators, correlated experts ($\rho$ = {rho:g})")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure)


if __name__ == "__main__":
    sys.exit(main())
