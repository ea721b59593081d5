r"""H-bound / H-lower / H-correlated / H-saturation: coverage against ``n`` and its limits.

Reads ``results/saturation`` (``experiments/saturation.py``). Panels:

1. hull coverage :math:`w(S_n)/R_n` of every sampler family (with stderr bands), the
   upper bound :math:`\min(\sqrt{2\log n}, \mathbb E\chi_r)` (black) and each family's
   Sudakov-Fernique lower bound :math:`L_n/R_n` (dotted);
2. the same for ``hull0`` (origin included: :math:`\sqrt{2\log(n+1)}`);
3. correlated experts: coverage for every :math:`\rho` against the prediction
   :math:`\sqrt{1-\rho}\,E_n` (dashed);
4. effective dimension ``d``: coverage against ``n`` (log scale) saturating at the cap
   :math:`\mathbb E\chi_d` (dashed), with :math:`\sqrt{2\log n}` in grey.

Output: ``figures/out/fig_saturation.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, rho_colors, run_figure

NAME = "fig_saturation"
RESULTS = ("saturation",)


def _bounds_panel(ax, arrays, labels, k, title):
    ns = arrays["ns"]
    colors = rho_colors(len(labels))
    for f, label in enumerate(labels):
        cov = arrays["bounds_coverage"][f, k]
        se = arrays["bounds_coverage_stderr"][f, k]
        ax.plot(ns, cov, color=colors[f], label=label)
        ax.fill_between(ns, cov - 2 * se, cov + 2 * se, color=colors[f], alpha=0.2, lw=0)
        radius = arrays["bounds_radius"][f, k]
        ax.plot(ns, arrays["bounds_lower"][f, k] / radius, color=colors[f], ls=":", lw=1.0)
    upper = arrays["bounds_upper"][0, k] / arrays["bounds_radius"][0, k]
    ax.plot(ns, upper, color="k", lw=1.2, label="upper bound / R")
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel("number of experts n")
    ax.set_ylabel("coverage w / max||t||")


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    labels = [f[0] for f in cfg["families"]]
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.8))
    _bounds_panel(axes[0], arrays, labels, 0, "hull: bounds (dotted: lower)")
    _bounds_panel(axes[1], arrays, labels, 1, "hull0: bounds (dotted: lower)")
    axes[0].legend(loc="upper left", fontsize=6)

    ax = axes[2]
    ns = arrays["corr_ns"]
    rhos = arrays["rho_grid"]
    colors = rho_colors(len(rhos))
    for r, rho in enumerate(rhos):
        cov, se = arrays["corr_coverage"][r], arrays["corr_coverage_stderr"][r]
        ax.plot(ns, cov, color=colors[r], label=rf"$\rho$ = {rho:g}")
        ax.fill_between(ns, cov - 2 * se, cov + 2 * se, color=colors[r], alpha=0.2, lw=0)
        ax.plot(ns, arrays["corr_predicted"][r], color=colors[r], ls="--", lw=0.9)
    ax.set_title(r"correlated: dashed $\sqrt{1-\rho}\,E_n$")
    ax.set_xlabel("number of experts n")
    ax.legend(loc="upper left", fontsize=6)

    ax = axes[3]
    ns = arrays["cap_ns"]
    dims = arrays["cap_dims"]
    colors = rho_colors(len(dims))
    for j, d in enumerate(dims):
        cov, se = arrays["cap_coverage"][j], arrays["cap_coverage_stderr"][j]
        ax.plot(ns, cov, color=colors[j], label=f"d = {d}")
        ax.fill_between(ns, cov - 2 * se, cov + 2 * se, color=colors[j], alpha=0.2, lw=0)
        ax.axhline(arrays["cap_value"][j], color=colors[j], ls="--", lw=0.9)
    ax.plot(ns, arrays["cap_upper_log"][0], color="0.5", lw=0.9, label=r"$\sqrt{2\log n}$")
    ax.set_ylim(0, 1.15 * float(np.max(arrays["cap_value"])))
    ax.set_xscale("log", base=2)
    ax.set_title(r"effective dimension d: cap $\mathbb{E}\chi_d$ (dashed)")
    ax.set_xlabel("number of experts n")
    ax.legend(loc="lower right", fontsize=6)
    fig.suptitle("Saturation of the coverage w(S_n) / max||t|| (bands: 2 s.e.)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
