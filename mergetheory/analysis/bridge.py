r"""The bridge from width to merged performance: curves over random subsets, paired tests, n*.

A *performance curve* is :math:`n \mapsto P(n)`, the merged model's (normalised)
performance after merging :math:`n` experts, averaged over random subsets. To test its
shape the subsets are *nested*: path :math:`s` is a random permutation :math:`\pi_s` of the
:math:`T` experts and its :math:`n`-subset is :math:`\{\pi_s(1), \dots, \pi_s(n)\}`. Each
path gives :math:`P_s(1), \dots, P_s(N)`; first and second differences are taken *within*
a path (paired, like the common random numbers of :func:`mergetheory.width.nested_width`),
so their standard errors over paths are those of paired differences. Every operator and the
width curve use the same paths, so the comparisons between them are paired too.

* :func:`nested_subsets` draws the paths; :func:`paired_curve` turns ``[S, N]`` path values
  into a :class:`~mergetheory.theory.threshold.WidthCurve` (means, paired stderrs of the
  first and second differences), which the threshold definitions of
  :mod:`mergetheory.theory.threshold` accept unchanged;
* :func:`normalized_performance`: "1 = as good as the expert":
  :math:`(b - m)/(b - e)` for losses, :math:`m/e` for accuracies;
* :func:`holm` (Holm 1979 step-down adjusted p-values) and :func:`concavity_test`:
  one-sided z-tests of every second difference, Holm-adjusted across the :math:`n` tested;
* :func:`n_star`: the same definitions of :math:`n^\star` for a width curve and a
  performance curve (gain ratio :math:`\kappa`; utility :math:`P_n/g_1 - \kappa n`), and
  :func:`compare_n_star` for predicted (width) against observed (performance);
* :func:`rescale_to_norm`: a merged update rescaled to a norm budget (equal-norm comparisons
  of operators).

*Reconstruction.* The paper's claims (C3 concavity, C4 a unique :math:`n^\star`) are stated
for the Gaussian width; reading them as claims about merged performance, with the gain
ratio and utility definitions of Sources S5 applied to the performance curve, is
this toolkit's reconstruction (``wang2025moreexperts`` in ``paper/refs.bib``).

Example:
  >>> paths = nested_subsets(jax.random.key(0), num_tasks=10, num_paths=20)   # [20, 10]
  >>> curve = paired_curve(perf)            # perf[s, n-1] = P_s(n)
  >>> n_star(curve, "gain_ratio", kappa=0.5).n_star
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from scipy.special import ndtr

from .._types import Key
from ..geometry import ConvexHullWithOrigin
from ..theory.threshold import (
    ThresholdOutput,
    WidthCurve,
    threshold_gain_ratio,
    threshold_utility,
)
from ..width import nested_width

__all__ = [
    "ConcavityTest",
    "NStarComparison",
    "N_STAR_DEFINITIONS",
    "PairedDifference",
    "compare_n_star",
    "concavity_test",
    "holm",
    "n_star",
    "nested_subsets",
    "normalized_performance",
    "paired_curve",
    "paired_difference",
    "rescale_to_norm",
    "subset_task_vectors",
    "width_paths",
]

N_STAR_DEFINITIONS = ("gain_ratio", "utility")


def nested_subsets(key: Key, *, num_tasks: int, num_paths: int) -> np.ndarray:
    r"""``num_paths`` random permutations of ``range(num_tasks)``: ``[S, T]`` int.

    The :math:`n`-subset of path :math:`s` is ``paths[s, :n]`` (nested in :math:`n`).
    Path :math:`s` uses ``fold_in(key, s)``, so adding paths keeps the earlier ones.
    """
    if num_tasks < 1 or num_paths < 1:
        raise ValueError(f"need num_tasks >= 1 and num_paths >= 1, got {num_tasks}, {num_paths}")
    keys = jax.vmap(lambda s: jr.fold_in(key, s))(jnp.arange(num_paths))
    perms = jax.vmap(lambda k: jr.permutation(k, num_tasks))(keys)
    return np.asarray(perms, dtype=np.int64)


def subset_task_vectors(task_vectors: Any, subsets: Any) -> Any:
    """Gather ``[S, n]`` subsets of a ``[T, ...]`` pytree: every leaf becomes ``[S, n, ...]``."""
    idx = jnp.asarray(subsets)
    return jtu.tree_map(lambda x: jnp.take(x, idx, axis=0), task_vectors)


def width_paths(
    key: Key,
    gram: Any,
    paths: Any,
    *,
    kind: str = "hull0",
    quantity: str = "width",
    num_samples: int,
) -> np.ndarray:
    r"""Width (or statistical dimension) of the nested sets along every path: ``[S, N]``.

    Entry ``[s, n-1]`` is the Monte Carlo estimate of the width of ``kind`` built from the
    first ``n`` experts of path ``s`` (:func:`mergetheory.width.nested_width` on the path's
    reordered Gram matrix, key ``fold_in(key, s)``), so the curve is measured on exactly the
    subsets the performance curves use. Feed it to :func:`paired_curve`; the spread over
    paths then includes the Monte Carlo error.

    Args:
      key: PRNG key.
      gram: ``[T, T]`` Gram matrix of the task vectors.
      paths: ``[S, N]`` expert indices (e.g. ``nested_subsets(...)[:, :N]``).
      kind: set family (``"hull0"``, ``"cone"``, ...).
      quantity: ``"width"`` or ``"statdim"`` (cones and spans).
      num_samples: Monte Carlo samples per path.
    """
    g = np.asarray(gram)
    idx = np.asarray(paths)
    out = []
    for s, perm in enumerate(idx):
        hull = ConvexHullWithOrigin.from_gram(jnp.asarray(g[np.ix_(perm, perm)]))
        est = nested_width(
            jr.fold_in(key, s), hull, kind=kind, quantity=quantity, num_samples=num_samples
        )
        out.append(np.asarray(est.mean))
    return np.stack(out)


def normalized_performance(
    merged: Any, base: Any, expert: Any, *, higher_is_better: bool
) -> np.ndarray:
    r"""Normalised merged performance, 1 = as good as the expert, broadcasting over tasks.

    Losses (``higher_is_better=False``): :math:`(b - m)/(b - e)` (0 = no better than the
    base). Accuracies: :math:`m / e`.

    Args:
      merged: ``[..., T]`` metric of the merged model per task.
      base: ``[T]`` metric of the base model per task.
      expert: ``[T]`` metric of each task's own expert.
      higher_is_better: the metric's direction.

    Returns:
      ``[..., T]`` float64.
    """
    m = np.asarray(merged, np.float64)
    b = np.asarray(base, np.float64)
    e = np.asarray(expert, np.float64)
    if higher_is_better:
        if np.any(e <= 0):
            raise ValueError(f"expert accuracies must be > 0 to normalise, got {e}")
        return m / e
    gap = b - e
    if np.any(gap <= 0):
        bad = np.flatnonzero(gap <= 0)
        raise ValueError(f"experts {bad.tolist()} are no better than the base; cannot normalise")
    return (b - m) / gap


def paired_curve(paths: Any, *, ns: Any | None = None) -> WidthCurve:
    r"""Mean curve and paired standard errors from per-path values ``[S, N]``.

    :math:`\bar P_n = \frac1S\sum_s P_s(n)`; the first differences
    :math:`g_{s,n} = P_s(n+1) - P_s(n)` and second differences
    :math:`\Delta^2_{s,n} = g_{s,n+1} - g_{s,n}` are formed per path and their standard
    errors are the sample standard deviations over paths divided by :math:`\sqrt S`.

    Args:
      paths: ``[S, N]`` (``S >= 2``, ``N >= 3``).
      ns: ``[N]`` numbers of experts (default ``1..N``).

    Returns:
      A :class:`~mergetheory.theory.threshold.WidthCurve`.
    """
    p = np.asarray(paths, np.float64)
    if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] < 3:
        raise ValueError(f"paths must be [S >= 2, N >= 3], got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("paths contain NaN or Inf")
    s = p.shape[0]

    def mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.mean(axis=0), x.std(axis=0, ddof=1) / math.sqrt(s)

    d1 = np.diff(p, axis=1)
    d2 = np.diff(d1, axis=1)
    (m, se), (g, gse), (h, hse) = mean_se(p), mean_se(d1), mean_se(d2)
    ns_arr = np.arange(1, p.shape[1] + 1) if ns is None else np.asarray(ns, np.int64)
    return WidthCurve.from_arrays(ns_arr, m, se, g, gse, h, hse, s)


def holm(pvalues: Any) -> np.ndarray:
    r"""Holm's step-down adjusted p-values (family-wise error control, any dependence).

    Sort :math:`p_{(1)} \le \dots \le p_{(m)}`; the adjusted values are
    :math:`\tilde p_{(i)} = \max_{j \le i}\min(1, (m - j + 1)\,p_{(j)})`, returned in the
    input order. Reject :math:`H_i` at level :math:`\alpha` iff :math:`\tilde p_i \le \alpha`.

    Reference: Holm, "A simple sequentially rejective multiple test procedure", 1979.

    Example:
      >>> holm([0.01, 0.04, 0.03])      # -> [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, np.float64).reshape(-1)
    if np.any((p < 0) | (p > 1) | ~np.isfinite(p)):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.maximum.accumulate(scaled)
    out = np.empty(m)
    out[order] = adjusted
    return out


