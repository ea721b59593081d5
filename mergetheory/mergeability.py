r"""Mergeability (Rahamim et al., "Will it Merge?", arXiv 2601.06672), reconstructed.

**Status.** The paper's body is not available (``reference/THEORY.md`` section 10.1): the
estimator, the binomial null, the base-knowledge measurements and the weighted merge below
are *reconstructions* from the abstract and secondary sources, and are labelled as such.

**Estimator** (reconstruction of THEORY.md 10.2). The mergeability of an update
:math:`\tau_i` is the expected score on its own task after merging it with :math:`M`
random partners from the pool of the other updates:

.. math::

   \hat S(\tau_i) = \frac1N \sum_{n=1}^{N}
       f_i\big(\theta_0 + \mathrm{Merge}(\{\tau_i\} \cup P_n)\big),
   \qquad P_n \sim \mathrm{Uniform}\binom{\{\tau_j\}_{j \ne i}}{M},

not normalised by the expert's own score (the paper pre-filters to updates that succeeded).
:func:`mergeability` computes it for every update at once: trials are a ``vmap``, updates a
``vmap`` (or a chunked ``jax.lax.map``), and the whole estimator is one jitted program.
``f_i`` may return an array (e.g. per-example 0/1 correctness), in which case
:math:`\hat S` is per example. Reusing one key across merge operators reuses the same
partner sets (common random numbers), so operators are compared on paired draws.

**Binomial null** (reconstruction of THEORY.md 10.2, "[S1: Figure 2]"). If every unit
(example) survived each merge independently with one common probability :math:`\bar p`,
the success counts :math:`c_u = N \hat S_u` would be :math:`\mathrm{Binomial}(N, \bar p)`.
:func:`binomial_null_test` compares the histogram of :math:`c_u` with that law by a
likelihood-ratio (G) and a Pearson :math:`\chi^2` statistic, and reports the dispersion
index :math:`\widehat{\mathrm{Var}}(c) / (N\bar p(1-\bar p))` (1 under the null, > 1 when
mergeability is a trait of the unit).

**Base knowledge** (hypothesis H-BK, reconstruction of THEORY.md 10.5): *updates
fine-tuned on tasks the base model knows better are more mergeable*, i.e.
:math:`\mathrm{corr}(\mathrm{acc}_{\theta_0}(t), \hat S(\tau_t)) > 0`.
:func:`bootstrap_correlation` gives Spearman / Pearson with a percentile-bootstrap CI, and
:func:`base_margin` the example-level measure :math:`\Delta_\text{base} = p_{\theta_0}(\text{top}) -
p_{\theta_0}(y)` (H-BK predicts a *negative* correlation of :math:`\Delta_\text{base}` with
:math:`\hat S` over examples the fine-tune fixed).

**Moderation** (hypothesis H-MOD, [inferred] from the ACTMat replication, THEORY.md 10.8):
*the base-knowledge correlation shrinks for operators that reduce interference (TIES)
relative to the plain mean*. :func:`moderation_test` gives every operator's correlation
and its paired-bootstrap difference from a reference operator.

**Weighted merge** (reconstruction of THEORY.md 10.6): the weights
:math:`w_i = \mathrm{softmax}_i\big((1 - \mathrm{acc}_i)/t\big)` (temperature ``t``) live
with the operator in :mod:`mergetheory.merge.linear` (``base_knowledge_weights``,
``MERGE_OPERATORS["base_knowledge_weighted"]``); this module only measures.

Reference: ``rahamim2026mergeability`` in ``paper/refs.bib``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from ._types import Key, TaskVectors
from .tree import TaskVectorError, check_same_structure, leaf_paths, validate_task_vectors

__all__ = [
    "BinomialNullTest",
    "CorrelationEstimate",
    "MergeabilityEstimate",
    "ModerationTest",
    "base_margin",
    "binomial_null_test",
    "bootstrap_correlation",
    "hypothesis_verdict",
    "mergeability",
    "moderation_test",
    "pearson_correlation",
    "rankdata",
    "sample_partners",
    "spearman_correlation",
]


# --------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------


class MergeabilityEstimate(NamedTuple):
    r"""Monte Carlo estimate of :math:`\hat S(\tau_i)` for every update ``i``.

    Attributes:
      mean: ``[T, ...]`` :math:`\hat S(\tau_i)` (mean over the ``N`` trials).
      stderr: ``[T, ...]`` standard error of the mean over trials (``std(ddof=1)/sqrt(N)``).
      scores: ``[T, N, ...]`` per-trial scores :math:`f_i(\theta_0 + \mathrm{Merge}(\cdot))`.
      partners: ``[T, N, M]`` int, the partner indices :math:`P_n` of every trial.
      num_trials: ``N``.
      num_partners: ``M``.
    """

    mean: jax.Array
    stderr: jax.Array
    scores: jax.Array
    partners: jax.Array
    num_trials: int
    num_partners: int


@functools.partial(jax.jit, static_argnames=("num_tasks", "num_partners", "shape"))
def _sample_partners(
    key: Key, index: jax.Array, num_tasks: int, num_partners: int, shape: tuple[int, ...]
) -> jax.Array:
    u = jr.uniform(key, (*shape, num_tasks - 1), jnp.float32)
    draw = jnp.argsort(u, axis=-1)[..., :num_partners]
    index = jnp.broadcast_to(jnp.asarray(index), shape).astype(draw.dtype)
    return draw + (draw >= index[..., None]).astype(draw.dtype)


def sample_partners(
    key: Key, index: Any, num_tasks: int, num_partners: int, shape: tuple[int, ...] = ()
) -> jax.Array:
    r"""Draw :math:`M` distinct partners uniformly from :math:`\{0..T-1\} \setminus \{i\}`.

    The ranks of ``T - 1`` i.i.d. uniforms are a uniform random permutation of the other
    indices; its first ``M`` entries (shifted by one at and above ``index``) are a uniform
    ``M``-subset, sampled without replacement. All draws come from one RNG call.

    Args:
      key: PRNG key.
      index: the update :math:`i` (int, possibly traced), or an int array broadcasting
        to ``shape`` (one excluded index per draw).
      num_tasks: pool size ``T`` (static).
      num_partners: ``M <= T - 1`` (static).
      shape: batch shape of independent draws (static), e.g. ``(T, N)``.

    Returns:
      ``[*shape, M]`` int array of partner indices, none equal to its ``index``.
    """
    if not 0 <= num_partners <= num_tasks - 1:
        raise ValueError(
            f"num_partners must be in [0, T - 1 = {num_tasks - 1}], got {num_partners}"
        )
    return _sample_partners(key, index, num_tasks, num_partners, tuple(shape))


def _float_dtype() -> Any:
    return jnp.result_type(float)


@functools.partial(
    jax.jit,
    static_argnames=(
        "score_fn",
        "merge_fn",
        "num_partners",
        "num_trials",
        "static_hparams",
        "batch_size",
    ),
)
def _mergeability_scores(
    key: Key,
    task_vectors: TaskVectors,
    base: Any,
    merge_hparams: Mapping[str, Any],
    task_hparams: Mapping[str, Any],
    score_args: Any,
    *,
    score_fn: Callable[..., jax.Array],
    merge_fn: Callable[..., Any],
    num_partners: int,
    num_trials: int,
    static_hparams: tuple[tuple[str, Any], ...],
    batch_size: int | None,
) -> tuple[jax.Array, jax.Array]:
    num = jtu.tree_leaves(task_vectors)[0].shape[0]
    fdtype = _float_dtype()
    # Keys split by purpose; all partner draws come from ONE RNG call outside the vmaps
    # (RNG inside a vmapped body multiplies XLA:CPU compile time).
    key_partners, key_merge = jr.split(key)
    idx_tasks = jnp.arange(num)
    partners = _sample_partners(
        key_partners, idx_tasks[:, None], num, num_partners, (num, num_trials)
    )
    merge_keys = jr.split(key_merge, (num, num_trials))

    def one_update(args: tuple[jax.Array, jax.Array, Key]) -> jax.Array:
        i, partners_i, keys_i = args

        def trial(partners_n: jax.Array, k_merge: Key) -> jax.Array:
            idx = jnp.concatenate([i[None].astype(partners_n.dtype), partners_n])
            subset = jtu.tree_map(lambda x: x[idx], task_vectors)
            sub_task = {name: v[idx] for name, v in task_hparams.items()}
            merged = merge_fn(subset, k_merge, **merge_hparams, **sub_task, **dict(static_hparams))
            params = jtu.tree_map(lambda b, m: b + m.astype(b.dtype), base, merged)
            score = score_fn(params, i) if score_args is None else score_fn(params, i, score_args)
            return jnp.asarray(score).astype(fdtype)

        return jax.vmap(trial)(partners_i, keys_i)

    args = (idx_tasks, partners, merge_keys)
    if batch_size is None:
        scores = jax.vmap(one_update)(args)
    else:
        scores = jax.lax.map(one_update, args, batch_size=batch_size)
    return scores, partners


def mergeability(
    key: Key,
    task_vectors: TaskVectors,
    base: Any,
    score_fn: Callable[..., jax.Array],
    merge_fn: Callable[..., Any],
    *,
    num_partners: int,
    num_trials: int,
    score_args: Any = None,
    merge_hparams: Mapping[str, Any] | None = None,
    task_hparams: Mapping[str, Any] | None = None,
    static_hparams: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
) -> MergeabilityEstimate:
    r"""Mergeability :math:`\hat S(\tau_i)` of every update in a pool (reconstruction).

    .. math::

       \hat S(\tau_i) = \frac1N \sum_{n=1}^{N}
           f_i\big(\theta_0 + \mathrm{Merge}(\{\tau_i\} \cup P_n)\big),
       \qquad |P_n| = M,\ P_n \subset \{\tau_j\}_{j\ne i} \text{ uniform}.

    ``key`` is split into a partner key and a merge key. The partners of all trials are
    ``sample_partners(key_partners, arange(T)[:, None], T, M, shape=(T, N))`` (entry
    ``[i, n]``), and trial ``(i, n)`` merges with key ``jr.split(key_merge, (T, N))[i, n]``, so
    the same ``key`` gives the same partner sets for every ``merge_fn`` (paired
    comparisons of operators).

    Args:
      key: PRNG key (first, as in ``jax.random``).
      task_vectors: the pool, a pytree of ``[T, ...]`` leaves.
      base: :math:`\theta_0`, the task vectors' pytree without the task axis.
      score_fn: ``score_fn(params, i) -> f_i(params)`` (or ``score_fn(params, i,
        score_args)``), a scalar or a fixed-shape array (e.g. per-example 0/1
        correctness); must be traceable (``i`` is a traced int). Static: pass the same
        function object to reuse the compiled program.
      merge_fn: a merge operator ``merge_fn(task_vectors, key, **hparams) -> merged``
        (e.g. ``MERGE_OPERATORS["ties"].fn``); the subset passed to it has
        ``M + 1`` tasks with :math:`\tau_i` first.
      num_partners: ``M`` (static), at most ``T - 1``.
      num_trials: ``N`` (static), at least 1.
      score_args: optional pytree handed to ``score_fn`` as its third argument, traced
        (e.g. the evaluation data), so new data reuse the compiled program where a
        closure over them would recompile.
      merge_hparams: traced hyperparameters of ``merge_fn`` (e.g. ``{"density": 0.2}``).
      task_hparams: per-task ``[T]`` arrays handed to ``merge_fn`` after gathering the
        subset's entries (e.g. ``{"base_accuracy": acc}``).
      static_hparams: shape-determining hyperparameters (hashable values).
      batch_size: if given, updates are processed in chunks of this size with
        ``jax.lax.map`` (memory set by the chunk); default: all at once (``vmap``).

    Returns:
      :class:`MergeabilityEstimate` with ``mean`` and ``stderr`` ``[T, ...]``.

    Raises:
      TaskVectorError: malformed task vectors or base.
      ValueError: ``M`` or ``N`` out of range.

    Example:
      >>> est = mergeability(key, tv, theta0, lambda p, i: accuracy(p, task_x[i]),
      ...                    MERGE_OPERATORS["average"].fn, num_partners=4, num_trials=16)
      >>> est.mean.shape  # [T]
    """
    num = validate_task_vectors(task_vectors)
    check_same_structure(
        base, jtu.tree_map(lambda x: x[0], task_vectors), names=("base", "task_vectors")
    )
    for path, b, t in zip(
        leaf_paths(base), jtu.tree_leaves(base), jtu.tree_leaves(task_vectors), strict=True
    ):
        if jnp.shape(b) != jnp.shape(t)[1:]:
            raise TaskVectorError(
                f"base{path} has shape {jnp.shape(b)} but the task vectors' leaf has "
                f"{jnp.shape(t)} (expected [T, *base.shape])"
            )
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    if not 0 <= num_partners <= num - 1:
        raise ValueError(f"num_partners must be in [0, T - 1 = {num - 1}], got {num_partners}")
    task_hparams = dict(task_hparams or {})
    for name, v in task_hparams.items():
        if jnp.shape(v)[:1] != (num,):
            raise ValueError(f"task_hparams[{name!r}] must have leading axis T = {num}")
    static = tuple(sorted((static_hparams or {}).items()))
    scores, partners = _mergeability_scores(
        key,
        task_vectors,
        base,
        dict(merge_hparams or {}),
        task_hparams,
        score_args,
        score_fn=score_fn,
        merge_fn=merge_fn,
        num_partners=num_partners,
        num_trials=num_trials,
        static_hparams=static,
        batch_size=batch_size,
    )
    mean = scores.mean(axis=1)
    if num_trials > 1:
        stderr = scores.std(axis=1, ddof=1) / float(np.sqrt(num_trials))  # weak-typed
    else:
        stderr = jnp.full_like(mean, jnp.nan)
    return MergeabilityEstimate(mean, stderr, scores, partners, num_trials, num_partners)


# --------------------------------------------------------------------------------------
# the binomial null
# --------------------------------------------------------------------------------------


class BinomialNullTest(NamedTuple):
    r"""Histogram of success counts against :math:`\mathrm{Binomial}(N, \bar p)`.

    Attributes:
      observed: ``[N + 1]`` number of units with ``c`` successes, ``c = 0..N``.
      expected: ``[N + 1]`` :math:`U\,\binom{N}{c}\bar p^c (1-\bar p)^{N-c}`.
      p_bar: the pooled success rate :math:`\bar p`.
      num_units: ``U``.
      num_trials: ``N``.
      g_statistic: :math:`G = 2\sum_b O_b \log(O_b/E_b)` over pooled bins.
      chi2_statistic: :math:`\sum_b (O_b - E_b)^2 / E_b` over the same bins.
      dof: ``bins - 2`` (one parameter, :math:`\bar p`, is fitted).
      p_value: :math:`P(\chi^2_\text{dof} \ge G)` (may underflow to 0).
      log10_p_value: :math:`\log_{10}` of the p-value, computed without underflow.
      dispersion: :math:`\widehat{\mathrm{Var}}(c) / (N\bar p(1-\bar p))` (1 under the null).
    """

    observed: np.ndarray
    expected: np.ndarray
    p_bar: float
    num_units: int
    num_trials: int
    g_statistic: float
    chi2_statistic: float
    dof: int
    p_value: float
    log10_p_value: float
    dispersion: float


def _pool_bins(observed: np.ndarray, expected: np.ndarray, min_expected: float):
    """Merge adjacent bins (from both tails inwards) until every expected count >= min."""
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


def _chi2_log10_sf(x: float, dof: int) -> float:
    r""":math:`\log_{10} P(\chi^2_k \ge x)`, finite far into the tail.

    SciPy's ``logsf`` is used while it is finite; beyond, the asymptotic expansion of the
    upper incomplete gamma function, :math:`\Gamma(s, z) \approx z^{s-1} e^{-z}
    (1 + (s-1)/z)` with :math:`s = k/2`, :math:`z = x/2`.
    """
    from scipy import special, stats

    val = float(stats.chi2.logsf(x, dof))
    if not np.isfinite(val):
        s_, z = dof / 2.0, x / 2.0
        val = (s_ - 1.0) * np.log(z) - z + np.log1p((s_ - 1.0) / z) - special.gammaln(s_)
    return float(val / np.log(10.0))


def binomial_null_test(
    successes: Any, num_trials: int, *, min_expected: float = 5.0
) -> BinomialNullTest:
    r"""Is mergeability a trait? Compare success counts with :math:`\mathrm{Binomial}(N, \bar p)`.

    Reconstruction of the paper's null model (THEORY.md 10.2): under the null every unit
    survives each merge independently with the same probability
    :math:`\bar p = \sum_u c_u / (U N)`, so the counts :math:`c_u` are i.i.d.
    :math:`\mathrm{Binomial}(N, \bar p)`. Bins of the histogram ``c = 0..N`` are pooled
    left to right until each expected count is at least ``min_expected``; then

    .. math::  G = 2\sum_b O_b \log\frac{O_b}{E_b} \;\sim\; \chi^2_{B - 2}
               \quad\text{(asymptotically, under the null)}.

    Caveat: units scored in the same trial (examples of one task) share that trial's
    merge, which also inflates the dispersion; a rejection says the counts are not
    exchangeable Bernoulli draws, not *which* unit-level trait causes it.

    Args:
      successes: ``[U]`` success counts in ``0..N`` (e.g. ``round(N * S_hat)``), concrete.
      num_trials: ``N``.
      min_expected: pooling threshold for the expected bin counts.

    Returns:
      :class:`BinomialNullTest` (NumPy / Python values; an eager analysis function).

    Raises:
      ValueError: counts outside ``0..N`` or fewer than 2 units.
    """
    from scipy import stats

    c = np.asarray(successes)
    if c.ndim != 1 or c.size < 2:
        raise ValueError(f"successes must be a 1-D array of >= 2 counts, got shape {c.shape}")
    if np.any(c < 0) or np.any(c > num_trials) or np.any(c != np.round(c)):
        raise ValueError(f"successes must be integers in [0, {num_trials}]")
    c = c.astype(np.int64)
    num_units = c.size
    p_bar = float(c.sum() / (num_units * num_trials))
    observed = np.bincount(c, minlength=num_trials + 1).astype(np.float64)
    expected = num_units * stats.binom.pmf(np.arange(num_trials + 1), num_trials, p_bar)
    obs, exp_ = _pool_bins(observed, expected, min_expected)
    dof = int(obs.size - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_terms = np.where(obs > 0, obs * np.log(obs / exp_), 0.0)
    g = float(2.0 * g_terms.sum())
    chi2 = float(((obs - exp_) ** 2 / exp_).sum())
    p_value = float(stats.chi2.sf(g, dof)) if dof > 0 else float("nan")
    log10_p = _chi2_log10_sf(g, dof) if dof > 0 else float("nan")
    null_var = num_trials * p_bar * (1.0 - p_bar)
    dispersion = float(c.var(ddof=1) / null_var) if null_var > 0 else float("nan")
    return BinomialNullTest(
        observed, expected, p_bar, num_units, num_trials, g, chi2, dof, p_value, log10_p, dispersion
    )


# --------------------------------------------------------------------------------------
# correlations with a bootstrap CI
# --------------------------------------------------------------------------------------


def _rank_sorted_1d(xs: jax.Array) -> jax.Array:
    """Average 1-based ranks of the entries of an ascending 1-D array (ties share)."""
    left = jnp.searchsorted(xs, xs, side="left")
    right = jnp.searchsorted(xs, xs, side="right")
    return (left + right + 1).astype(xs.dtype) / 2


def rankdata(x: jax.Array) -> jax.Array:
    """Average ranks (1-based, ties share the mean rank) along the last axis.

    ``O(n log n)``: sort, give each sorted entry the mean of the first and last position of
    its value (two ``searchsorted``), scatter back. Traceable and ``vmap``-able; matches
    ``scipy.stats.rankdata(method="average")``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(_float_dtype())
    order = jnp.argsort(x, axis=-1)
    xs = jnp.take_along_axis(x, order, axis=-1)
    flat = xs.reshape((-1, xs.shape[-1]))
    ranks_sorted = jax.vmap(_rank_sorted_1d)(flat).reshape(xs.shape)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(ranks_sorted, inverse, axis=-1)


