r"""Operator-level analyses of :mod:`.instance_mergeability`: weighted merges, operator strength.

- :func:`weighted_merge`: the base-knowledge weighted merge on random sets of the zoo's
  LoRA task experts, as a linear merge (``base_knowledge_weighted`` against the mean) and
  inside KnOTS (*weighted KnOTS* against plain KnOTS), the temperature chosen on the val
  split (:func:`choose_on_val`), the numbers reported on the test split;
- :func:`weighted_summary`: their means over replicates with Student-t intervals;
- :func:`operator_contrast`: does the base-knowledge effect shrink or grow from the weaker
  operator (the mean) to the stronger ones (TIES, KnOTS)? Paired differences of
  :math:`\rho(\hat S, \Delta_\text{base})`, of its partial value given the update's size
  and of :math:`\rho` with the score gap between operators, with one file-grouped
  bootstrap resampling all operators at once.

**Weighted KnOTS.** With knowledge :math:`k_t` and weights
:math:`\omega = \mathrm{softmax}((1 - k)/\tau)` (:func:`mergetheory.merge.base_knowledge_weights`),

.. math::

   \Delta = \operatorname{KnOTS}\big(\{T\omega_t\,\Delta_t\}_{t=1}^T\big),

i.e. each expert's LoRA scaling is multiplied by :math:`T\omega_t` (mean 1) before the
merge. Replacing KnOTS by the mean gives back ``base_knowledge_weighted``
(:math:`\sum_t \omega_t \Delta_t`), and equal weights give plain KnOTS: the weighting is
applied to KnOTS exactly as the linear version applies it to the mean. (The paper does
not say whether its weights multiply a KnOTS or a linear merge; paper/sections/sources.md,
S7.)

Not an experiment (no ``main``; :mod:`experiments.run_all` skips it).

Reference: Rahamim et al. (``rahamim2026mergeability`` in ``paper/refs.bib``); the
moderation hypothesis (the effect shrinks under stronger operators) is the reading of an
independent replication on CLIP experts (paper/sections/sources.md, S7).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.random as jr
import numpy as np

from mergetheory._types import LoraFactors
from mergetheory.instance_mergeability import merge_lora_tree
from mergetheory.stats import grouped_bootstrap, hypothesis_verdict

__all__ = [
    "CONTRAST_STATS",
    "choose_on_val",
    "contrast_pairs",
    "mean_interval",
    "operator_contrast",
    "weighted_knots",
    "weighted_merge",
    "weighted_summary",
]

CONTRAST_STATS = ("delta_base", "partial_delta_base", "score_gap")
"""Statistics of :func:`operator_contrast` (as in
:data:`experiments.instance_rank_sweep.PREDICTORS`)."""

_PARTS = ("all", "low", "high")
_COMPARISONS = {  # summary prefix: (minuend, subtrahend) of the per-task test gains
    "weighted_minus_mean": ("weighted", "mean"),
    "weighted_knots_minus_knots": ("weighted_knots", "knots"),
    "weighted_knots_minus_mean": ("weighted_knots", "mean"),
    "knots_minus_mean": ("knots", "mean"),
}


def mean_interval(x: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval over replicates ``x``."""
    from scipy import stats

    x = np.asarray(x, np.float64)
    m, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))
    q = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1))
    return m, m - q * se, m + q * se


def choose_on_val(candidates: Sequence[Any], val_score: Callable[[Any], float]) -> int:
    """Index of the candidate with the highest ``val_score`` (first one on ties)."""
    return int(np.argmax([val_score(c) for c in candidates]))