class ConcavityTest(NamedTuple):
    r"""Holm-corrected one-sided tests of every paired second difference of a curve.

    Attributes:
      ns: ``[N-2]`` centre :math:`n` of each second difference :math:`P(n+1) - 2P(n) + P(n-1)`.
      diff2, diff2_stderr: ``[N-2]`` the paired second differences and their stderrs.
      p_convex: ``[N-2]`` Holm-adjusted p-values of :math:`H_0: \Delta^2 \le 0` (small:
        significantly convex step).
      p_concave: ``[N-2]`` Holm-adjusted p-values of :math:`H_0: \Delta^2 \ge 0` (small:
        significantly concave step).
      num_convex, num_concave: rejections at ``alpha``.
      alpha: the family-wise level.
      verdict: ``"strictly concave"`` (every step significantly concave), ``"concave"``
        (no significantly convex step, some significantly concave), ``"convex somewhere"``,
        or ``"inconclusive"`` (nothing significant).
    """

    ns: np.ndarray
    diff2: np.ndarray
    diff2_stderr: np.ndarray
    p_convex: np.ndarray
    p_concave: np.ndarray
    num_convex: int
    num_concave: int
    alpha: float
    verdict: str


def concavity_test(curve: WidthCurve, *, alpha: float = 0.05) -> ConcavityTest:
    r"""Test concavity of a curve step by step, Holm-adjusted across the :math:`n` tested.

    Each second difference gets two one-sided normal tests (statistic
    :math:`z = \Delta^2/\mathrm{se}`); the :math:`N - 2` p-values of each side are adjusted
    with :func:`holm`. A zero standard error with a nonzero difference counts as
    significant; an exactly zero difference never does.

    Args:
      curve: a :class:`~mergetheory.theory.threshold.WidthCurve` (e.g. from
        :func:`paired_curve`), ``N >= 3``.
      alpha: family-wise level.

    Returns:
      :class:`ConcavityTest`.
    """
    d2 = np.asarray(curve.diff2, np.float64)
    se = np.asarray(curve.diff2_stderr, np.float64)
    if d2.size == 0:
        raise ValueError("a concavity test needs N >= 3 points")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, d2 / np.where(se > 0, se, 1.0), np.sign(d2) * np.inf)
    p_convex = holm(1.0 - ndtr(z))
    p_concave = holm(ndtr(z))
    n_cvx = int(np.sum(p_convex <= alpha))
    n_ccv = int(np.sum(p_concave <= alpha))
    if n_cvx:
        verdict = "convex somewhere"
    elif n_ccv == d2.size:
        verdict = "strictly concave"
    elif n_ccv:
        verdict = "concave"
    else:
        verdict = "inconclusive"
    ns = np.asarray(curve.ns)[1:-1]
    return ConcavityTest(ns, d2, se, p_convex, p_concave, n_cvx, n_ccv, float(alpha), verdict)


