r"""The Approximate Kinematic Formula, empirically: phase diagram of cone-subspace hits.

Hypothesis H-kinematic (:mod:`mergetheory.theory.kinematic`; ALMT 2014, Theorem I, used as
the engine of claim C4 of arXiv 2505.21226 in our reconstruction). Two runs, all keys from
``config.seed``:

* **phase diagram**: ``max(num_generators_grid)`` isotropic Gaussian task vectors in
  :math:`\mathbb R^D` (``D = dim``); for every ``n`` in the grid the cone
  :math:`C_n` of the first ``n`` of them, its statistical dimension from
  :func:`mergetheory.width.statistical_dimension` (one compiled shape: every cone is
  padded to ``max(n)`` generators with zero vectors, which leave the cone unchanged; one
  key for all ``n``, so the estimates share their Gaussian draws; cross-checked at one
  ``n`` against the host NNLS reference), and
  the empirical :math:`P\{C_n \cap L \ne \{0\}\}` for uniformly random ``m``-dimensional
  :math:`L`, ``m = 0..D`` (``num_trials`` Haar-random nested subspaces); ALMT bounds
  checked at ``eta_check``; transition centre :math:`m_{50}` against :math:`D - \delta`.
* **exact oracle at larger D**: cones of ``n`` orthonormal vectors in
  :math:`\mathbb R^{100}` (:math:`\delta = n/2`), empirical against the Crofton formula,
  and the ALMT bounds where they are non-vacuous.

Output: ``<out-dir>/kinematic.npz`` + ``.json`` (``config.summary`` feeds
``paper/sections/kinematic.md``).

Run: ``python -m experiments.kinematic [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import experiment_main
from mergetheory.geometry import PolyhedralCone
from mergetheory.geometry.closed_forms import kinematic_a_eta as a_eta
from mergetheory.tasks import GaussianSpec, sample_task_vectors
from mergetheory.theory.kinematic import (
    check_kinematic_formula,
    orthant_intersection_probability,
    statistical_dimension_nnls,
)
from mergetheory.verdict import FAILS, HOLDS, HOLDS_UNDER_ASSUMPTIONS, Verdict
from mergetheory.width import statistical_dimension

NAME = "kinematic"


class KinematicConfig(NamedTuple):
    """Frozen configuration.

    Attributes:
      seed: the one integer every PRNG key derives from.
      dim: ambient dimension of the phase diagram.
      num_generators_grid: numbers of generators ``n`` (increasing).
      num_trials: random subspaces per cone.
      delta_num_samples: Monte Carlo samples of :math:`\\delta(C_n)`.
      etas: :math:`\\eta` values whose windows are drawn.
      eta_check: :math:`\\eta` of the bound check.
      orthant_dim: ambient dimension of the exact-oracle run.
      orthant_ns: numbers of orthonormal generators there.
      orthant_trials: random subspaces per orthant cone.
      z_tol: tolerance in standard errors.
    """

    seed: int = 20261123
    dim: int = 30
    num_generators_grid: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 20, 25, 30, 35, 40, 45)
    num_trials: int = 200
    delta_num_samples: int = 4000
    etas: tuple[float, ...] = (0.05, 0.5)
    eta_check: float = 0.5
    orthant_dim: int = 100
    orthant_ns: tuple[int, ...] = (10, 50, 100)
    orthant_trials: int = 200
    z_tol: float = 5.0


QUICK_CONFIG = KinematicConfig(
    dim=10,
    num_generators_grid=(1, 3, 6, 10, 14),
    num_trials=40,
    delta_num_samples=300,
    orthant_dim=20,
    orthant_ns=(5, 20),
    orthant_trials=40,
)


def run(config: KinematicConfig, *, progress: bool = True) -> tuple[dict, dict]:
    """Run both parts; return ``(arrays, summary)``."""
    root = jr.key(config.seed)
    key_tasks, key_delta, key_sub, key_orth, key_ref = jr.split(root, 5)
    dim = config.dim
    n_max = max(config.num_generators_grid)
    gens = sample_task_vectors(key_tasks, GaussianSpec(n_max), {"w": (dim,)}, jnp.float64)["w"]
    num_n = len(config.num_generators_grid)
    delta = np.zeros(num_n)
    delta_se = np.zeros(num_n)
    for i, n in enumerate(config.num_generators_grid):
        padded = jnp.zeros_like(gens).at[:n].set(gens[:n])
        est = statistical_dimension(
            key_delta,
            PolyhedralCone.from_task_vectors(padded),
            num_samples=config.delta_num_samples,
        )
        delta[i], delta_se[i] = float(est.mean), float(est.stderr)
    i_ref = num_n // 2
    ref = statistical_dimension_nnls(
        key_ref,
        np.asarray(gens)[: config.num_generators_grid[i_ref]],
        num_samples=config.delta_num_samples,
    )
    ref_z = (delta[i_ref] - ref.mean) / np.hypot(delta_se[i_ref], ref.stderr)
    ms = np.arange(dim + 1)
    prob = np.zeros((num_n, ms.size))
    prob_se = np.zeros((num_n, ms.size))
    m_50 = np.zeros(num_n)
    width = np.zeros(num_n)
    offset = np.zeros(num_n)
    tested = np.zeros(num_n, dtype=int)
    excess = np.zeros(num_n)
    verdicts = []
    gens_np = np.asarray(gens)
    it = tqdm(
        list(enumerate(config.num_generators_grid)), desc=NAME, leave=False, disable=not progress
    )
    for i, n in it:
        ev = check_kinematic_formula(
            jr.fold_in(key_sub, i),
            gens_np[:n],
            num_trials=config.num_trials,
            eta=config.eta_check,
            delta=float(delta[i]),
            delta_stderr=float(delta_se[i]),
            z_tol=config.z_tol,
        )
        prob[i], prob_se[i] = ev.estimate.prob, ev.estimate.stderr
        m_50[i], width[i], offset[i] = ev.m_50, ev.width_10_90, ev.offset_sqrt_d
        tested[i], excess[i] = ev.num_bounds_tested, ev.max_excess
        verdicts.append(ev.verdict)

    # exact oracle: cones of n orthonormal vectors in R^orthant_dim
    od = config.orthant_dim
    oms = np.arange(od + 1)
    o_prob = np.zeros((len(config.orthant_ns), oms.size))
    o_exact = np.zeros_like(o_prob)
    o_z = np.zeros(len(config.orthant_ns))
    o_tested = np.zeros(len(config.orthant_ns), dtype=int)
    o_excess = np.zeros(len(config.orthant_ns))
    o_verdicts = []
    for j, n in enumerate(config.orthant_ns):
        ev = check_kinematic_formula(
            jr.fold_in(key_orth, j),
            np.eye(od)[:n],
            num_trials=config.orthant_trials,
            eta=config.eta_check,
            delta=n / 2.0,
            delta_stderr=0.0,
            z_tol=config.z_tol,
        )
        exact = orthant_intersection_probability(od, n, oms)
        o_prob[j], o_exact[j] = ev.estimate.prob, exact
        se = np.sqrt(
            np.maximum(exact * (1 - exact), 1.0 / config.orthant_trials) / config.orthant_trials
        )
        o_z[j] = float(np.max(np.abs(ev.estimate.prob - exact) / se))
        o_tested[j], o_excess[j] = ev.num_bounds_tested, ev.max_excess
        o_verdicts.append(ev.verdict)

    arrays = {
        "num_generators": np.asarray(config.num_generators_grid),
        "ms": ms,
        "delta": delta,
        "delta_stderr": delta_se,
        "prob": prob,
        "prob_stderr": prob_se,
        "m_50": m_50,
        "width_10_90": width,
        "offset_sqrt_d": offset,
        "num_bounds_tested": tested,
        "max_excess": excess,
        "etas": np.asarray(config.etas),
        "a_etas": np.asarray([a_eta(e) for e in config.etas]),
        "orthant_ns": np.asarray(config.orthant_ns),
        "orthant_ms": oms,
        "orthant_prob": o_prob,
        "orthant_exact": o_exact,
        "orthant_max_z": o_z,
        "orthant_bounds_tested": o_tested,
        "orthant_max_excess": o_excess,
    }
    all_verdicts = verdicts + o_verdicts
    crofton_ok = bool(np.all(o_z <= config.z_tol))
    failed = [v.reason for v in all_verdicts if v.status == FAILS]
    if failed or not crofton_ok:
        if not crofton_ok:
            failed.append(f"empirical vs Crofton off by {o_z.max():.1f} stderr")
        verdict = Verdict(FAILS, "; ".join(failed))
    elif int(tested.sum() + o_tested.sum()) > 0:
        verdict = Verdict(HOLDS)
    else:
        verdict = Verdict(HOLDS_UNDER_ASSUMPTIONS)
    a_chk = a_eta(config.eta_check)
    finite = np.isfinite(excess) & (tested > 0)
    o_finite = np.isfinite(o_excess) & (o_tested > 0)
    summary = {
        "verdict": verdict,
        "dim": dim,
        "num_cones": num_n,
        "num_trials": config.num_trials,
        "eta_check": config.eta_check,
        "a_eta_check": a_chk,
        "almt_half_window": a_chk * math.sqrt(dim),
        "almt_half_window_005": a_eta(0.05) * math.sqrt(dim),
        "max_abs_offset_sqrt_d": float(np.nanmax(np.abs(offset))),
        "max_abs_offset_m": float(np.nanmax(np.abs(offset))) * math.sqrt(dim),
        "mean_width_10_90": float(np.nanmean(width)),
        "almt_window_10": 2.0 * a_eta(0.1) * math.sqrt(dim),
        "almt_conservatism": 2.0 * a_eta(0.1) * math.sqrt(dim) / float(np.nanmean(width)),
        "max_width_10_90": float(np.nanmax(width)),
        "bounds_tested": int(tested.sum()),
        "max_excess": float(excess[finite].max()) if finite.any() else float("nan"),
        "delta_min": float(delta.min()),
        "delta_ref_n": int(config.num_generators_grid[i_ref]),
        "delta_ref_engine": float(delta[i_ref]),
        "delta_ref_nnls": ref.mean,
        "delta_ref_z": float(ref_z),
        "delta_max": float(delta.max()),
        "orthant_dim": od,
        "orthant_ns": list(config.orthant_ns),
        "orthant_max_z": float(o_z.max()),
        "orthant_bounds_tested": int(o_tested.sum()),
        "orthant_max_excess": float(o_excess[o_finite].max()) if o_finite.any() else float("nan"),
        "orthant_half_window": a_chk * math.sqrt(od),
        "z_tol": config.z_tol,
    }
    return arrays, summary


main = experiment_main(NAME, __doc__, run, KinematicConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
