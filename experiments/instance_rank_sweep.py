r"""Predictors, dominance statistics and the LoRA rank sweep of :mod:`.instance_mergeability`.

Shared by the default rank and the sweep so that both use the same statistics and rules:

- :func:`update_predictors`: :math:`\Delta_\text{base}`, :math:`\|\Delta W\|_F`,
  :math:`\sigma_\max(\Delta W)` and the score gap of the fixed instances;
- :func:`dominance_stats`: Spearman of :math:`\hat S` with each predictor and the partial
  Spearman of :math:`\hat S` and :math:`\Delta_\text{base}` given the two competitors
  (the statistic the grouped bootstrap resamples), in :data:`PREDICTORS` order;
- :func:`dominance_verdicts`: the verdicts of H-BK from the intervals;
- :func:`rank_sweep`: for each extra rank ``r`` of ``config.rank_sweep`` (``alpha = 2r``
  as the default spec, the same stopping rule), train the per-instance LoRAs of the wrong
  instances, keep the fixed ones, estimate :math:`\hat S` under the reference operator
  (``config.operators[0]``, KnOTS) at the reference ``M`` and ``N``, and bootstrap the
  dominance statistics over source files.

Not an experiment (no ``main``; :mod:`experiments.run_all` skips it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from mergetheory.instance_mergeability import LoraSurvivalProblem, partition_mergeability
from mergetheory.models.instance_lora import (
    InstanceLoraOutput,
    lora_kernel_delta,
    train_instance_loras,
)
from mergetheory.models.probe import base_gap
from mergetheory.stats import grouped_bootstrap, hypothesis_verdict, partial_spearman

__all__ = [
    "PREDICTORS",
    "dominance_stats",
    "dominance_verdicts",
    "rank_sweep",
    "update_predictors",
]

PREDICTORS = (
    "delta_base",
    "frobenius",
    "sigma_max",
    "partial_delta_base",
    "score_gap",
    "delta_base_minus_frobenius",
    "delta_base_minus_sigma_max",
)


def update_predictors(
    out: InstanceLoraOutput, base_scores: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""``(delta_base, frobenius, sigma_max, score_gap)`` of the fixed updates of ``out``.

    Args:
      out: the trained adapters of the wrong instances.
      base_scores: ``[I, C]`` base scores of the *fixed* instances (``I = out.fixed.sum()``).
      label: ``[I]`` their true choice.
    """
    b, a = jnp.asarray(out.B[out.fixed]), jnp.asarray(out.A[out.fixed])
    dense = np.asarray(lora_kernel_delta(b, a, out.scaling), np.float64)  # [K, d_in, d_out]
    sv = np.linalg.svd(dense, compute_uv=False)
    gap = base_gap(base_scores, label)
    score_gap = base_scores.max(-1) - base_scores[np.arange(label.size), label]
    return gap, np.sqrt((sv**2).sum(-1)), sv[:, 0], score_gap


def dominance_stats(s: np.ndarray, *predictors: np.ndarray) -> np.ndarray:
    """Spearman of ``s`` with each predictor, and the partial one of predictor 0 given 1, 2.

    Predictors ``(delta_base, frobenius, sigma_max, score_gap)``; returns the values in
    :data:`PREDICTORS` order. Ranks are computed once (SciPy's average ranks); the partial
    value is :func:`mergetheory.stats.partial_spearman`.
    """
    from scipy import stats

    ranks = stats.rankdata(np.stack([s, *predictors]), axis=1)
    corr = np.corrcoef(ranks)[0, 1:]
    part = partial_spearman(s, predictors[0], np.stack(predictors[1:3]))
    # dominance: rho(Delta_base) - rho(competitor) (< 0: Delta_base predicts more strongly)
    dominance = [corr[0] - corr[1], corr[0] - corr[2]]
    return np.array([corr[0], corr[1], corr[2], part, corr[3], *dominance])


def dominance_verdicts(dom: np.ndarray) -> dict[str, str]:
    r"""Verdicts of H-BK from ``dom [3, len(PREDICTORS)]`` (value, low, high).

    H-BK predicts a negative rank correlation of :math:`\hat S` with
    :math:`\Delta_\text{base}` (``bk``), also given the competitors (``partial``), and a
    stronger one than each competitor's (``dominance_frobenius``,
    ``dominance_sigma_max``); each is :func:`mergetheory.stats.hypothesis_verdict` of the
    interval with predicted sign :math:`-1`.
    """
    cols = {"bk": 0, "partial": 3, "dominance_frobenius": 5, "dominance_sigma_max": 6}
    return {
        k: hypothesis_verdict(dom[1, j], dom[2, j], predicted_sign=-1).status
        for k, j in cols.items()
    }


