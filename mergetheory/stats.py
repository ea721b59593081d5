r"""Statistics used by the hypotheses: rank correlations, the percentile bootstrap, the G-test.

* :func:`rankdata` (average ranks, ``jax.scipy.stats.rankdata``), :func:`pearson_correlation`
  and :func:`spearman_correlation` over the last axis, traceable and ``vmap``-able.
* :func:`bootstrap_correlation`: a correlation with a paired percentile-bootstrap CI
  (:class:`CorrelationEstimate`); :func:`percentile_ci` of any replicates.
* :func:`g_test`: the likelihood-ratio (G) test of observed against expected counts,

  .. math::  G = 2\sum_b O_b \log\frac{O_b}{E_b} \;\sim\; \chi^2_{B - 1 - \text{ddof}}
             \quad\text{(asymptotically, under the null)},

  through ``scipy.stats.power_divergence``, with Pearson's :math:`\chi^2` alongside and a
  :math:`\log_{10}` p-value that stays finite far into the tail (:func:`chi2_log10_sf`,
  which SciPy lacks); :func:`pool_bins` merges sparse bins first.
* :func:`hypothesis_verdict`: holds / fails / inconclusive from a CI of a directional effect.
* :func:`grouped_bootstrap`: any statistic with a *cluster* (group) percentile bootstrap,
  resampling whole groups (points that share a source file, a base or a task are not
  independent); ``scipy.stats.bootstrap`` resamples points only, hence our own.
* :func:`partial_spearman`: Spearman's :math:`\rho` of ``x`` and ``y`` controlling for
  covariates by rank regression (SciPy has no partial correlation).

Reference: Efron & Tibshirani, *An Introduction to the Bootstrap* (percentile interval);
Sokal & Rohlf, *Biometry* (G-test).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._types import Key
from .verdict import FAILS, HOLDS, INCONCLUSIVE, Verdict

__all__ = [
    "CorrelationEstimate",
    "GTest",
    "bootstrap_correlation",
    "chi2_log10_sf",
    "default_float_dtype",
    "g_test",
    "grouped_bootstrap",
    "hypothesis_verdict",
    "partial_spearman",
    "pearson_correlation",
    "percentile_ci",
    "pool_bins",
    "rankdata",
    "spearman_correlation",
]


def default_float_dtype() -> Any:
    """JAX's default float dtype (float64 under ``jax_enable_x64``, else float32)."""
    return jnp.result_type(float)


# --------------------------------------------------------------------------------------
# the G-test
# --------------------------------------------------------------------------------------


