r"""The :math:`1/k` merging scaling law (arXiv 2509.24244) on its exact quadratic model.

Hypothesis **H-scaling** (the paper's Theorem 3.1 and Corollary 3.2, *primary* text, here
checked on the model where it is exact). Let

.. math::

   L(\theta) = \tfrac12 (\theta - \theta^\star)^\top H (\theta - \theta^\star), \qquad
   \theta_k = \theta_0 + \frac{c}{k} \sum_{i \in S} v_i, \quad |S| = k,

with effective updates :math:`v_i \sim \mathcal N(\mu, \Sigma)` i.i.d. (sampling *with*
replacement, or equivalently a random :math:`k`-subset of a fresh i.i.d. pool) and equal
weights :math:`c/k`. Then, **exactly** for every :math:`k \ge 1`,

.. math::

   \mathbb E[L \mid k] = L_\infty + \frac{A}{k}, \qquad
   L_\infty = L(\theta_0 + c\mu), \qquad A = \tfrac12 c^2 \operatorname{tr}(H\Sigma),

   \operatorname{Var}[L \mid k] = \frac{c^2}{k}\, a^\top \Sigma a
       + \frac{c^4}{2k^2} \operatorname{tr}\big((H\Sigma)^2\big), \qquad
   a = H(\theta_0 + c\mu - \theta^\star) = \nabla L(\theta_0) + cH\mu,

so :math:`\operatorname{Var} = \Theta(1/k)` when :math:`a^\top\Sigma a > 0` and
:math:`\Theta(1/k^2)` when :math:`a^\top \Sigma a = 0` (Corollary 3.2). Derivation: the
merged update is :math:`\theta_0 + c\mu + \varepsilon` with
:math:`\varepsilon \sim \mathcal N(0, c^2\Sigma/k)`; expand the quadratic; odd Gaussian
moments vanish and :math:`\operatorname{Var}(\tfrac12\varepsilon^\top H \varepsilon)
= \tfrac12 \operatorname{tr}((HS)^2)` for :math:`\varepsilon \sim \mathcal N(0, S)`.

**Finite population** (sampling *without* replacement from a fixed pool
:math:`v_1, \dots, v_M`; a statement made precise here, since Sources S8 leaves
open what the factor multiplies). Conditional on the pool, with pool mean :math:`\bar v`
and *population* covariance :math:`\hat\Sigma = \frac1M \sum_i (v_i - \bar v)(v_i - \bar
v)^\top`, a uniform :math:`k`-subset mean has covariance
:math:`\frac{M-k}{M-1}\hat\Sigma / k`, hence exactly

.. math::

   \mathbb E[L \mid k, \text{pool}] = L(\theta_0 + c\bar v)
       + \frac{c^2}{2k}\,\frac{M-k}{M-1}\,\operatorname{tr}(H\hat\Sigma)
   = L(\theta_0 + c\bar v) + \frac{c^2}{2k}\,\frac{M-k}{M}\,\operatorname{tr}(H S),

with :math:`S = \frac{M}{M-1}\hat\Sigma` the *unbiased* covariance. The factor
:math:`(M-k)/(M-1)` therefore multiplies the pool's population covariance (equivalently
:math:`(M-k)/M` multiplies the unbiased one), *and* the asymptote is the pool's own
:math:`L(\theta_0 + c\bar v)`, not :math:`L_\infty`. Averaged over i.i.d. pools
(:math:`\mathbb E\,L(\theta_0 + c\bar v) = L_\infty + \tfrac{c^2}{2M}\operatorname{tr}(H\Sigma)`,
:math:`\mathbb E\,S = \Sigma`) it collapses *exactly* to :math:`L_\infty + A/k`: no finite-
population factor survives the average (a random subset of an i.i.d. pool is an i.i.d.
sample). Reading Sources S8 literally as ":math:`L_\infty + (M-k)/(M-1) \cdot A/k`"
is therefore wrong on average over pools; it is right conditionally, with the two
replacements above. Note the conditional curve is still *exactly* of the law's form
:math:`L'_\infty + A'/k` (``b = 0``), with
:math:`A' = \tfrac12 c^2 \operatorname{tr}(HS)` and
:math:`L'_\infty = L(\theta_0 + c\bar v) - \tfrac{c^2}{2(M-1)}\operatorname{tr}(H\hat\Sigma)`
(see :func:`pool_scaling_law_constants`).

Fitting (arXiv 2509.24244 section 3, [P]): weighted least squares of
:math:`L_\infty + A/(k + b)`, :math:`b \ge 0`, weights :math:`\propto k` (the across-subset
variance contracts like :math:`1/k`), and the *three-point recipe*: fit on
:math:`k \in \{1, 2, 4\}`, forecast :math:`k = 1..9`. The fits live in
:mod:`mergetheory.theory.scaling_fit` (host-side SciPy) and are re-exported here.

Everything that simulates is JAX (key first, ``vmap``/``lax.map`` over draws, ``jit`` at
the entry point). Reference: ``wang2025mergingscaling`` in
``paper/refs.bib``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Key
from ..verdict import FAILS, HOLDS, Verdict
from .scaling_fit import (
    ForecastOutput,
    ScalingLawFit,
    fit_scaling_law,
    scaling_law_curve,
    three_point_forecast,
)

__all__ = [
    "ForecastOutput",
    "MergeLossSimulation",
    "QuadraticMergeProblem",
    "ScalingLawEvidence",
    "ScalingLawFit",
    "check_scaling_law",
    "expected_merge_loss",
    "expected_merge_loss_pool",
    "finite_population_factor",
    "fit_scaling_law",
    "limit_loss",
    "merge_loss_variance",
    "pool_scaling_law_constants",
    "quadratic_loss",
    "random_quadratic_problem",
    "scaling_law_constants",
    "scaling_law_curve",
    "simulate_merge_loss",
    "three_point_forecast",
]


# --------------------------------------------------------------------------------------
# the model and its exact moments
# --------------------------------------------------------------------------------------


class QuadraticMergeProblem(NamedTuple):
    r"""A quadratic loss and a Gaussian law of effective updates (a pytree).

    Attributes:
      hessian: ``[D, D]`` symmetric PSD :math:`H`.
      theta_star: ``[D]`` minimiser :math:`\theta^\star`.
      theta_0: ``[D]`` base model :math:`\theta_0`.
      mean: ``[D]`` update mean :math:`\mu`.
      cov: ``[D, D]`` update covariance :math:`\Sigma` (PSD, may be singular).
      c: total merge weight :math:`c` (Average: 1, TA: 0.8 in the paper).
    """

    hessian: jax.Array
    theta_star: jax.Array
    theta_0: jax.Array
    mean: jax.Array
    cov: jax.Array
    c: Any = 1.0


@functools.partial(jax.jit, static_argnames=("dim", "at_optimum"))
def random_quadratic_problem(
    key: Key,
    dim: int,
    *,
    c: float = 1.0,
    hessian_decay: float = 1.0,
    noise_scale: float = 1.0,
    at_optimum: bool = False,
) -> QuadraticMergeProblem:
    r"""A random instance: power-law Hessian spectrum, random-rotation covariance.

    :math:`H = Q\,\mathrm{diag}(j^{-\text{hessian\_decay}})\,Q^\top`,
    :math:`\Sigma = \text{noise\_scale}^2 R\,\mathrm{diag}(s)\,R^\top / D` with
    :math:`s \sim \mathrm{U}(0.5, 1.5)`, :math:`\mu, \theta^\star \sim \mathcal N(0, I/D)`,
    :math:`\theta_0 = 0`. With ``at_optimum=True``, :math:`\theta^\star = \theta_0 + c\mu`,
    so :math:`a = 0` and :math:`\operatorname{Var}[L\mid k] = \Theta(1/k^2)`.

    Args:
      key: PRNG key.
      dim: ambient dimension ``D``.
      c: total merge weight.
      hessian_decay: exponent of the Hessian spectrum.
      noise_scale: scale of :math:`\Sigma^{1/2}`.
      at_optimum: put :math:`\theta^\star` at the infinite-merge point.

    Returns:
      A :class:`QuadraticMergeProblem` in the default float dtype.
    """
    k_h, k_s, k_svals, k_mu, k_star = jr.split(key, 5)
    q = jr.orthogonal(k_h, dim)
    lam = jnp.arange(1, dim + 1, dtype=q.dtype) ** (-hessian_decay)
    hessian = (q * lam[None, :]) @ q.T
    r = jr.orthogonal(k_s, dim)
    s = jr.uniform(k_svals, (dim,), q.dtype, 0.5, 1.5)
    cov = (noise_scale**2 / dim) * (r * s[None, :]) @ r.T
    mean = jr.normal(k_mu, (dim,), q.dtype) / jnp.sqrt(dim)
    theta_0 = jnp.zeros((dim,), q.dtype)
    if at_optimum:
        theta_star = theta_0 + c * mean
    else:
        theta_star = jr.normal(k_star, (dim,), q.dtype) / jnp.sqrt(dim)
    return QuadraticMergeProblem(
        0.5 * (hessian + hessian.T), theta_star, theta_0, mean, 0.5 * (cov + cov.T), c
    )


def quadratic_loss(problem: QuadraticMergeProblem, theta: jax.Array) -> jax.Array:
    r""":math:`L(\theta) = \tfrac12 (\theta - \theta^\star)^\top H (\theta - \theta^\star)`.

    Args:
      problem: the quadratic model.
      theta: ``[..., D]`` parameters (leading axes are batch axes).

    Returns:
      ``[...]`` losses.
    """
    theta = jnp.asarray(theta)
    d = theta - jnp.broadcast_to(problem.theta_star, theta.shape)
    return 0.5 * jnp.einsum("...i,ij,...j->...", d, problem.hessian, d)


def _kf(k: Any, like: jax.Array) -> jax.Array:
    return jnp.asarray(k).astype(like.dtype)


def limit_loss(problem: QuadraticMergeProblem) -> jax.Array:
    r""":math:`L_\infty = L(\theta_0 + c\mu)`, the :math:`k \to \infty` loss (exact)."""
    return quadratic_loss(problem, problem.theta_0 + problem.c * problem.mean)


def scaling_law_constants(problem: QuadraticMergeProblem) -> tuple[jax.Array, jax.Array, float]:
    r"""Exact constants of the law for i.i.d. updates.

    :math:`(L_\infty, A, b) = (L(\theta_0 + c\mu), \tfrac12 c^2\operatorname{tr}(H\Sigma), 0)`.
    """
    amp = 0.5 * problem.c**2 * jnp.sum(problem.hessian * problem.cov)
    return limit_loss(problem), amp, 0.0


def expected_merge_loss(problem: QuadraticMergeProblem, k: Any) -> jax.Array:
    r"""Exact :math:`\mathbb E[L\mid k] = L_\infty + c^2\operatorname{tr}(H\Sigma)/(2k)`.

    Valid for i.i.d. Gaussian updates (with replacement), or for subsets of a fresh i.i.d.
    pool averaged over pools.

    Args:
      problem: the quadratic model.
      k: number of merged experts (int or array of ints, ``>= 1``).

    Returns:
      The expected loss, shaped like ``k``.

    Example:
      >>> p = random_quadratic_problem(jax.random.key(0), 8)
      >>> expected_merge_loss(p, jnp.arange(1, 10))  # doctest: +SKIP
    """
    l_inf, amp, _ = scaling_law_constants(problem)
    return l_inf + amp / _kf(k, l_inf)


def merge_loss_variance(problem: QuadraticMergeProblem, k: Any) -> jax.Array:
    r"""Exact :math:`\operatorname{Var}[L\mid k]` for i.i.d. Gaussian updates.

    .. math::

       \operatorname{Var}[L\mid k] = \frac{c^2}{k} a^\top\Sigma a
         + \frac{c^4}{2k^2}\operatorname{tr}\big((H\Sigma)^2\big),
       \qquad a = H(\theta_0 + c\mu - \theta^\star).

    Args:
      problem: the quadratic model.
      k: number of merged experts.

    Returns:
      The variance, shaped like ``k``.
    """
    a = problem.hessian @ (problem.theta_0 + problem.c * problem.mean - problem.theta_star)
    hs = problem.hessian @ problem.cov
    lin = a @ problem.cov @ a
    quad = jnp.sum(hs * hs.T)
    kf = _kf(k, lin)
    return problem.c**2 * lin / kf + problem.c**4 * quad / (2.0 * kf**2)


def finite_population_factor(k: Any, pool_size: int) -> jax.Array:
    r"""The finite-population correction :math:`(M - k)/(M - 1)` (``M = pool_size``).

    It multiplies the pool's *population* covariance :math:`\hat\Sigma` (``1/M``
    normalisation) in the variance of a uniform :math:`k`-subset mean; see the module
    docstring for what it does and does not multiply.
    """
    kf = jnp.asarray(k).astype(jnp.result_type(float))
    return (pool_size - kf) / (pool_size - 1.0)


def _pool_stats(problem: QuadraticMergeProblem, pool: jax.Array):
    m = pool.shape[0]
    vbar = jnp.mean(pool, axis=0)
    dev = pool - vbar[None, :]
    tr_h_pop = jnp.sum((dev @ problem.hessian) * dev) / m
    base = quadratic_loss(problem, problem.theta_0 + problem.c * vbar)
    return m, base, tr_h_pop


def expected_merge_loss_pool(problem: QuadraticMergeProblem, pool: jax.Array, k: Any) -> jax.Array:
    r"""Exact :math:`\mathbb E[L\mid k, \text{pool}]` for uniform :math:`k`-subsets of a pool.

    .. math::

       \mathbb E[L\mid k,\text{pool}] = L(\theta_0 + c\bar v)
         + \frac{c^2}{2k}\,\frac{M-k}{M-1}\,\operatorname{tr}(H\hat\Sigma).

    Args:
      problem: the quadratic model (``mean`` and ``cov`` are not used).
      pool: ``[M, D]`` fixed experts' effective updates.
      k: subset size(s), ``1 <= k <= M``.

    Returns:
      The conditional expectation, shaped like ``k``.
    """
    m, base, tr_h_pop = _pool_stats(problem, pool)
    kf = _kf(k, base)
    return base + problem.c**2 / (2.0 * kf) * (m - kf) / (m - 1.0) * tr_h_pop


def pool_scaling_law_constants(
    problem: QuadraticMergeProblem, pool: jax.Array
) -> tuple[jax.Array, jax.Array, float]:
    r"""Constants of the fixed-pool curve written as :math:`L'_\infty + A'/k` (exact).

    :math:`A' = \tfrac{c^2}{2}\tfrac{M}{M-1}\operatorname{tr}(H\hat\Sigma)`,
    :math:`L'_\infty = L(\theta_0 + c\bar v) - \tfrac{c^2}{2(M-1)}\operatorname{tr}(H\hat\Sigma)`,
    :math:`b' = 0`.
    """
    m, base, tr_h_pop = _pool_stats(problem, pool)
    c2 = problem.c**2
    return base - c2 * tr_h_pop / (2.0 * (m - 1.0)), c2 * m * tr_h_pop / (2.0 * (m - 1.0)), 0.0


# --------------------------------------------------------------------------------------
# Monte Carlo
# --------------------------------------------------------------------------------------


_CHUNK_ELEMENTS = 1 << 22


class MergeLossSimulation(NamedTuple):
    r"""Monte Carlo moments of the merged loss, one entry per ``k``.

    Attributes:
      ks: ``[K]`` subset sizes.
      mean: ``[K]`` sample mean of :math:`L`.
      stderr: ``[K]`` its standard error.
      variance: ``[K]`` sample variance (``ddof = 1``) of :math:`L`.
      variance_stderr: ``[K]`` its standard error, :math:`\sqrt{(m_4 - s^4)/N}`.
      num_draws: ``N``.
    """

    ks: jax.Array
    mean: jax.Array
    stderr: jax.Array
    variance: jax.Array
    variance_stderr: jax.Array
    num_draws: int


def _psd_sqrt(cov: jax.Array) -> jax.Array:
    w, u = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return u * jnp.sqrt(jnp.clip(w, 0.0, None))[None, :]


def _moments(losses: jax.Array) -> tuple[jax.Array, ...]:
    n = losses.shape[0]
    mean = jnp.mean(losses, axis=0)
    dev = losses - jnp.expand_dims(mean, 0)
    m2 = jnp.mean(dev**2, axis=0)
    m4 = jnp.mean(dev**4, axis=0)
    var = m2 * n / (n - 1)
    return mean, jnp.sqrt(var / n), var, jnp.sqrt(jnp.clip(m4 - m2**2, 0.0, None) / n)


@functools.partial(jax.jit, static_argnames=("max_k", "num_draws", "batch_size"))
def _simulate(key, problem, pool, ks, *, max_k, num_draws, batch_size):
    dtype = problem.theta_0.dtype
    dim = problem.theta_0.shape[0]
    ksf = ks.astype(dtype)
    root = _psd_sqrt(problem.cov)

    def one(k_):
        if pool is None:
            z = jr.normal(k_, (max_k, dim), dtype)
            v = problem.mean[None, :] + z @ root.T
        else:
            perm = jnp.argsort(jr.uniform(k_, (pool.shape[0],), dtype))  # uniform permutation
            v = pool[perm[:max_k]]
        sums = jnp.cumsum(v, axis=0)[ks - 1]  # [K, D]: sum over the first k draws
        merged = problem.theta_0[None, :] + (problem.c / ksf)[:, None] * sums
        return quadratic_loss(problem, merged)

    keys = jr.split(key, num_draws)
    if batch_size >= num_draws:  # one chunk: a plain vmap compiles faster than lax.map
        losses = jax.vmap(one)(keys)
    else:
        losses = jax.lax.map(one, keys, batch_size=batch_size)
    return _moments(losses)


def simulate_merge_loss(
    key: Key,
    problem: QuadraticMergeProblem,
    ks: Sequence[int],
    *,
    num_draws: int,
    pool: jax.Array | None = None,
    batch_size: int | None = None,
) -> MergeLossSimulation:
    r"""Monte Carlo of the merged loss :math:`L(\theta_0 + \tfrac ck \sum_{i\in S} v_i)`.

    Each draw uses common random numbers across ``ks``: one sequence of updates (i.i.d.
    :math:`\mathcal N(\mu,\Sigma)`, or a uniform random permutation of ``pool``) whose
    first ``k`` entries form the subset for every ``k``. Marginally each ``k`` is exact.

    Args:
      key: PRNG key.
      problem: the quadratic model.
      ks: concrete subset sizes (``>= 1``; ``<= M`` with a pool).
      num_draws: Monte Carlo draws ``N``.
      pool: optional ``[M, D]`` fixed pool, sampled *without* replacement.
      batch_size: draws per ``lax.map`` chunk (sets memory); default: as many as keep a
        chunk's ``[batch, k_max, D]`` updates under about 4M numbers (all draws in one
        ``vmap`` when they fit, which also compiles fastest).

    Returns:
      A :class:`MergeLossSimulation`.

    Raises:
      ValueError: for ``k < 1`` or ``k > M``.
    """
    ks_np = np.asarray(ks, dtype=np.int64).reshape(-1)
    if ks_np.size == 0 or ks_np.min() < 1:
        raise ValueError(f"ks must be non-empty and >= 1, got {ks_np.tolist()}")
    if pool is not None and ks_np.max() > pool.shape[0]:
        raise ValueError(f"k = {int(ks_np.max())} exceeds the pool size M = {pool.shape[0]}")
    ks_arr = jnp.asarray(ks_np, dtype=jnp.int32)
    if batch_size is None:
        per_draw = int(ks_np.max()) * int(problem.theta_0.shape[0])
        batch_size = max(1, _CHUNK_ELEMENTS // max(per_draw, 1))
    mean, se, var, var_se = _simulate(
        key,
        problem,
        pool,
        ks_arr,
        max_k=int(ks_np.max()),
        num_draws=int(num_draws),
        batch_size=min(int(batch_size), int(num_draws)),
    )
    return MergeLossSimulation(ks_arr, mean, se, var, var_se, int(num_draws))


# --------------------------------------------------------------------------------------
# the hypothesis check
# --------------------------------------------------------------------------------------


class ScalingLawEvidence(NamedTuple):
    r"""Evidence for H-scaling on one quadratic problem.

    Attributes:
      simulation: the :class:`MergeLossSimulation`.
      exact_mean: ``[K]`` the exact :math:`E[L|k]` (conditional on the pool if one is used).
      mean_z: ``[K]`` ``(simulated - exact) / stderr``.
      exact_variance: ``[K]`` exact variance (i.i.d. case; ``nan`` with a pool).
      variance_z: ``[K]`` ``(simulated - exact) / stderr`` of the variance (``nan`` w/ pool).
      k_times_variance: ``[K]`` ``k * Var`` (simulated); constant in ``k`` under
        :math:`\Theta(1/k)`.
      k_variance_ratio: ``max / min`` of ``k_times_variance`` over ``ks``.
      true_constants: ``(L_inf, A, b)`` of the exact curve.
      fit: :class:`ScalingLawFit` of the simulated means (absolute stderr weights).
      fit_z: ``[3]`` ``(fitted - true) / stderr`` for ``(L_inf, A)``, and ``b`` (``nan``
        when ``b`` is at its bound).
      z_tol: tolerance used for the verdict.
      verdict: ``"holds"`` or ``"fails: ..."`` naming the worst ``k``.
    """

    simulation: MergeLossSimulation
    exact_mean: np.ndarray
    mean_z: np.ndarray
    exact_variance: np.ndarray
    variance_z: np.ndarray
    k_times_variance: np.ndarray
    k_variance_ratio: float
    true_constants: tuple[float, float, float]
    fit: ScalingLawFit
    fit_z: np.ndarray
    z_tol: float
    verdict: Verdict


def check_scaling_law(
    key: Key,
    problem: QuadraticMergeProblem,
    ks: Sequence[int],
    *,
    num_draws: int,
    pool: jax.Array | None = None,
    z_tol: float = 5.0,
) -> ScalingLawEvidence:
    r"""Check H-scaling by simulation: mean (and, i.i.d., variance) against the exact law.

    Verdict ``"holds"`` when every :math:`|z| \le` ``z_tol`` for the mean (and the
    variance in the i.i.d. case) and the fitted :math:`(L_\infty, A)` agree with the exact
    constants within ``z_tol`` standard errors; otherwise ``"fails: ..."`` with the
    offending ``k`` (the counterexample).

    Args:
      key: PRNG key.
      problem: the quadratic model.
      ks: subset sizes.
      num_draws: Monte Carlo draws.
      pool: optional ``[M, D]`` pool sampled without replacement.
      z_tol: tolerance in standard errors.

    Returns:
      A :class:`ScalingLawEvidence`.
    """
    sim = simulate_merge_loss(key, problem, ks, num_draws=num_draws, pool=pool)
    k = np.asarray(sim.ks)
    mean, se = np.asarray(sim.mean), np.asarray(sim.stderr)
    var, var_se = np.asarray(sim.variance), np.asarray(sim.variance_stderr)
    if pool is None:
        exact = np.asarray(expected_merge_loss(problem, sim.ks))
        exact_var = np.asarray(merge_loss_variance(problem, sim.ks))
        var_z = (var - exact_var) / var_se
        consts = scaling_law_constants(problem)
    else:
        exact = np.asarray(expected_merge_loss_pool(problem, pool, sim.ks))
        exact_var = np.full_like(mean, np.nan)
        var_z = np.full_like(mean, np.nan)
        consts = pool_scaling_law_constants(problem, pool)
        # k = M is deterministic: zero variance, zero stderr; use an absolute tolerance.
    tiny = 1e-12 * max(1.0, float(np.max(np.abs(exact))))
    mean_z = (mean - exact) / np.maximum(se, tiny)
    true = (float(consts[0]), float(consts[1]), float(consts[2]))
    ok_fit = se > tiny
    fit = fit_scaling_law(k[ok_fit], mean[ok_fit], stderr=se[ok_fit])
    fit_z = np.array(
        [
            (fit.l_inf - true[0]) / fit.l_inf_stderr,
            (fit.a - true[1]) / fit.a_stderr,
            np.nan if fit.b_at_bound else (fit.b - true[2]) / fit.b_stderr,
        ]
    )
    kv = k * var
    pos = kv > 0
    ratio = float(kv[pos].max() / kv[pos].min()) if pos.sum() else float("nan")
    problems = []
    worst = int(np.argmax(np.abs(mean_z)))
    if abs(mean_z[worst]) > z_tol:
        problems.append(f"E[L|k] off by {mean_z[worst]:.1f} stderr at k = {k[worst]}")
    if pool is None:
        wv = int(np.nanargmax(np.abs(var_z)))
        if abs(var_z[wv]) > z_tol:
            problems.append(f"Var[L|k] off by {var_z[wv]:.1f} stderr at k = {k[wv]}")
    if np.nanmax(np.abs(fit_z[:2])) > z_tol:
        problems.append(f"fitted (L_inf, A) off by z = {fit_z[:2].round(1).tolist()}")
    verdict = Verdict(FAILS, "; ".join(problems)) if problems else Verdict(HOLDS)
    return ScalingLawEvidence(
        sim, exact, mean_z, exact_var, var_z, kv, ratio, true, fit, fit_z, z_tol, verdict
    )