def weighted_knots(
    factors: Mapping[str, LoraFactors],
    knowledge: Any,
    temperature: float,
    key: Any,
    hparams: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    r"""Weighted KnOTS :math:`\operatorname{KnOTS}(\{T\omega_t \Delta_t\})` (module docstring).

    Args:
      factors: ``{path: LoraFactors(B [T, d, r], A [T, r, k], s)}`` the experts.
      knowledge: ``[T]`` base knowledge :math:`k_t \in [0, 1]`.
      temperature: :math:`\tau`.
      key: the operator's key (KnOTS is deterministic).
      hparams: KnOTS hyperparameters (default: the registry's).

    Returns:
      ``{path: [d, k]}`` the merged update.

    Example:
      >>> weighted_knots(factors, np.array([1.0, 0.8]), 0.1, key)  # doctest: +SKIP
    """
    from mergetheory.merge import base_knowledge_weights

    know = np.asarray(knowledge, np.float64)
    coef = know.size * np.asarray(base_knowledge_weights(know, temperature=temperature))
    scaled = {p: f._replace(scaling=np.asarray(f.scaling) * coef) for p, f in factors.items()}
    return merge_lora_tree("knots", scaled, key, hparams)


def weighted_merge(
    zoo: Any, config: Any, key: Any, knots_hparams: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    r"""Base-knowledge weighted merges against their unweighted versions, :math:`\tau` on val.

    Replicate ``r``: a random subset (``fold_in(key, r)``) of ``weighted_tasks`` LoRA task
    experts; base knowledge :math:`k_t = \min_s b_s / b_t` (the base's bits per byte on the
    *val* windows, as in ``real_merging``); weights
    :math:`\omega = \mathrm{softmax}((1 - k)/\tau)`. For each :math:`\tau` of
    ``weighted_temperatures`` the linear merge ``base_knowledge_weighted`` (dense
    :math:`sBA`) and weighted KnOTS (module docstring; ``knots_hparams``) are formed; the
    :math:`\tau` of each is the one with the highest mean retained gain
    :math:`(b_0 - b)/(b_0 - b_t)` on the *val* windows (:func:`choose_on_val`); the reported
    retained gains are on the *test* windows, with the plain mean and plain KnOTS of the
    same experts.

    Args:
      zoo: the language :class:`~mergetheory.models.zoo.ExpertZoo`.
      config: ``weighted_temperatures``, ``weighted_tasks``, ``weighted_replicates``.
      key: PRNG key of the subsets.
      knots_hparams: KnOTS hyperparameters (default: the registry's).

    Returns:
      ``weighted_chosen_tau [R]`` and ``weighted_knots_chosen_tau [R]``, the test gains
      ``{weighted,weighted_knots,mean,knots}_gain [R, size]``, ``low [R, size]`` (the half
      of each subset the base knows least), and ``diff``: ``{comparison: {part: [R]}}``,
      the per-replicate mean difference of two merges' gains over all tasks / the low /
      the high half (comparisons ``weighted_minus_mean``, ``weighted_knots_minus_knots``,
      ``weighted_knots_minus_mean``, ``knots_minus_mean``).
    """
    from mergetheory.lora import densify
    from mergetheory.merge import MERGE_OPERATORS
    from mergetheory.models.zoo_eval import evaluate, params_from_delta

    num = len(zoo.task_names)
    dense = densify(zoo.lora_factors)  # {path: [T, d_out, d_in]}
    base = {s: evaluate(zoo, zoo.base_params, split=s) for s in ("val", "test")}
    own = {s: np.zeros(num) for s in ("val", "test")}
    for t in range(num):
        params = params_from_delta(zoo, {p: v[t] for p, v in dense.items()})
        for s in own:
            own[s][t] = evaluate(zoo, params, split=s, tasks=[t])[0]
    temps = config.weighted_temperatures
    size = min(config.weighted_tasks, num)
    gains: dict[str, list[np.ndarray]] = {k: [] for k in ("weighted", "mean", "weighted_knots",
                                                          "knots")}  # fmt: skip
    chosen: dict[str, list[float]] = {"weighted": [], "weighted_knots": []}
    lows = []
    for r in range(config.weighted_replicates):
        sub = np.sort(np.asarray(jr.permutation(jr.fold_in(key, r), num))[:size])
        tv = {p: v[sub] for p, v in dense.items()}
        know = base["val"][sub].min() / base["val"][sub]

        def retained(delta: Any, split: str, sub: Any = sub) -> np.ndarray:
            b = evaluate(zoo, params_from_delta(zoo, delta), split=split, tasks=sub)
            return (base[split][sub] - b) / (base[split][sub] - own[split][sub])

        def on_val(delta: Any) -> float:
            return float(retained(delta, "val").mean())

        mean_delta = MERGE_OPERATORS["average"].fn(tv, key)
        fn = MERGE_OPERATORS["base_knowledge_weighted"].fn
        w_deltas = [fn(tv, key, base_accuracy=know, temperature=t) for t in temps]
        best = choose_on_val(w_deltas, on_val)
        chosen["weighted"].append(temps[best])
        gains["weighted"].append(retained(w_deltas[best], "test"))
        gains["mean"].append(retained(mean_delta, "test"))
        lows.append(know <= np.median(know))  # the tasks the base knows least (by val bits)
        # the same weights inside KnOTS: each expert's scaling times size * omega_t
        factors = {p: LoraFactors(B=f.B[sub], A=f.A[sub], scaling=f.scaling)
                   for p, f in zoo.lora_factors.items()}  # fmt: skip
        knots_delta = merge_lora_tree("knots", factors, key, knots_hparams)
        wk_deltas = [weighted_knots(factors, know, t, key, knots_hparams) for t in temps]
        best = choose_on_val(wk_deltas, on_val)
        chosen["weighted_knots"].append(temps[best])
        gains["weighted_knots"].append(retained(wk_deltas[best], "test"))
        gains["knots"].append(retained(knots_delta, "test"))
    g = {k: np.stack(v) for k, v in gains.items()}  # [R, size]
    low = np.stack(lows)
    masks = {"all": np.ones_like(low), "low": low, "high": ~low}
    diff = {
        name: {part: ((g[a] - g[b]) * m).sum(1) / m.sum(1) for part, m in masks.items()}
        for name, (a, b) in _COMPARISONS.items()
    }
    return {"weighted_chosen_tau": np.array(chosen["weighted"]),
            "weighted_knots_chosen_tau": np.array(chosen["weighted_knots"]),
            **{f"{k}_gain": v for k, v in g.items()}, "low": low, "diff": diff}  # fmt: skip


def weighted_summary(weighted: dict[str, Any], confidence: float) -> dict[str, Any]:
    """Summary keys of :func:`weighted_merge`: ``{comparison}_{part}`` with ``_lo``/``_hi``
    (mean over replicates, Student-t interval) and the chosen temperatures."""
    out: dict[str, Any] = {
        "weighted_tau_chosen": [float(t) for t in weighted["weighted_chosen_tau"]],
        "weighted_knots_tau_chosen": [float(t) for t in weighted["weighted_knots_chosen_tau"]],
    }
    for name, parts in weighted["diff"].items():
        for part, diffs in parts.items():
            m, lo, hi = mean_interval(diffs, confidence)
            out[f"{name}_{part}"], out[f"{name}_{part}_lo"], out[f"{name}_{part}_hi"] = m, lo, hi
    return out


def contrast_pairs(operators: Sequence[str], weaker: str = "average") -> list[tuple[int, int]]:
    """Index pairs ``(stronger, weaker)``: every operator against ``weaker``, then the
    others in their listed order (strongest first: ``(knots, ties)``)."""
    ops = list(operators)
    j = ops.index(weaker)
    strong = [i for i in range(len(ops)) if i != j]
    return [(i, j) for i in strong] + list(itertools.combinations(strong, 2))


def _contrast_stats(*arrays: np.ndarray, num_ops: int, pairs: Sequence[tuple[int, int]]):
    """Per operator the :data:`CONTRAST_STATS` (``[ops, 3]``), then per pair their difference.

    ``arrays = (*S, delta_base, frobenius, sigma_max, score_gap)``. The values are those of
    :func:`experiments.instance_rank_sweep.dominance_stats` (Spearman; the partial one by
    rank regression on both size measures, as :func:`mergetheory.stats.partial_spearman`),
    computed for all operators from one ranking and one least-squares solve.
    """
    from scipy import stats

    ranks = stats.rankdata(np.stack(arrays), axis=1)  # [ops + 4, n]
    corr = np.corrcoef(ranks)
    gap, size, score_gap = num_ops, slice(num_ops + 1, num_ops + 3), num_ops + 3
    design = np.column_stack([np.ones(ranks.shape[1]), *ranks[size]])
    ys = np.column_stack([ranks[gap], *ranks[:num_ops]])
    coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
    res = ys - design @ coef
    sq = (res**2).sum(0)
    den = np.sqrt(sq[0] * sq[1:])
    partial = np.where(den > 1e-12 * ranks.shape[1] ** 2, res[:, 1:].T @ res[:, 0] / den, np.nan)
    per_op = np.stack([corr[:num_ops, gap], partial, corr[:num_ops, score_gap]], axis=1)
    diffs = np.stack([per_op[i] - per_op[j] for i, j in pairs])
    return np.concatenate([per_op.ravel(), diffs.ravel()])


def operator_contrast(
    key: Any,
    s_ref: np.ndarray,
    operators: Sequence[str],
    predictors: Sequence[np.ndarray],
    files: np.ndarray,
    *,
    num_resamples: int,
    confidence: float,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    r"""Weaker vs stronger operators: paired bootstrap of the base-knowledge effect.

    For the pairs of :func:`contrast_pairs` (stronger ``a``, weaker ``b``), the difference
    :math:`\rho_a - \rho_b` of each statistic of :data:`CONTRAST_STATS` (Spearman of
    :math:`\hat S` with :math:`\Delta_\text{base}`, the partial one given
    :math:`\|\Delta W\|_F` and :math:`\sigma_\max`, Spearman with the score gap), with a
    percentile interval from one cluster bootstrap over source files that resamples the
    same files for every operator (:func:`mergetheory.stats.grouped_bootstrap`). The effect
    is negative, so a positive difference means it *shrinks* under the stronger operator:
    verdict ``shrinks`` = :func:`mergetheory.stats.hypothesis_verdict` with predicted sign
    :math:`+1` ("fails": it grows).

    Args:
      key: PRNG key of the resampling.
      s_ref: ``[ops, K]`` :math:`\hat S` of every operator on the same updates.
      operators: the operator names (contains ``"average"``).
      predictors: ``(delta_base, frobenius, sigma_max, score_gap)``, each ``[K]``.
      files: ``[K]`` source-file index (the groups).
      num_resamples, confidence: of the bootstrap.

    Returns:
      ``(arrays, summary)``: ``operator_contrast [3, pairs, stats]`` (value, low, high),
      ``operator_contrast_per_op [3, ops, stats]``, ``operator_contrast_pairs`` (``a-b``);
      summary ``operator_contrast_{stat}_{a}_minus_{b}`` with ``_lo``/``_hi`` and
      ``verdict_shrinks_{stat}_{a}_minus_{b}``.
    """
    pairs = contrast_pairs(operators)
    stat = lambda *a: _contrast_stats(*a, num_ops=len(operators), pairs=pairs)  # noqa: E731
    e = grouped_bootstrap(
        key, stat, (*s_ref, *predictors), files, num_resamples=num_resamples,
        confidence=confidence,
    )  # fmt: skip
    est = np.stack([e.value, e.ci_low, e.ci_high])  # [3, ops * S + pairs * S]
    num_s = len(CONTRAST_STATS)
    split = len(operators) * num_s
    per_op = est[:, :split].reshape(3, len(operators), num_s)
    diff = est[:, split:].reshape(3, len(pairs), num_s)
    names = [f"{operators[i]}-{operators[j]}" for i, j in pairs]
    summary: dict[str, Any] = {}
    for p, (i, j) in enumerate(pairs):
        for c, s in enumerate(CONTRAST_STATS):
            key_ = f"operator_contrast_{s}_{operators[i]}_minus_{operators[j]}"
            v, lo, hi = diff[:, p, c]
            summary[key_], summary[key_ + "_lo"], summary[key_ + "_hi"] = (
                float(v), float(lo), float(hi))  # fmt: skip
            summary[f"verdict_shrinks_{s}_{operators[i]}_minus_{operators[j]}"] = (
                hypothesis_verdict(lo, hi, predicted_sign=1).status
            )
    arrays = {"operator_contrast": diff, "operator_contrast_per_op": per_op,
              "operator_contrast_pairs": np.array(names)}  # fmt: skip
    return arrays, summary
