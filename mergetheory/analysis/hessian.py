r"""Hessian spectrum by stochastic Lanczos quadrature, the sublevel set's dimension, kinematic n*.

**Hessian-vector products** :math:`v \mapsto Hv` are ``jax.jvp`` of ``jax.grad`` (forward
over reverse) on the flattened parameters; the Hessian is never formed.

**Stochastic Lanczos quadrature** (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao
2019). For a probe :math:`v` uniform on the unit sphere, :math:`m` Lanczos steps with full
reorthogonalisation give a tridiagonal :math:`T_m = U \operatorname{diag}(\theta) U^\top`,
and :math:`v^\top f(H) v \approx \sum_j U_{0j}^2 f(\theta_j)` (Gauss quadrature, exact for
polynomials of degree :math:`< 2m`). Hence

.. math::

   \operatorname{tr} f(H) \approx \frac{D}{P} \sum_{p=1}^{P} \sum_{j} w_{pj}\, f(\theta_{pj}),
   \qquad w_{pj} = U^{(p)\,2}_{0j},

an unbiased estimate up to the quadrature error, with a standard error across the
:math:`P` probes. The nodes and weights are the *spectral density* estimate
:math:`\rho(\lambda) \approx \frac1P\sum_{p,j} w_{pj}\,\delta(\lambda - \theta_{pj})`.

**Statistical dimension of the quadratic loss sublevel set** (*reconstruction*, Sources S3
sections 2.5 and 3, candidate 4). Near :math:`\theta_0` the sublevel set
:math:`\{\Delta : \tfrac12 \Delta^\top H \Delta \le \varepsilon\}` is an ellipsoid with
semi-axes :math:`r_j = \sqrt{2\varepsilon/|\lambda_j|}`. Following the pruning precedent's
``cal_gw`` (Zhang et al. 2024), at the scale :math:`R` of a merged update the fraction of
directions along which a step of length :math:`R` stays inside the set is
:math:`\mathbb E_\rho[r^2/(R^2 + r^2)]`, and the effective dimension of the
loss-preserving set is

.. math::

   m_{\mathrm{eff}}(\varepsilon, R)
   = \sum_j \frac{2\varepsilon}{2\varepsilon + R^2|\lambda_j|}
   = \operatorname{tr} f(H),\quad
   f(\lambda) = \frac{2\varepsilon}{2\varepsilon + R^2|\lambda|},

which is :math:`\dim L` when :math:`H` is zero on a subspace :math:`L` and very large
elsewhere (so it reduces to the statistical dimension of a subspace, ALMT 2014). The
*kinematic* :math:`n^\star` is then definition (ii) of
:func:`mergetheory.theory.threshold.threshold_kinematic` with :math:`m = m_{\mathrm{eff}}`,
:math:`D` the number of parameters and :math:`\delta(C_n)` the statistical dimension of the
cone of the first :math:`n` task vectors. Which :math:`\varepsilon`, :math:`R` and set the
paper uses is unknown; this is our reconstruction.

References: ``wang2025moreexperts``, ``amelunxen2014edge`` in ``paper/refs.bib``; Ubaru,
Chen & Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature", SIAM J.
Matrix Anal. Appl. 2017; Zhang et al., "How sparse can we prune a deep network", 2024.

Example:
  >>> spec = hessian_spectrum(jax.random.key(0), loss_fn, params, num_probes=4, num_steps=30)
  >>> m = sublevel_statistical_dimension(spec, eps=0.01, radius=1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree

from .._types import Key

__all__ = [
    "SpectrumEstimate",
    "TraceEstimate",
    "hessian_spectrum",
    "hvp_matvec",
    "lanczos",
    "slq",
    "spectral_density",
    "sublevel_statistical_dimension",
    "trace_estimate",
]


class SpectrumEstimate(NamedTuple):
    r"""SLQ nodes and weights of a symmetric operator's spectrum (host arrays).

    Attributes:
      nodes: ``[P, m]`` Ritz values :math:`\theta_{pj}` per probe.
      weights: ``[P, m]`` quadrature weights :math:`w_{pj}` (each row sums to 1).
      dim: :math:`D`, the operator's size.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int


class TraceEstimate(NamedTuple):
    """An estimate of :math:`\\operatorname{tr} f(H)` with its standard error over probes."""

    mean: float
    stderr: float
    num_probes: int


