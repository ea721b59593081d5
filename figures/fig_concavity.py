r"""H-concavity: width curves and their second differences, per set family.

Reads ``results/concavity`` (``experiments/concavity.py``). Top row, one panel per set
family: :math:`w(S_n)` against ``n`` for every sampler family (solid: fixed ordering,
dashed: mean over random ``n``-subsets; red: the adversarial tiny-first ordering; dotted
black on the zonotope panel: the closed form :math:`\sum_{i\le n}\|\tau_i\|/\sqrt{2\pi}`).
Bottom row: the paired second differences :math:`\Delta^2 w` at their centre ``n`` with
``z``-stderr bars (filled: fixed, open: random subsets); concavity means every bar below 0.

Output: ``figures/out/fig_concavity.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, rho_colors, run_figure

NAME = "fig_concavity"
RESULTS = ("concavity",)


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    kinds = cfg["kinds"]
    labels = [f[0] for f in cfg["families"]] + ["tiny-first"]
    z = float(cfg["z"])
    ns = arrays["ns"]
    colors = rho_colors(len(labels) - 1) + ["tab:red"]
    mean, d2, d2se = arrays["mean"], arrays["diff2"], arrays["diff2_stderr"]
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.0 * len(kinds), 5.6), squeeze=False)
    for k, kind in enumerate(kinds):
        top, bot = axes[0, k], axes[1, k]
        for f, label in enumerate(labels):
            c = colors[f]
            top.plot(ns, mean[f, k, 0], color=c, marker="o", ms=3, label=label)
            top.plot(ns, mean[f, k, 1], color=c, ls="--", lw=1.0)
            centre = ns[1:-1] + 0.08 * (f - len(labels) / 2)
            bot.errorbar(
                centre, d2[f, k, 0], yerr=z * d2se[f, k, 0], color=c, marker="o", ls="none"
            )
            bot.errorbar(
                centre + 0.04,
                d2[f, k, 1],
                yerr=z * d2se[f, k, 1],
                color=c,
                marker="o",
                mfc="none",
                ls="none",
            )
        if kind == "zonotope":
            for f in range(len(labels)):
                top.plot(ns, arrays["zonotope_closed_form"][f], color="k", ls=":", lw=0.8)
        bot.axhline(0.0, color="k", lw=0.8)
        top.set_title(kind)
        bot.set_xlabel("number of experts n")
        if k == 0:
            top.set_ylabel("width w(S_n)")
            bot.set_ylabel(rf"$\Delta^2 w$ ($\pm{z:g}$ s.e.)")
    axes[0, 0].legend(loc="upper left", fontsize=6)
    fig.suptitle("H-concavity: solid = fixed ordering, dashed / open = mean over random n-subsets")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