def pearson_correlation(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Pearson correlation over the last axis (NaN when either input is constant).

    .. math::  r = \frac{\sum_j (x_j-\bar x)(y_j-\bar y)}{\|x-\bar x\|\,\|y-\bar y\|}.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    # the wider float of the two (explicit: strict dtype promotion forbids mixing them)
    floats = [d if jnp.issubdtype(d, jnp.floating) else _float_dtype() for d in (x.dtype, y.dtype)]
    dtype = max(floats, key=lambda d: jnp.dtype(d).itemsize)
    x = x.astype(dtype)
    y = y.astype(dtype)
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
def _ci(samples: jax.Array, confidence: float) -> tuple[jax.Array, jax.Array, jax.Array]:
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
    CIs for differences (see :func:`moderation_test`).

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
    lo, hi, se = _ci(samples, confidence)
    return CorrelationEstimate(value, lo, hi, se, samples, confidence, n)


class ModerationTest(NamedTuple):
    """Base-knowledge correlation per merge operator and its change against a reference.

    Attributes:
      correlation: :class:`CorrelationEstimate` ``[K]``, one per operator.
      difference: :class:`CorrelationEstimate` ``[K]`` of ``rho_k - rho_reference`` (paired
        bootstrap; zero for the reference itself).
      reference: index of the reference operator.
    """

    correlation: CorrelationEstimate
    difference: CorrelationEstimate
    reference: int


def moderation_test(
    key: Key,
    base_accuracy: Any,
    mergeability_per_operator: Any,
    *,
    reference: int = 0,
    method: str = "spearman",
    num_resamples: int = 2000,
    confidence: float = 0.95,
) -> ModerationTest:
    r"""Hypothesis H-MOD: does the base-knowledge effect shrink for stronger operators?

    For operators :math:`k = 1..K` with mergeability :math:`\hat S_k(\tau_t)`,
    :math:`\rho_k = \mathrm{corr}(\mathrm{acc}_{\theta_0}(t), \hat S_k(\tau_t))` and the
    paired-bootstrap CI of :math:`\rho_k - \rho_\text{ref}` (same resampled experts for
    all operators). H-MOD ([inferred] from THEORY.md 10.8) predicts
    :math:`\rho_\text{TIES} - \rho_\text{mean} < 0`.

    Args:
      key: PRNG key of the bootstrap.
      base_accuracy: ``[T]``.
      mergeability_per_operator: ``[K, T]``.
      reference: row of the reference operator (e.g. the plain mean).
      method: ``"spearman"`` or ``"pearson"``.
      num_resamples: bootstrap replicates.
      confidence: CI coverage.

    Returns:
      :class:`ModerationTest`.
    """
    y = jnp.asarray(mergeability_per_operator)
    if y.ndim != 2:
        raise ValueError(f"mergeability_per_operator must be [K, T], got shape {y.shape}")
    corr = bootstrap_correlation(
        key,
        base_accuracy,
        y,
        method=method,
        num_resamples=num_resamples,
        confidence=confidence,
    )
    diff_samples = corr.samples - corr.samples[:, reference : reference + 1]
    lo, hi, se = _ci(diff_samples, confidence)
    diff = CorrelationEstimate(
        corr.value - corr.value[reference], lo, hi, se, diff_samples, confidence, corr.num_points
    )
    return ModerationTest(corr, diff, reference)


def hypothesis_verdict(ci_low: float, ci_high: float, *, predicted_sign: int) -> str:
    """Verdict of a directional hypothesis from a CI of its effect.

    Returns ``"holds"`` if the CI excludes 0 on the predicted side, ``"fails"`` if it
    excludes 0 on the other side (the opposite effect), ``"inconclusive"`` otherwise
    (including NaN bounds).
    """
    lo, hi = float(ci_low), float(ci_high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    if predicted_sign > 0:
        return "holds" if lo > 0 else ("fails" if hi < 0 else "inconclusive")
    return "holds" if hi < 0 else ("fails" if lo > 0 else "inconclusive")


# --------------------------------------------------------------------------------------
# base knowledge
# --------------------------------------------------------------------------------------


def base_margin(probs: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Example-level base knowledge :math:`\Delta_\text{base} = p(\text{top}) - p(y)`.

    Reconstruction of the PopQA measure of THEORY.md 10.4 row 1: how far the base model's
    top-ranked class is above the correct one (0 when the base is right; small when it
    "almost knows").

    Args:
      probs: ``[..., C]`` class probabilities of the base model.
      labels: ``[...]`` int correct classes.

    Returns:
      ``[...]`` margins in ``[0, 1]``.
    """
    p_correct = jnp.take_along_axis(probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return probs.max(axis=-1) - p_correct