def pool_bins(
    observed: np.ndarray, expected: np.ndarray, min_expected: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins (left to right) until every expected count is >= ``min_expected``.

    A remainder below the threshold joins the last pooled bin.

    Example:
      >>> pool_bins(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]), 3.0)
      (array([3., 3.]), array([3., 3.]))
    """
    obs, exp_ = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc += o
        e_acc += e
        if e_acc >= min_expected:
            obs.append(o_acc)
            exp_.append(e_acc)
            o_acc = e_acc = 0.0
    if e_acc > 0 or o_acc > 0:
        if obs:
            obs[-1] += o_acc
            exp_[-1] += e_acc
        else:
            obs.append(o_acc)
            exp_.append(e_acc)
    return np.asarray(obs), np.asarray(exp_)


def chi2_log10_sf(x: float, dof: int) -> float:
    r""":math:`\log_{10} P(\chi^2_k \ge x)`, finite far into the tail.

    SciPy's ``logsf`` is used while it is finite; beyond, the asymptotic expansion of the
    upper incomplete gamma function, :math:`\Gamma(s, z) \approx z^{s-1} e^{-z}
    (1 + (s-1)/z)` with :math:`s = k/2`, :math:`z = x/2`.

    Example:
      >>> chi2_log10_sf(5000.0, 9) < -1000
      True
    """
    from scipy import special, stats

    val = float(stats.chi2.logsf(x, dof))
    if not np.isfinite(val):
        s_, z = dof / 2.0, x / 2.0
        val = (s_ - 1.0) * np.log(z) - z + np.log1p((s_ - 1.0) / z) - special.gammaln(s_)
    return float(val / np.log(10.0))


class GTest(NamedTuple):
    r"""What :func:`g_test` returns.

    Attributes:
      g_statistic: :math:`G = 2\sum_b O_b \log(O_b/E_b)` (empty bins add 0).
      chi2_statistic: Pearson's :math:`\sum_b (O_b - E_b)^2 / E_b` over the same bins.
      dof: ``bins - 1 - ddof``.
      p_value: :math:`P(\chi^2_\text{dof} \ge G)` (may underflow to 0; NaN if dof < 1).
      log10_p_value: :math:`\log_{10}` of the p-value, computed without underflow.
    """

    g_statistic: float
    chi2_statistic: float
    dof: int
    p_value: float
    log10_p_value: float


def g_test(observed: Any, expected: Any, *, ddof: int = 0) -> GTest:
    r"""Likelihood-ratio (G) test of counts against expected counts, with Pearson's :math:`\chi^2`.

    ``scipy.stats.power_divergence`` gives both statistics and the p-value; the
    :math:`\log_{10}` p-value comes from :func:`chi2_log10_sf`, finite where the p-value
    underflows. Bins with zero observed and zero expected count add nothing to :math:`G`
    (:math:`0 \log 0 = 0`) but still count towards the degrees of freedom.

    Args:
      observed: ``[B]`` observed counts.
      expected: ``[B]`` expected counts under the null (same total as ``observed``).
      ddof: parameters fitted to the data (the dof are ``B - 1 - ddof``).

    Returns:
      :class:`GTest` (Python values).

    Example:
      >>> g_test(np.array([10.0, 30.0]), np.array([20.0, 20.0])).dof
      1
    """
    from scipy import stats

    obs = np.asarray(observed, dtype=np.float64)
    exp_ = np.asarray(expected, dtype=np.float64)
    dof = int(obs.size - 1 - ddof)
    keep = (obs > 0) | (exp_ > 0)
    # the dropped empty bins still count: lower ddof by their number
    g = stats.power_divergence(
        obs[keep], exp_[keep], ddof=ddof - int(obs.size - keep.sum()), lambda_="log-likelihood"
    )[0]
    # G >= 0 when the totals agree (Gibbs); a round-off negative (-4e-15 for equal tables)
    # would give SciPy's p-value NaN
    g = max(float(g), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty bin gives 0 / 0 = NaN
        chi2 = stats.power_divergence(obs, exp_, lambda_="pearson")[0]
    if dof < 1:
        return GTest(float(g), float(chi2), dof, float("nan"), float("nan"))
    return GTest(g, float(chi2), dof, float(stats.chi2.sf(g, dof)), chi2_log10_sf(g, dof))


# --------------------------------------------------------------------------------------
# correlations with a bootstrap CI
# --------------------------------------------------------------------------------------


def rankdata(x: jax.Array) -> jax.Array:
    """Average ranks (1-based, ties share the mean rank) along the last axis.

    ``jax.scipy.stats.rankdata(method="average")`` along the last axis, in the input's
    float dtype (integers: the default float). Traceable and ``vmap``-able; matches
    ``scipy.stats.rankdata(method="average")`` (the ranks are exact half-integers).

    Example:
      >>> rankdata(jnp.array([3.0, 1.0, 3.0]))
      Array([2.5, 1. , 2.5], dtype=float32)
    """
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else default_float_dtype()
    return jax.scipy.stats.rankdata(x, method="average", axis=-1).astype(dtype)


def pearson_correlation(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Pearson correlation over the last axis (NaN when either input is constant).

    .. math::  r = \frac{\sum_j (x_j-\bar x)(y_j-\bar y)}{\|x-\bar x\|\,\|y-\bar y\|}.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    # the wider float of the two (explicit: strict dtype promotion forbids mixing them)
    floats = [
        d if jnp.issubdtype(d, jnp.floating) else default_float_dtype() for d in (x.dtype, y.dtype)
    ]
    dtype = max(floats, key=lambda d: jnp.dtype(d).itemsize)
    shape = jnp.broadcast_shapes(x.shape, y.shape)  # explicit: no implicit rank promotion
    x = jnp.broadcast_to(x.astype(dtype), shape)
    y = jnp.broadcast_to(y.astype(dtype), shape)
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = jnp.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    return jnp.where(den > 0, (xc * yc).sum(-1) / jnp.where(den > 0, den, 1), jnp.nan)


def spearman_correlation(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Spearman :math:`\rho`: Pearson correlation of average ranks, over the last axis."""
    return pearson_correlation(rankdata(x), rankdata(y))


