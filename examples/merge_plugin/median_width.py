r"""A hypothesis published as a plugin: the image of the median merge over scales is a segment.

H-median-width: for the merge :math:`m = \mathrm{median}_t\,\tau_t` and scales
:math:`\lambda \in [a, b]`, the image :math:`\{\lambda m\}` is a segment, so its Gaussian
width is :math:`(b - a)\,\|m\| / \sqrt{2\pi}`. Registered through the entry point
``median_width = "median_width:HYPOTHESIS"`` (group ``mergetheory.hypotheses``).
"""

import math
from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from merge_median import elementwise_median

from mergetheory.experiment import run_experiment
from mergetheory.figure import plt, run_figure
from mergetheory.geometry import operator_image
from mergetheory.width import gaussian_width

NAME = "median_width"


class MedianWidthEvidence(NamedTuple):
    width: float
    stderr: float
    exact: float
    abs_z: float
    verdict: str


def check_median_width(key, *, num_experts, dim, low=0.5, high=1.5, num_samples, z=5.0):
    """Width of {s * median : s in [low, high]} against (high - low) ||median|| / sqrt(2 pi)."""
    key_tasks, key_image, key_width = jr.split(key, 3)
    task_vectors = {"w": jr.normal(key_tasks, (num_experts, dim))}
    median = elementwise_median(task_vectors, None)["w"]  # deterministic: no key
    grid = {"scale": jnp.linspace(low, high, 5)}
    image = operator_image(elementwise_median, task_vectors, key_image, grid=grid)
    est = gaussian_width(key_width, image, num_samples=num_samples)
    exact = (high - low) * float(jnp.linalg.norm(median)) / math.sqrt(2 * math.pi)
    abs_z = abs(float(est.mean) - exact) / float(est.stderr)
    verdict = "holds" if abs_z <= z else f"fails: width {float(est.mean):.4f}, exact {exact:.4f}"
    return MedianWidthEvidence(float(est.mean), float(est.stderr), exact, abs_z, verdict)


class Config(NamedTuple):
    seed: int = 11
    num_experts: int = 7
    dim: int = 64
    num_samples: int = 20_000


def run(config, args):
    ev = check_median_width(
        jr.key(config.seed),
        num_experts=config.num_experts,
        dim=config.dim,
        num_samples=config.num_samples,
    )
    arrays = {k: np.asarray(getattr(ev, k)) for k in ("width", "stderr", "exact")}
    return arrays, {"verdict": ev.verdict, "abs_z": ev.abs_z, "exact": ev.exact}


def main(argv=None):
    return run_experiment(NAME, __doc__, run, Config(), Config(num_samples=4000), argv)


def draw(arrays):
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.errorbar([0], [arrays["width"]], yerr=[3 * arrays["stderr"]], fmt="o", label="measured")
    ax.axhline(float(arrays["exact"]), color="k", ls="--", label="exact")
    ax.set_xticks([])
    ax.set_ylabel("Gaussian width")
    ax.legend()
    return fig


def figure_main(argv=None):
    return run_figure(argv, __doc__, "fig_median_width", NAME, draw)


SECTION = """<!-- results: median_width -->
## H-median-width: the median merge over scales is a segment

**Verdict.** {{verdict}} (exact width {{exact}}, deviation {{abs_z}} standard errors).

![measured against exact width](figures/fig_median_width.png)
"""

HYPOTHESIS = {
    "statement": __doc__.split("\n\n")[1],
    "check": check_median_width,
    "experiment": main,
    "figure": figure_main,
    "section": SECTION,
}