def n_star(curve: WidthCurve, definition: str, *, kappa: float, z: float = 1.96) -> ThresholdOutput:
    r""":math:`n^\star` of a width *or* a performance curve under one shared definition.

    * ``"gain_ratio"``: :math:`\min\{n : g_n < \kappa g_1\}`
      (:func:`~mergetheory.theory.threshold.threshold_gain_ratio`);
    * ``"utility"``: :math:`\arg\max_n P_n / g_1 - \kappa n` with :math:`g_1 = P_2 - P_1`
      (:func:`~mergetheory.theory.threshold.threshold_utility` with a linear, scale-free
      utility), so both curves are measured in units of their own first gain and the cost
      per expert is the same :math:`\kappa`. Needs :math:`g_1 > 0`.

    Args:
      curve: a :class:`~mergetheory.theory.threshold.WidthCurve` on ``n = 1..N``.
      definition: one of :data:`N_STAR_DEFINITIONS`.
      kappa: :math:`\kappa \in (0, 1)`.
      z: standard errors for the confidence sets.

    Returns:
      :class:`~mergetheory.theory.threshold.ThresholdOutput`.
    """
    if definition == "gain_ratio":
        return threshold_gain_ratio(curve, kappa=kappa, z=z)
    if definition == "utility":
        if not 0.0 < kappa < 1.0:
            raise ValueError(f"kappa must lie in (0, 1), got {kappa}")
        g1 = float(curve.diff1[0])
        if not g1 > 0:
            raise ValueError(f"the utility definition needs a positive first gain, got {g1}")
        return threshold_utility(curve, utility_fn=lambda w: np.asarray(w) / g1, cost=kappa, z=z)
    raise ValueError(f"definition must be one of {N_STAR_DEFINITIONS}, got {definition!r}")