class CorrelationEstimate(NamedTuple):
    """A correlation (or a difference of correlations) with a percentile-bootstrap CI.

    Attributes:
      value: ``[...]`` the statistic on the full sample.
      ci_low: ``[...]`` lower percentile-bootstrap bound.
      ci_high: ``[...]`` upper bound.
      stderr: ``[...]`` standard deviation of the bootstrap replicates.
      samples: ``[B, ...]`` bootstrap replicates (NaN where a resample was degenerate).
      confidence: the CI's nominal coverage.
      num_points: ``n``, the number of paired observations.
    """

    value: jax.Array
    ci_low: jax.Array
    ci_high: jax.Array
    stderr: jax.Array
    samples: jax.Array
    confidence: float
    num_points: int


_CORRELATIONS = {"spearman": spearman_correlation, "pearson": pearson_correlation}


@functools.partial(jax.jit, static_argnames=("confidence",))
def percentile_ci(samples: jax.Array, confidence: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Percentile interval and standard deviation of bootstrap replicates ``[B, ...]``.

    Returns the :math:`[\alpha/2, 1 - \alpha/2]` percentiles, :math:`\alpha = 1 -`
    ``confidence``, and the replicates' standard deviation (``ddof=1``), ignoring NaN.
    """
    alpha = 100.0 * (1.0 - confidence) / 2.0
    lo = jnp.nanpercentile(samples, alpha, axis=0)
    hi = jnp.nanpercentile(samples, 100.0 - alpha, axis=0)
    return lo, hi, jnp.nanstd(samples, axis=0, ddof=1)


@functools.partial(jax.jit, static_argnames=("method", "num_resamples", "batch_size"))
def _bootstrap(
    key: Key, x: jax.Array, y: jax.Array, method: str, num_resamples: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    corr = _CORRELATIONS[method]
    n = x.shape[-1]
    idx = jr.randint(key, (num_resamples, n), 0, n, jnp.int32)
    # chunked: memory is set by batch_size resamples, not by num_resamples
    samples = jax.lax.map(lambda i: corr(x[..., i], y[..., i]), idx, batch_size=batch_size)
    return corr(x, y), samples


def bootstrap_correlation(
    key: Key,
    x: Any,
    y: Any,
    *,
    method: str = "spearman",
    num_resamples: int = 2000,
    confidence: float = 0.95,
) -> CorrelationEstimate:
    r"""Correlation of ``x`` and ``y`` with a paired percentile-bootstrap CI.

    The ``n`` pairs :math:`(x_j, y_j)` are resampled with replacement ``B`` times; the CI
    is the :math:`[\alpha/2, 1-\alpha/2]` percentile interval of the replicates,
    :math:`\alpha = 1 - \text{confidence}`. Leading axes of ``x`` / ``y`` broadcast and
    share the same resamples, so correlations of several series (e.g. one per merge
    operator) against one ``x`` are *paired*: differences of their replicates give valid
    CIs for differences (see :func:`mergetheory.mergeability.moderation_test`).

    Args:
      key: PRNG key of the resampling.
      x: ``[..., n]`` (e.g. base accuracy per expert).
      y: ``[..., n]`` (e.g. mergeability per expert; ``[K, n]`` for ``K`` operators).
      method: ``"spearman"`` or ``"pearson"``.
      num_resamples: ``B``.
      confidence: nominal coverage of the CI.

    Returns:
      :class:`CorrelationEstimate`; ``value`` has the broadcast leading shape.
    """
    if method not in _CORRELATIONS:
        raise ValueError(f"method must be one of {sorted(_CORRELATIONS)}, got {method!r}")
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    n = x.shape[-1]
    if y.shape[-1] != n or n < 3:
        raise ValueError(f"x and y need the same last axis n >= 3; got {x.shape} and {y.shape}")
    value, samples = _bootstrap(key, x, y, method, num_resamples, min(num_resamples, 256))
    lo, hi, se = percentile_ci(samples, confidence)
    return CorrelationEstimate(value, lo, hi, se, samples, confidence, n)


def hypothesis_verdict(ci_low: float, ci_high: float, *, predicted_sign: int) -> Verdict:
    """Verdict of a directional hypothesis from a CI of its effect.

    Returns ``"holds"`` if the CI excludes 0 on the predicted side, ``"fails"`` if it
    excludes 0 on the other side (the opposite effect), ``"inconclusive"`` otherwise
    (including NaN bounds).
    """
    lo, hi = float(ci_low), float(ci_high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return Verdict(INCONCLUSIVE)
    above, below = lo > 0, hi < 0
    predicted, opposite = (above, below) if predicted_sign > 0 else (below, above)
    return Verdict(HOLDS if predicted else (FAILS if opposite else INCONCLUSIVE))


# --------------------------------------------------------------------------------------
# grouped data: cluster bootstrap, partial rank correlation
# --------------------------------------------------------------------------------------


def partial_spearman(x: Any, y: Any, covariates: Any) -> float:
    r"""Partial Spearman :math:`\rho_{xy\cdot z}` by rank regression.

    Ranks every variable (average ranks), regresses the ranks of ``x`` and of ``y`` on an
    intercept and the ranks of the covariates by least squares, and returns the Pearson
    correlation of the two residuals: the rank association of ``x`` and ``y`` that the
    covariates do not explain (linearly in ranks). NaN when a residual is constant.

    Args:
      x: ``[n]``.
      y: ``[n]``.
      covariates: ``[k, n]`` (or ``[n]`` for one covariate).

    Returns:
      The partial correlation (a Python float).

    Example:
      >>> z = np.arange(10.0); partial_spearman(z + 0.1 * np.sin(z), z, z)  # doctest: +SKIP
    """
    from scipy import stats

    rx = stats.rankdata(np.asarray(x, np.float64))
    ry = stats.rankdata(np.asarray(y, np.float64))
    z = np.atleast_2d(np.asarray(covariates, np.float64))
    design = np.column_stack([np.ones(rx.size)] + [stats.rankdata(c) for c in z])
    coef, *_ = np.linalg.lstsq(design, np.column_stack([rx, ry]), rcond=None)
    res = np.column_stack([rx, ry]) - design @ coef
    den = np.sqrt((res[:, 0] ** 2).sum() * (res[:, 1] ** 2).sum())
    return float((res[:, 0] * res[:, 1]).sum() / den) if den > 1e-12 * rx.size**2 else float("nan")


def grouped_bootstrap(
    key: Key,
    statistic: Any,
    arrays: Any,
    groups: Any,
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
) -> CorrelationEstimate:
    r"""A statistic of paired samples with a percentile *cluster* bootstrap CI.

    The ``G`` distinct values of ``groups`` are resampled with replacement ``B`` times (the
    draws come from ``jax.random.randint(key, (B, G), 0, G)``); a replicate holds every
    point of every drawn group (a group drawn twice counts twice) and evaluates
    ``statistic`` on those points. This keeps points of one group (one source file, one
    base model, one task) together, so the interval reflects the number of groups rather
    than of points. Replicates where the statistic is not finite are NaN and ignored by
    :func:`percentile_ci`.

    Args:
      key: PRNG key of the resampling.
      statistic: ``statistic(*arrays) -> float or [k]`` on NumPy arrays (eager).
      arrays: tuple of arrays with a shared leading axis ``n`` (the points).
      groups: ``[n]`` group labels (any hashable values).
      num_resamples: ``B``.
      confidence: nominal coverage.

    Returns:
      :class:`CorrelationEstimate` (``value`` the statistic on all points,
      ``num_points = n``).

    Raises:
      ValueError: fewer than 2 groups or arrays of different lengths.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    labels = np.asarray(groups)
    n = labels.shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"grouped_bootstrap: arrays must share the leading axis n = {n}")
    uniq, inverse = np.unique(labels, return_inverse=True)
    if uniq.size < 2:
        raise ValueError("grouped_bootstrap: need at least 2 groups")
    members = [np.flatnonzero(inverse == g) for g in range(uniq.size)]
    draws = np.asarray(jr.randint(key, (num_resamples, uniq.size), 0, uniq.size))
    value = np.asarray(statistic(*arrays), np.float64)
    samples = np.full((num_resamples,) + value.shape, np.nan)
    for b in range(num_resamples):
        idx = np.concatenate([members[g] for g in draws[b]])
        with np.errstate(all="ignore"):
            samples[b] = np.asarray(statistic(*(a[idx] for a in arrays)), np.float64)
    samples = np.where(np.isfinite(samples), samples, np.nan)
    lo, hi, se = (np.asarray(v) for v in percentile_ci(jnp.asarray(samples), confidence))
    return CorrelationEstimate(value, lo, hi, se, samples, confidence, n)
