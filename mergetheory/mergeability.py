r"""Mergeability (Rahamim et al., "Will it Merge?", arXiv 2601.06672), reconstructed.

**Status.** The paper's body is not available (Sources S7): the
estimator, the binomial null, the base-knowledge measurements and the weighted merge below
are *reconstructions* from the abstract and secondary sources, and are labelled as such.

**Estimator** (reconstruction of Sources S7). The mergeability of an update
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

**Binomial null** (reconstruction of Sources S7, "[S1: Figure 2]"). If every unit
(example) survived each merge independently with one common probability :math:`\bar p`,
the success counts :math:`c_u = N \hat S_u` would be :math:`\mathrm{Binomial}(N, \bar p)`.
:func:`binomial_null_test` compares the histogram of :math:`c_u` with that law by a
likelihood-ratio (G) and a Pearson :math:`\chi^2` statistic
(:func:`mergetheory.stats.g_test`), and reports the dispersion index
:math:`\widehat{\mathrm{Var}}(c) / (N\bar p(1-\bar p))` (1 under the null, > 1 when
mergeability is a trait of the unit).

**Base knowledge** (hypothesis H-BK, reconstruction of Sources S7): *updates
fine-tuned on tasks the base model knows better are more mergeable*, i.e.
:math:`\mathrm{corr}(\mathrm{acc}_{\theta_0}(t), \hat S(\tau_t)) > 0`.
:func:`mergetheory.stats.bootstrap_correlation` gives Spearman / Pearson with a
percentile-bootstrap CI, and :func:`base_margin` the example-level measure
:math:`\Delta_\text{base} = p_{\theta_0}(\text{top}) - p_{\theta_0}(y)`
(H-BK predicts a *negative* correlation of :math:`\Delta_\text{base}` with :math:`\hat S`
over examples the fine-tune fixed).

**Moderation** (hypothesis H-MOD, [inferred] from the ACTMat replication, Sources S7):
*the base-knowledge correlation shrinks for operators that reduce interference (TIES)
relative to the plain mean*. :func:`moderation_test` gives every operator's correlation
and its paired-bootstrap difference from a reference operator.

**Weighted merge** (reconstruction of Sources S7): the weights
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
from .stats import (
    CorrelationEstimate,
    bootstrap_correlation,
    default_float_dtype,
    g_test,
    percentile_ci,
    pool_bins,
)
from .tree import TaskVectorError, check_same_structure, leaf_paths, validate_task_vectors

__all__ = [
    "BinomialNullTest",
    "MergeabilityEstimate",
    "ModerationTest",
    "base_margin",
    "binomial_null_test",
    "mergeability",
    "moderation_test",
    "sample_partners",
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
    fdtype = default_float_dtype()
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


def binomial_null_test(
    successes: Any, num_trials: int, *, min_expected: float = 5.0
) -> BinomialNullTest:
    r"""Is mergeability a trait? Compare success counts with :math:`\mathrm{Binomial}(N, \bar p)`.

    Reconstruction of the paper's null model (Sources S7): under the null every unit
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
    obs, exp_ = pool_bins(observed, expected, min_expected)
    g, chi2, dof, p_value, log10_p = g_test(obs, exp_, ddof=1)  # p_bar is fitted
    null_var = num_trials * p_bar * (1.0 - p_bar)
    dispersion = float(c.var(ddof=1) / null_var) if null_var > 0 else float("nan")
    return BinomialNullTest(
        observed, expected, p_bar, num_units, num_trials, g, chi2, dof, p_value, log10_p, dispersion
    )


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
    all operators). H-MOD ([inferred] from Sources S7) predicts
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
    lo, hi, se = percentile_ci(diff_samples, confidence)
    diff = CorrelationEstimate(
        corr.value - corr.value[reference], lo, hi, se, diff_samples, confidence, corr.num_points
    )
    return ModerationTest(corr, diff, reference)


# --------------------------------------------------------------------------------------
# base knowledge
# --------------------------------------------------------------------------------------


def base_margin(probs: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Example-level base knowledge :math:`\Delta_\text{base} = p(\text{top}) - p(y)`.

    Reconstruction of the PopQA measure of Sources S7 row 1: how far the base model's
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