def rank_sweep(
    key: Any,
    config: Any,
    hparams: Mapping[str, Any] | None,
    survive: Callable[..., Any],
    params: Any,
    features: Any,
    targets: np.ndarray,
    label: np.ndarray,
    base_scores: np.ndarray,
    files: np.ndarray,
    *,
    num_heads: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    r"""The LoRA rank sweep under the reference operator (see the module docstring).

    Rank ``r`` uses ``fold_in(key, r)`` split into training, estimator and bootstrap keys.
    A rank that fixes fewer than ``num_partners + 1`` instances gets NaN statistics.

    Args:
      key: PRNG key of the sweep.
      config: the experiment's config (``rank_sweep``, ``lora``, ``operators``,
        ``num_partners``, ``num_trials``, ``num_resamples``, ``confidence``).
      hparams: the reference operator's hyperparameters.
      survive: the survival function of :class:`LoraSurvivalProblem`.
      params: the base model.
      features, targets, label, base_scores, files: the *wrong* instances' probe features,
        choice bytes, true choices, base scores ``[I, C]`` and source-file indices.
      num_heads: attention heads of the model.

    Returns:
      ``(arrays, summary)``: arrays ``rank_sweep_ranks [R]``, ``rank_sweep_fixed [R]``,
      ``rank_sweep_dominance [R, 3, len(PREDICTORS)]``; summary keys
      ``rank_sweep_{r}_{fixed,median_steps,s,seconds}``, the verdicts
      ``rank_sweep_{r}_verdict_{rule}`` of :func:`dominance_verdicts`, the paired
      differences ``rank_sweep_{r}_minus_{frobenius,sigma_max}``, and
      ``rank_sweep_{r}_{rho,rho_frobenius,rho_sigma_max,partial}`` with ``_lo``/``_hi``
      (:math:`\Delta_\text{base}`, the competitors, the partial value), and
      ``rank_sweep_ranks``.
    """
    name = config.operators[0]
    ranks = tuple(int(r) for r in config.rank_sweep)
    dom = np.full((len(ranks), 3, len(PREDICTORS)), np.nan)
    fixed = np.zeros(len(ranks), np.int64)
    summary: dict[str, Any] = {"rank_sweep_ranks": list(ranks), "rank_sweep_operator": name}
    for i, r in enumerate(ranks):
        t0 = time.perf_counter()
        k_train, k_est, k_boot = jr.split(jr.fold_in(key, r), 3)
        spec = config.lora._replace(rank=r, alpha=2.0 * r)
        out = train_instance_loras(
            k_train, params, features, targets, label, spec, num_heads=num_heads, batch=256
        )
        sel = np.flatnonzero(out.fixed)
        fixed[i] = sel.size
        pre = f"rank_sweep_{r}_"
        summary[pre + "fixed"] = int(sel.size)
        summary[pre + "median_steps"] = float(np.median(out.steps[sel])) if sel.size else 0.0
        summary[pre + "s"] = float("nan")
        if sel.size > config.num_partners:
            predictors = update_predictors(out, base_scores[sel], label[sel])
            sargs = (params, features[sel], jnp.asarray(targets[sel]), jnp.asarray(label[sel]))
            problem = LoraSurvivalProblem(
                jnp.asarray(out.B[sel]), jnp.asarray(out.A[sel]), out.scaling, name, survive,
                sargs, hparams,
            )  # fmt: skip
            est = partition_mergeability(
                k_est, problem, num_partners=config.num_partners, num_trials=config.num_trials
            )
            e = grouped_bootstrap(
                k_boot, dominance_stats, (est.mean, *predictors), files[sel],
                num_resamples=config.num_resamples, confidence=config.confidence,
            )  # fmt: skip
            dom[i] = np.stack([e.value, e.ci_low, e.ci_high])
            summary[pre + "s"] = float(est.mean.mean())
        for stat, j in (("rho", 0), ("rho_frobenius", 1), ("rho_sigma_max", 2), ("partial", 3)):
            summary[pre + stat] = float(dom[i, 0, j])
            summary[pre + stat + "_lo"] = float(dom[i, 1, j])
            summary[pre + stat + "_hi"] = float(dom[i, 2, j])
        for rule, status in dominance_verdicts(dom[i]).items():
            summary[pre + "verdict_" + rule] = status
        for stat, j in (("minus_frobenius", 5), ("minus_sigma_max", 6)):
            summary[pre + stat] = float(dom[i, 0, j])
        summary[pre + "seconds"] = time.perf_counter() - t0
    arrays = {
        "rank_sweep_ranks": np.array(ranks),
        "rank_sweep_fixed": fixed,
        "rank_sweep_dominance": dom,
    }
    return arrays, summary
