r"""Real experts: predicted (width) against observed (performance) :math:`n^\star`.

Reads ``results/real_merging``. For each definition (gain ratio, utility; the same
:math:`\kappa`), every operator, modality and expert set is one point: x = :math:`n^\star`
of the hull0 width curve, y = :math:`n^\star` of the all-task performance curve, both on the
same random subsets, with their confidence sets as bars (open markers: censored, the true
value is at least the one shown). Points on the diagonal are predicted correctly.

Output: ``figures/out/fig_real_nstar.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure
from figures.fig_real_merging import panels, tag

NAME = "fig_real_nstar"
RESULTS = ("real_merging",)
DEFINITIONS = ("gain ratio", "utility")
MARKERS = {"vision": "o", "language": "s"}


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    ops = list(cfg["operators"])
    rows = panels(a, metadata)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.6))
    top = 2
    for d, ax in enumerate(axes):
        seen: set[str] = set()
        for i, op in enumerate(ops):
            for mod, es in rows:
                key = f"{mod}_{es}_{tag(op)}_nstar"
                if key not in a:
                    continue
                p_n, p_lo, p_hi, p_c, o_n, o_lo, o_hi, o_c = a[key][d]
                if np.isnan(p_n) or np.isnan(o_n):
                    continue
                jitter = 0.06 * (i - len(ops) / 2) + (0.03 if es == "lora" else 0.0)
                x, y = p_n + jitter, o_n + jitter
                top = max(top, p_hi, o_hi)
                face = "none" if (p_c or o_c) else f"C{i % 10}"
                ax.errorbar(
                    x,
                    y,
                    xerr=[[p_n - p_lo], [p_hi - p_n]],
                    yerr=[[o_n - o_lo], [o_hi - o_n]],
                    fmt=MARKERS.get(mod, "^"),
                    color=f"C{i % 10}",
                    mfc=face,
                    ms=5,
                    lw=0.7,
                    label=None if op in seen else seen.add(op) or op,
                )
        ax.plot([0.5, top + 0.5], [0.5, top + 0.5], "k:", lw=1)
        ax.set_xlabel(r"predicted $n^\star$ (hull0 width curve)")
        ax.set_ylabel(r"observed $n^\star$ (all-task performance)")
        ax.set_title(rf"{DEFINITIONS[d]}, $\kappa$ = {float(cfg['kappa']):g}")
    axes[0].legend(fontsize=6, ncol=2, title="circle: vision, square: language", title_fontsize=6)
    fig.suptitle(r"Does the width curve predict where merged performance stops improving?")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
