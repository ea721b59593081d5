r"""Real experts: RHT minus TIES and minus the mean, paired over the same subsets.

Reads ``results/real_merging``. One row per modality and expert set; left: at the seed
code's settings (RHT density 0.7, TIES density 0.2, and, for LoRA, factor-wise on A and B);
right: at equal norm budget (each merged update rescaled to the mean norm of the merged
task vectors). Curves: the paired difference in normalised performance on the merged tasks
with 2 standard-error bands; above 0 means RHT is better.

Output: ``figures/out/fig_real_rht.png`` + ``.pdf``.
"""

from __future__ import annotations

import sys

import numpy as np

from figures._style import plt, run_figure
from figures.fig_real_merging import panels, tag

NAME = "fig_real_rht"
RESULTS = ("real_merging",)
PAIRS = (
    (("rht", "ties"), ("rht", "average"), ("rht[AB]", "ties[AB]")),
    (("rht@norm", "ties@norm"), ("rht@norm", "average@norm")),
)


def make_figure(a: dict[str, np.ndarray], metadata: dict):
    """Build the figure from the saved arrays and the config in ``metadata``."""
    rows = panels(a, metadata)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10.0, 2.9 * len(rows)), squeeze=False)
    for r, (mod, es) in enumerate(rows):
        for c, pairs in enumerate(PAIRS):
            ax = axes[r, c]
            for i, (x, y) in enumerate(pairs):
                key = f"{mod}_{es}_{tag(x)}_vs_{tag(y)}_perf_merged"
                if key + "_mean" not in a:
                    continue
                m, se = a[key + "_mean"], a[key + "_stderr"]
                ns = np.arange(1, m.size + 1)
                ax.plot(ns, m, marker="o", ms=2.5, color=f"C{i}", label=f"{x} - {y}")
                ax.fill_between(ns, m - 2 * se, m + 2 * se, color=f"C{i}", alpha=0.15, lw=0)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xlabel("number of merged experts n")
            ax.set_ylabel("difference, merged tasks")
            setting = "seed settings" if c == 0 else "equal norm budget"
            ax.set_title(f"{mod}, {es} experts, {setting}")
            ax.legend(fontsize=7)
    fig.suptitle("RHT against TIES and the mean on real experts (paired; bands: 2 s.e.)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_figure(argv, __doc__, NAME, RESULTS[0], make_figure, with_metadata=True)


if __name__ == "__main__":
    sys.exit(main())