class NStarComparison(NamedTuple):
    r"""Predicted (width) against observed (performance) :math:`n^\star`, one definition.

    Attributes:
      definition, kappa: the shared definition.
      predicted, observed: the two :class:`~mergetheory.theory.threshold.ThresholdOutput`.
      overlap: the two confidence sets intersect (censored ends are open to the right).
      difference: ``observed.n_star - predicted.n_star``.
    """

    definition: str
    kappa: float
    predicted: ThresholdOutput
    observed: ThresholdOutput
    overlap: bool
    difference: int


def _interval(out: ThresholdOutput) -> tuple[float, float]:
    hi = math.inf if out.censored else float(out.ci_high)
    return float(out.ci_low), hi


def compare_n_star(
    width: WidthCurve,
    performance: WidthCurve,
    definition: str,
    *,
    kappa: float,
    z: float = 1.96,
) -> NStarComparison | None:
    r"""Apply one definition to both curves; ``None`` when it is undefined for either.

    The utility definition is undefined for a curve whose first gain is not positive (a
    performance curve that falls from the first merge on).
    """
    try:
        pred = n_star(width, definition, kappa=kappa, z=z)
        obs = n_star(performance, definition, kappa=kappa, z=z)
    except ValueError:
        return None
    (a0, a1), (b0, b1) = _interval(pred), _interval(obs)
    overlap = a0 <= b1 and b0 <= a1
    return NStarComparison(
        definition, float(kappa), pred, obs, bool(overlap), obs.n_star - pred.n_star
    )


def rescale_to_norm(merged: Any, budget: Any) -> Any:
    r"""Rescale a merged update (pytree, optional leading batch axis ``[S, ...]`` on every
    leaf when ``budget`` is ``[S]``) to Euclidean norm ``budget``: :math:`b\,\Delta/\|\Delta\|`.

    A zero update stays zero.
    """
    leaves = jtu.tree_leaves(merged)
    b = jnp.asarray(budget)
    axes = lambda x: tuple(range(b.ndim, x.ndim))  # noqa: E731
    sq = sum(jnp.sum(jnp.square(x), axis=axes(x)) for x in leaves)
    norm = jnp.sqrt(sq)
    factor = jnp.where(norm > 0, b / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jtu.tree_map(
        lambda x: x * factor.reshape(factor.shape + (1,) * (x.ndim - b.ndim)), merged
    )


class PairedDifference(NamedTuple):
    r"""Paired difference :math:`a - b` of two operators' curves over the same paths.

    Attributes:
      mean, stderr: ``[N]`` per-:math:`n` mean difference and its standard error.
      avg, avg_stderr: the difference averaged over :math:`n \ge 2` (per path, then over
        paths) and its standard error.
      num_better, num_worse: :math:`n \ge 2` where :math:`a` is significantly better /
        worse (one-sided z-tests, Holm-adjusted across those :math:`n`, at ``alpha``).
    """

    mean: np.ndarray
    stderr: np.ndarray
    avg: float
    avg_stderr: float
    num_better: int
    num_worse: int


def paired_difference(a: Any, b: Any, *, alpha: float = 0.05) -> PairedDifference:
    """Compare two ``[S, N]`` path arrays taken on the same subsets (:class:`PairedDifference`)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise ValueError(f"need [S >= 2, N >= 2] paths, got shape {d.shape}")
    s = d.shape[0]
    mean, se = d.mean(0), d.std(0, ddof=1) / math.sqrt(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.sign(mean) * np.inf)
    better = holm(1.0 - ndtr(z[1:]))
    worse = holm(ndtr(z[1:]))
    avg = d[:, 1:].mean(axis=1)
    return PairedDifference(
        mean,
        se,
        float(avg.mean()),
        float(avg.std(ddof=1) / math.sqrt(s)),
        int(np.sum(better <= alpha)),
        int(np.sum(worse <= alpha)),
    )
