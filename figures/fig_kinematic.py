r"""H-kinematic: phase diagram of :math:`P\{C_n \cap L \ne \{0\}\}` (ALMT style).

Reads ``results/kinematic`` (``experiments/kinematic.py``). Panels: (a) empirical
probability that the cone of ``n`` isotropic Gaussian task vectors meets a uniformly random
``m``-dimensional subspace, over :math:`(\delta(C_n), m)` (colour), with the predicted
boundary :math:`\delta(C) + m = D` (white), the ALMT window
:math:`\delta + m = D \pm a_\eta\sqrt D` for each :math:`\eta` (dashed), and the empirical
50% crossing (black dots); (b) cones of ``n`` orthonormal vectors in
:math:`\mathbb R^{100}`: empirical probability (dots) against the exact Crofton formula
(lines), with the regions where ALMT guarantees :math:`P \le \eta` / :math:`P \ge 1-\eta`
shaded; (c) empirical transition centre :math:`m_{50}` against :math:`D - \delta(C_n)`,
with the 10-90% width as bars and the ALMT half-window for scale.

Output: ``figures/out/fig_kinematic.png`` + ``.pdf``.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_kinematic"
RESULTS = ("kinematic",)


def _edges(x: np.ndarray) -> np.ndarray:
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    dim = int(cfg["dim"])
    eta_check = float(cfg["eta_check"])
    delta, ms, prob = a["delta"], a["ms"], a["prob"]
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.2))
    ax = axes[0]
    order = np.argsort(delta)
    xe = _edges(delta[order])
    ye = np.arange(ms.size + 1) - 0.5
    mesh = ax.pcolormesh(xe, ye, prob[order].T, cmap="viridis", vmin=0, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label=r"$P\{C_n \cap L \neq \{0\}\}$")
    xx = np.linspace(0, dim, 100)
    ax.plot(xx, dim - xx, "w-", lw=1.5, label=r"$\delta(C) + m = D$")
    for eta, a_eta, ls in zip(a["etas"], a["a_etas"], ("--", "-."), strict=False):
        half = a_eta * math.sqrt(dim)
        for sgn in (-1, 1):
            ax.plot(
                xx,
                dim - xx + sgn * half,
                color="w",
                ls=ls,
                lw=0.8,
                label=rf"window $\eta$={eta:g}" if sgn < 0 else None,
            )
    ax.plot(delta, a["m_50"], "k.", ms=5, label="empirical 50%")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(-0.5, dim + 0.5)
    shown = a["num_generators"][order][:: max(1, len(order) // 6)]
    ax.set_xlabel(
        r"statistical dimension $\delta(C_n)$"
        + f" (n = {', '.join(str(int(n)) for n in shown)}, ...)"
    )
    ax.set_ylabel("subspace dimension m")
    ax.set_title(f"(a) Gaussian cones in D = {dim}, {int(cfg['num_trials'])} subspaces")
    ax.legend(loc="upper right", fontsize=6, facecolor="0.8")

    ax = axes[1]
    od = int(cfg["orthant_dim"])
    oms = a["orthant_ms"]
    a_chk = (
        float(a["a_etas"][list(a["etas"]).index(eta_check)])
        if eta_check in list(a["etas"])
        else math.sqrt(8 * math.log(4 / eta_check))
    )
    for j, n in enumerate(a["orthant_ns"]):
        col = f"C{j}"
        ax.plot(oms, a["orthant_exact"][j], color=col, lw=1.0, label=f"n = {int(n)} (Crofton)")
        ax.plot(oms, a["orthant_prob"][j], "o", color=col, ms=2.5, mfc="none")
        d = n / 2.0
        lo = od - a_chk * math.sqrt(od) - d
        hi = od + a_chk * math.sqrt(od) - d
        if lo >= 0:
            ax.axvspan(-0.5, lo, ymin=0, ymax=0.06, color=col, alpha=0.5)
        if hi <= od:
            ax.axvspan(hi, od + 0.5, ymin=0.94, ymax=1.0, color=col, alpha=0.5)
    ax.axhline(eta_check, color="k", ls=":", lw=0.8)
    ax.axhline(1 - eta_check, color="k", ls=":", lw=0.8)
    ax.set_xlabel("m")
    ax.set_ylabel("probability")
    ax.set_title(rf"(b) orthants in D = {od} (bars: ALMT regions, $\eta$ = {eta_check:g})")
    ax.legend(loc="center right", fontsize=6)

    ax = axes[2]
    pred = dim - delta
    w = a["width_10_90"]
    ax.errorbar(pred, a["m_50"], yerr=w / 2, fmt="o", ms=3, label="empirical $m_{50}$ (10-90%)")
    ax.plot([0, dim], [0, dim], "k-", lw=0.8, label="m = D - delta")
    half = a_chk * math.sqrt(dim)
    ax.fill_between(
        [0, dim],
        [-half, dim - half],
        [half, dim + half],
        color="grey",
        alpha=0.15,
        label=rf"ALMT window, $\eta$ = {eta_check:g}",
    )
    ax.set_xlim(0, dim)
    ax.set_ylim(0, dim)
    ax.set_xlabel(r"$D - \delta(C_n)$")
    ax.set_ylabel("empirical transition m")
    ax.set_title("(c) centre and width of the transition")
    ax.legend(loc="upper left", fontsize=6)
    fig.suptitle("H-kinematic: Approximate Kinematic Formula (ALMT 2014), checked empirically")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
