r"""Interference diagnostics of correlated synthetic experts against the number of experts.

Reads ``results/diagnostics`` (written by ``experiments/diagnostics.py``) and draws six
panels against ``n``, one curve per correlation :math:`\rho` with stderr error bars:
mean off-diagonal cosine (dashed: :math:`\rho`), sign-conflict rate (dashed: the
closed form :math:`\arccos\sqrt{(1+(n-1)\rho)/n}/\pi`), TSV singular interference
(log scale), and the three kinship measures PCC, CS (``|cos|``) and ED (dashed:
:math:`\text{norm}\sqrt{2(1-\rho)}`).

Output: ``figures/out/fig_diagnostics.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, rho_colors, run_figure

NAME = "fig_diagnostics"
RESULTS = ("diagnostics",)

_PANELS = (
    ("cosine", "mean off-diagonal cosine", "cosine_theory", False),
    ("sign_conflict", "sign-conflict rate (TIES mass sign)", "sign_conflict_theory", False),
    ("tsv_interference", "TSV singular interference", None, True),
    ("pcc", "kinship: PCC", "cosine_theory", False),
    ("cs", "kinship: CS = |cos|", None, False),
    ("ed", "kinship: ED", "ed_theory", False),
)


def make_figure(arrays: dict[str, np.ndarray]):
    """Build the figure from the saved arrays (no computation beyond indexing)."""
    ns = arrays["num_tasks_grid"]
    rhos = arrays["rho_grid"]
    colors = rho_colors(len(rhos))
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.0), sharex=True)
    for ax, (metric, title, theory, logy) in zip(axes.flat, _PANELS, strict=True):
        mean, err = arrays[f"{metric}_mean"], arrays[f"{metric}_stderr"]
        for j, rho in enumerate(rhos):
            ax.errorbar(
                ns,
                mean[:, j],
                yerr=err[:, j],
                color=colors[j],
                marker="o",
                label=rf"$\rho$ = {rho:g}",
            )
            if theory is not None:
                ax.plot(ns, arrays[theory][:, j], color=colors[j], ls="--", lw=0.9)
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(int(n)) for n in ns])
        if logy:
            ax.set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel("number of experts n")
    axes.flat[0].legend(loc="best", title="dashed: theory")
    fig.suptitle("Interference diagnostics of correlated synthetic task vectors")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure)


if __name__ == "__main__":
    sys.exit(main())