def hvp_matvec(loss_fn: Callable[[Any], jax.Array], params: Any) -> tuple[Callable, int]:
    r"""Hessian-vector product of ``loss_fn`` at ``params`` on flat vectors.

    Returns:
      ``(matvec, D)`` with ``matvec(v) = H v`` for ``v`` of shape ``[D]`` (forward-over-
      reverse: ``jax.jvp(jax.grad(f), (x,), (v,))``), ``D`` the number of parameters.
    """
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(lambda x: loss_fn(unravel(x)))

    def matvec(v: jax.Array) -> jax.Array:
        return jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]

    return matvec, int(flat.size)


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_steps: int):
    r"""``num_steps`` Lanczos steps from ``v0`` with full reorthogonalisation.

    Args:
      matvec: symmetric linear map on ``[D]`` vectors (traceable).
      v0: ``[D]`` start vector (normalised here).
      num_steps: :math:`m \le D`.

    Returns:
      ``(alpha [m], beta [m-1])``: the diagonal and off-diagonal of :math:`T_m`. After an
      invariant subspace is found (:math:`\beta \approx 0`) the remaining steps restart
      from a vector orthogonal to the basis, so :math:`T_m` stays well defined.
    """
    dim = v0.shape[0]
    if not 1 <= num_steps <= dim:
        raise ValueError(f"num_steps must be in [1, D = {dim}], got {num_steps}")
    dtype = v0.dtype
    basis = jnp.zeros((num_steps, dim), dtype)
    v = v0 / jnp.linalg.norm(v0)
    tiny = jnp.finfo(dtype).eps * 100

    def step(carry, i):
        basis, v, beta_prev, v_prev = carry
        basis = basis.at[i].set(v)
        w = matvec(v) - beta_prev * v_prev
        alpha = jnp.vdot(w, v)
        w = w - alpha * v
        for _ in range(2):  # full reorthogonalisation (twice is enough)
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        # breakdown: continue from a fresh direction orthogonal to the basis
        fresh = jnp.roll(v, 1) + jnp.arange(dim, dtype=dtype) / dim
        fresh = fresh - basis.T @ (basis @ fresh)
        fresh = fresh - basis.T @ (basis @ fresh)
        ok = beta > tiny * (1.0 + jnp.abs(alpha))
        nxt = jnp.where(ok, w / jnp.where(ok, beta, 1.0), fresh / jnp.linalg.norm(fresh))
        beta_out = jnp.where(ok, beta, 0.0)
        return (basis, nxt, beta_out, v), (alpha, beta_out)

    init = (basis, v, jnp.zeros((), dtype), jnp.zeros_like(v))
    _, (alphas, betas) = jax.lax.scan(step, init, jnp.arange(num_steps))
    return alphas, betas[:-1]


def slq(
    key: Key,
    matvec: Callable[[jax.Array], jax.Array],
    dim: int,
    *,
    num_probes: int,
    num_steps: int,
    dtype: Any = jnp.float32,
) -> SpectrumEstimate:
    r"""Stochastic Lanczos quadrature of a symmetric operator.

    Args:
      key: PRNG key; probe :math:`p` is a normalised Gaussian from ``fold_in(key, p)``.
      matvec: ``[D] -> [D]`` symmetric map.
      dim: :math:`D`.
      num_probes: :math:`P \ge 1`.
      num_steps: Lanczos steps per probe (``min(num_steps, D)`` are run).
      dtype: dtype of the Lanczos vectors.

    Returns:
      :class:`SpectrumEstimate`.
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    steps = min(int(num_steps), int(dim))
    run = jax.jit(lambda v0: lanczos(matvec, v0, steps))
    nodes, weights = [], []
    for p in range(num_probes):
        v0 = jr.normal(jr.fold_in(key, p), (dim,), dtype)
        a, b = (np.asarray(x, np.float64) for x in run(v0))
        tri = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
        theta, u = np.linalg.eigh(tri)
        nodes.append(theta)
        weights.append(u[0] ** 2)
    return SpectrumEstimate(np.stack(nodes), np.stack(weights), int(dim))


def hessian_spectrum(
    key: Key,
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    *,
    num_probes: int = 4,
    num_steps: int = 40,
) -> SpectrumEstimate:
    """SLQ of the Hessian of ``loss_fn`` at ``params`` (:func:`hvp_matvec` + :func:`slq`)."""
    matvec, dim = hvp_matvec(loss_fn, params)
    dtype = ravel_pytree(params)[0].dtype
    return slq(key, matvec, dim, num_probes=num_probes, num_steps=num_steps, dtype=dtype)


def trace_estimate(spectrum: SpectrumEstimate, fn: Callable[[np.ndarray], Any]) -> TraceEstimate:
    r""":math:`\operatorname{tr} f(H) \approx D \cdot \mathrm{mean}_p \sum_j w_{pj} f(\theta_{pj})`.

    The standard error is the probes' sample standard deviation over :math:`\sqrt P`
    (``nan`` for one probe).
    """
    vals = spectrum.dim * np.sum(spectrum.weights * np.asarray(fn(spectrum.nodes)), axis=1)
    p = vals.size
    se = float(np.std(vals, ddof=1) / math.sqrt(p)) if p > 1 else float("nan")
    return TraceEstimate(float(np.mean(vals)), se, p)


def spectral_density(
    spectrum: SpectrumEstimate, grid: Any, *, sigma: float | None = None
) -> np.ndarray:
    r"""Gaussian-smoothed spectral density :math:`\rho(\lambda)` on ``grid`` (integrates to 1).

    ``sigma`` defaults to 1% of the node range.
    """
    g = np.asarray(grid, np.float64)
    t = spectrum.nodes.reshape(-1)
    w = spectrum.weights.reshape(-1) / spectrum.nodes.shape[0]
    if sigma is None:
        sigma = max(1e-12, 0.01 * float(t.max() - t.min()))
    k = np.exp(-0.5 * ((g[:, None] - t[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return k @ w


def sublevel_statistical_dimension(
    spectrum: SpectrumEstimate, *, eps: float, radius: float
) -> TraceEstimate:
    r"""Effective dimension :math:`\operatorname{tr}\,2\varepsilon/(2\varepsilon + R^2|H|)`.

    *Reconstruction* (see the module docstring): the soft count of directions in which a
    step of length ``radius`` stays inside the quadratic sublevel set of tolerance ``eps``.

    Args:
      spectrum: :class:`SpectrumEstimate` of the Hessian.
      eps: loss tolerance :math:`\varepsilon > 0`.
      radius: step length :math:`R > 0` (e.g. the typical task-vector norm).

    Returns:
      :class:`TraceEstimate`, between 0 and :math:`D`.
    """
    if not (eps > 0 and radius > 0):
        raise ValueError(f"eps and radius must be > 0, got eps={eps}, radius={radius}")
    two_eps = 2.0 * float(eps)
    r2 = float(radius) ** 2
    return trace_estimate(spectrum, lambda lam: two_eps / (two_eps + r2 * np.abs(lam)))
