r"""H-threshold: where the width gains fall below a fraction of the first gain.

Reads ``results/threshold`` (``experiments/threshold.py``). Panels:
(a) replicate-averaged widths :math:`\mathbb E_\tau w(\operatorname{conv}\{0, \tau_{1..n}\})`
per family (bands: 2 s.e. across replicates), with the E0 oracle for reference;
(b) normalised gains :math:`g_n / g_1` with the ratios :math:`\kappa` (dotted): definition
(i) is the first ``n`` below the line; (c) :math:`n^\star_\kappa` with its confidence set
per family (two :math:`\kappa`), and the share of single draws whose crossing is unique;
(d) single-draw normalised gains of the heavy-tailed family (experts merged in the order
drawn): re-crossings are the counterexamples to uniqueness for a fixed ordering;
(e) definition (ii): :math:`\delta(C_n)` of nested cones and the crossing ``n`` of
:math:`\delta(C_n) + m \ge D` (centre) as a function of ``m``.

Output: ``figures/out/fig_threshold.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, rho_colors, run_figure

NAME = "fig_threshold"
RESULTS = ("threshold",)

# E max(0, Z_1..Z_n), Sources S2 (for reference only; not used for any verdict)
_E0 = [0.3989, 0.6810, 0.8881, 1.0458, 1.1697, 1.2701, 1.3534, 1.4242, 1.4853, 1.5389]


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    cfg = metadata["config"]
    labels = [f[0] for f in cfg["families"]]
    kappas = [float(k) for k in cfg["kappas"]]
    ns = a["ns"]
    colors = rho_colors(len(labels))
    # a 2 x 3 grid (readable at the report's width); the sixth cell holds panel (a)'s legend
    fig, grid = plt.subplots(2, 3, figsize=(12.0, 7.6))
    axes = grid.ravel()
    ax = axes[0]
    for f, lab in enumerate(labels):
        m, s = a["avg_mean"][f], a["avg_stderr"][f]
        m, s = m / m[0], s / m[0]  # definition (i) is scale-free
        ax.plot(ns, m, color=colors[f], marker="o", ms=2.5, label=lab)
        ax.fill_between(ns, m - 2 * s, m + 2 * s, color=colors[f], alpha=0.2, lw=0)
    e0 = np.asarray(_E0)
    ax.plot(np.arange(1, e0.size + 1), e0 / e0[0], "k:", lw=1.5, label="E0 oracle")
    ax.set_ylim(0.9, 6.0)
    ax.set_xlabel("number of experts n")
    ax.set_ylabel(r"mean width $w(\mathrm{conv}\{0,\tau_{1..n}\})\,/\,w_1$")
    ax.set_title("(a) averaged width curves")
    handles, names = ax.get_legend_handles_labels()
    axes[5].axis("off")
    axes[5].legend(handles, names, loc="center", fontsize=7, ncol=2, title="families")

    ax = axes[1]
    gn = ns[:-1]
    for f in range(len(labels)):
        g, gs = a["avg_diff1"][f], a["avg_diff1_stderr"][f]
        ax.plot(gn, g / g[0], color=colors[f], marker="o", ms=2.5, lw=1.0)
        lo, hi = (g - 2 * gs) / g[0], (g + 2 * gs) / g[0]
        ax.fill_between(gn, lo, hi, color=colors[f], alpha=0.12, lw=0)
    for k in kappas:
        ax.axhline(k, color="k", ls=":", lw=0.8)
        ax.text(gn[-1], k, rf" $\kappa$={k:g}", va="center", fontsize=6)
    ax.set_xlabel("n")
    ax.set_ylabel(r"gain ratio $g_n / g_1$")
    ax.set_ylim(-0.1, 1.15)
    ax.set_title("(b) definition (i): first n below the line")

    ax = axes[2]
    y = np.arange(len(labels))
    for j, (k, mk) in enumerate(((0, "o"), (len(kappas) - 2, "s"))):
        n_star, ci = a["n_star"][:, k], a["n_star_ci"][:, k]
        off = 0.15 * (j - 0.5)
        ax.errorbar(
            n_star,
            y + off,
            xerr=[n_star - ci[:, 0], ci[:, 1] - n_star],
            fmt=mk,
            color=f"C{j}",
            label=rf"$\kappa$ = {kappas[k]:g}",
        )
    for f in range(len(labels)):
        frac = float(np.mean(a["single_unique"][f]))
        ax.text(ns[-1] + 0.3, f, f"{frac:.0%}", va="center", fontsize=6)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0.5, ns[-1] + 2.5)
    ax.set_xlabel(r"$n^\star$ and confidence set (right: unique single draws)")
    ax.set_title("(c) threshold per family")
    ax.legend(loc="lower right")

    ax = axes[3]
    heavy = [i for i, lab in enumerate(labels) if lab.startswith("heavy")]
    f = heavy[-1] if heavy else len(labels) - 1
    curves = a["curves"][f]
    for r in range(curves.shape[0]):
        g = np.diff(curves[r])
        uniq = bool(a["single_unique"][f, r])
        ratio = np.clip(g / g[0], 1e-3, None)
        ax.plot(gn, ratio, color="C0" if uniq else "C3", lw=0.7, alpha=0.7)
    ax.axhline(kappas[0], color="k", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("n")
    ax.set_ylabel(r"$g_n / g_1$ (single draws)")
    ax.set_title(f"(d) single orderings, {labels[f]} (red: not unique)")

    ax = axes[4]
    delta, dse = a["cone_delta"], a["cone_delta_stderr"]
    nc = np.arange(1, delta.size + 1)
    dim = int(cfg["cone_dim"])
    ax.errorbar(nc, delta, yerr=2 * dse, fmt="o-", ms=2.5, label=r"$\delta(C_n)$")
    ax.axhline(dim, color="grey", lw=0.8, ls="--", label=f"D = {dim}")
    ax.set_xlabel("n")
    ax.set_ylabel(r"$\delta(C_n)$")
    ax2 = ax.twinx()
    centre = a["cone_n_center"]
    ok = centre > 0
    ax2.plot(centre[ok], a["cone_ms"][ok], "C3s", ms=3, label=r"$n^\star$: $\delta + m \geq D$")
    ax2.set_ylabel("m (subspace dimension)", color="C3")
    ax2.grid(False)
    ax.set_title("(e) definition (ii), isotropic experts")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=6)
    fig.suptitle(
        "H-threshold (reconstruction): n* of conv{0, tau_1..tau_n}, "
        f"{int(cfg['num_replicates'])} draws x {int(cfg['num_samples'])} samples per family"
    )
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
