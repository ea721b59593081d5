r"""H-scaling: the :math:`1/k` merging law on its exact quadratic model.

Reads ``results/scaling_law`` (``experiments/scaling_law.py``). Panels: (a) simulated
:math:`E[L|k]` (i.i.d. updates, bars: 2 s.e.) against the exact
:math:`L_\infty + c^2\operatorname{tr}(H\Sigma)/(2k)`, the weighted fit
:math:`L_\infty + A/(k+b)` and the three-point forecast (fit on ``k in {1, 2, 4}``);
(b) one fixed pool of ``M = 9`` experts, subsets without replacement, against the
conditional finite-population formula and the literal reading
:math:`L_\infty + \frac{M-k}{M-1}A/k`; (c) the conditional formula averaged over pools,
in standard errors from :math:`L_\infty + A/k` and from the literal reading;
(d) :math:`\operatorname{Var}[L|k]` against :math:`1/k` (log-log), for :math:`a \ne 0`
(slope 1) and :math:`a = 0` (slope 2), with the exact variance.

Output: ``figures/out/fig_scaling_law.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure

NAME = "fig_scaling_law"
RESULTS = ("scaling_law",)


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays."""
    cfg = metadata["config"]
    ks, kk = a["ks"], a["k_dense"]
    z_tol = float(cfg.get("z_tol", 5.0))
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.6))
    ax = axes[0]
    ax.errorbar(ks, a["iid_mean"], yerr=2 * a["iid_stderr"], fmt="o", label="simulated")
    l_inf, amp = a["true_params"][0], a["true_params"][1]
    ax.plot(kk, l_inf + amp / kk, "k-", lw=0.9, label=r"exact $L_\infty + A/k$")
    ax.plot(kk, a["iid_fit_curve"], "C1--", label="WLS fit (all k)")
    ax.plot(kk, a["forecast_curve"], "C2:", lw=1.8, label="3-point forecast {1,2,4}")
    ax.axhline(a["true_params"][0], color="grey", lw=0.8, ls="-.", label=r"$L_\infty$")
    ax.set_xlabel("number of merged experts k")
    ax.set_ylabel("E[L | k]")
    ax.set_title("(a) i.i.d. updates")
    ax.legend()

    ax = axes[1]
    ok = a["pool_stderr"] > 0
    ax.errorbar(
        ks[ok], a["pool_mean"][ok], yerr=2 * a["pool_stderr"][ok], fmt="o", label="simulated"
    )
    m = float(cfg["pool_size"])
    lp, ap = a["pool_true_params"][0], a["pool_true_params"][1]
    ax.plot(kk, lp + ap / kk, "k-", lw=0.9, label="conditional finite-pop. formula")
    literal = l_inf + (m - kk) / (m - 1.0) * amp / kk
    ax.plot(kk, literal, "C3--", label=r"$L_\infty + \frac{M-k}{M-1}A/k$")
    ax.plot(kk, l_inf + amp / kk, color="grey", ls=":", label=r"$L_\infty + A/k$")
    ax.set_xlabel(f"k (without replacement, M = {int(cfg['pool_size'])})")
    ax.set_title("(b) one fixed pool")
    ax.legend()

    ax = axes[2]
    ax.plot(ks, np.abs(a["pools_z_exact"]), "o-", label=r"vs $L_\infty + A/k$")
    ax.plot(ks, np.abs(a["pools_z_literal"]), "s--", color="C3", label="vs literal factor")
    ax.axhline(z_tol, color="k", lw=0.8, ls=":", label=f"{z_tol:g} s.e.")
    ax.set_yscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel(f"|z|, mean over {int(cfg['num_pools'])} pools")
    ax.set_title("(c) averaged over pools")
    ax.legend()

    ax = axes[3]
    inv = 1.0 / ks
    for key, lab, col in (("iid", r"$a \ne 0$", "C0"), ("opt", r"$a = 0$", "C1")):
        ax.errorbar(
            inv,
            a[f"{key}_variance"],
            yerr=2 * a[f"{key}_variance_stderr"],
            fmt="o",
            color=col,
            label=f"simulated, {lab}",
        )
        ax.plot(inv, a[f"{key}_variance_exact"], "-", color=col, lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("1 / k")
    ax.set_ylabel("Var[L | k]")
    ax.set_title("(d) variance: slope 1 vs slope 2")
    ax.legend()
    fig.suptitle("H-scaling: quadratic loss, Gaussian updates, equal weights c/k (lines: exact)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
