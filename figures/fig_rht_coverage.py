r"""H-RHT: width gain of per-expert reparameterizations, split into rescaling and geometry.

Reads ``results/rht_coverage`` (``experiments/rht_coverage.py``). Panels:

1. code-level RHT on the correlated family: total, rescaling and geometric log-gain of the
   hull width against the density;
2. geometric log-gain (equal norm budget) against the density for ``rht`` (= ``magnitude
   prune``) and ``dare``, isotropic (dashed) and correlated (solid) experts, with the
   :math:`D\to\infty` prediction (dotted) and ``z``-stderr bars;
3. the same against the tail index :math:`\nu` of the Student-t scale mixture;
4. coverage :math:`w(S_n)/R_n` of correlated experts against ``n`` before and after.

Output: ``figures/out/fig_rht_coverage.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_rht_coverage"
RESULTS = ("rht_coverage",)
_METHODS = ("rht", "magnitude_prune", "dare")
_COLORS = {"rht": "tab:blue", "magnitude_prune": "tab:cyan", "dare": "tab:orange"}


def make_figure(arrays: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    z = float(cfg["z"])
    rhos = arrays["rhos"]
    dens = arrays["densities"]
    nus = arrays["nus"]
    corr = int(np.argmax(rhos)) if np.any(rhos > 0) else 0
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.8))

    ax = axes[0]
    m = _METHODS.index("rht")
    ax.plot(dens, arrays["density_log_total"][corr, m], "k-o", label="total")
    ax.plot(dens, arrays["density_log_rescale"][corr, m], "b--s", label="rescaling")
    ax.errorbar(
        dens,
        arrays["density_log_geometry"][corr, m],
        yerr=z * arrays["density_log_geometry_se"][corr, m],
        color="tab:green",
        marker="^",
        label="geometry (equal budget)",
    )
    ax.set_title(rf"RHT, $\rho$ = {rhos[corr]:g}: log-gain of the hull width")
    ax.set_xlabel("density")
    ax.legend(fontsize=6)

    ax = axes[1]
    for f, rho in enumerate(rhos):
        ls = "-" if rho > 0 else "--"
        for name in ("rht", "dare"):
            m = _METHODS.index(name)
            ax.errorbar(
                dens,
                arrays["density_log_geometry"][f, m],
                yerr=z * arrays["density_log_geometry_se"][f, m],
                color=_COLORS[name],
                ls=ls,
                marker="o",
                label=rf"{name}, $\rho$ = {rho:g}" + (" (dashed)" if rho == 0 else ""),
            )
            ax.plot(dens, arrays["density_predicted_geometry"][f, m], color=_COLORS[name], ls=":")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_title("geometric log-gain (dotted: prediction)")
    ax.set_xlabel("density")
    ax.legend(fontsize=6)

    ax = axes[2]
    finite = np.isfinite(nus)
    x = np.where(finite, nus, 2.0 * np.max(nus[finite]) if np.any(finite) else 1.0)
    for f, rho in enumerate(rhos):
        ls = "-" if rho > 0 else "--"
        ax.errorbar(
            x,
            arrays["heavy_log_geometry"][f],
            yerr=z * arrays["heavy_log_geometry_se"][f],
            color="tab:purple",
            ls=ls,
            marker="o",
            label=rf"$\rho$ = {rho:g}",
        )
        ax.plot(x, arrays["heavy_predicted_geometry"][f], color="tab:purple", ls=":")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [f"{v:g}" if np.isfinite(v) else r"$\infty$" for v in nus])
    ax.set_title(r"Student-t mixing: geometric log-gain vs $\nu$")
    ax.set_xlabel(r"tail index $\nu$")
    ax.legend(fontsize=6)

    ax = axes[3]
    ns = arrays["curve_ns"]
    names = ("original", "rht", "dare", "heavy_tailed")
    for i, name in enumerate(names):
        cov, se = arrays["curve_coverage"][i], arrays["curve_coverage_se"][i]
        ax.plot(ns, cov, marker="o", ms=3, label=name)
        ax.fill_between(ns, cov - 2 * se, cov + 2 * se, alpha=0.2, lw=0)
    ax.set_title(rf"coverage w/max||t||, $\rho$ = {cfg['curve_rho']:g}")
    ax.set_xlabel("number of experts n")
    ax.legend(fontsize=6)
    fig.suptitle("H-RHT: coverage gain = rescaling + geometry (bars: z s.e. over draws)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
