r"""Real experts: the base model's Hessian spectrum by stochastic Lanczos quadrature.

Reads ``results/real_merging``. Per modality: the SLQ spectral density of the Hessian of
the base's loss (Ritz values weighted by their quadrature weights, pooled over probes)
against :math:`\log_{10}|\lambda|`, positive and negative eigenvalues apart, with the
curvature :math:`2\varepsilon/R^2` below which a step of the typical task-vector length
:math:`R` stays inside the quadratic sublevel set (dashed); the title gives :math:`D`, the
effective dimension :math:`m_{\mathrm{eff}}` and the kinematic :math:`n^\star`
(reconstructions).

Output: ``figures/out/fig_real_hessian.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_real_hessian"
RESULTS = ("real_merging",)


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    summ = cfg.get("summary") or metadata.get("summary", {})
    mods = [m for m in cfg["modalities"] if f"{m}_hessian_nodes" in a]
    fig, axes = plt.subplots(1, len(mods), figsize=(5.2 * len(mods), 3.8), squeeze=False)
    for ax, mod in zip(axes[0], mods, strict=True):
        nodes, weights = a[f"{mod}_hessian_nodes"], a[f"{mod}_hessian_weights"]
        probes = nodes.shape[0]
        t, w = nodes.reshape(-1), weights.reshape(-1) / probes
        mag = np.log10(np.maximum(np.abs(t), 1e-30))
        lo = max(float(mag.min()), float(mag.max()) - 12.0)
        bins = np.linspace(lo, float(mag.max()) + 1e-9, 40)
        keep = mag >= lo
        pos, neg = keep & (t > 0), keep & (t <= 0)
        ax.hist(mag[pos], bins=bins, weights=w[pos], color="C0", alpha=0.8, label=r"$\lambda > 0$")
        ax.hist(
            mag[neg], bins=bins, weights=w[neg], color="C1", alpha=0.7, label=r"$\lambda \leq 0$"
        )
        ax.set_yscale("log")
        eps, radius = float(summ[f"{mod}_eps"]), float(summ[f"{mod}_radius"])
        ax.axvline(np.log10(2 * eps / radius**2), color="C3", ls="--", label=r"$2\varepsilon/R^2$")
        neg_mass = float(np.sum(w[t < 0]))
        ax.text(0.02, 0.97, f"negative mass {neg_mass:.1%}", transform=ax.transAxes, va="top")
        ax.set_xlabel(r"$\log_{10}|\lambda|$ (Hessian eigenvalue)")
        ax.set_ylabel("spectral mass (SLQ weights)")
        ax.set_title(
            f"{mod}: D = {summ[f'{mod}_num_params']}, m_eff = {summ[f'{mod}_m_eff']},\n"
            f"kinematic n* = {summ[f'{mod}_kinematic_nstar']}",
            fontsize=8,
        )
        ax.legend(fontsize=7)
    fig.suptitle("Hessian spectrum of the base loss (stochastic Lanczos quadrature)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
