r"""Linear algebra of Gram matrices: validation, PSD Cholesky, NNLS, cone projection.

Every generated set of :mod:`mergetheory.geometry` is known through its Gram matrix
:math:`G = TT^\top` of ``n`` generators (rows of :math:`T`). This module holds the
small dense kernels on :math:`G` that the sets and the width estimators share:

* :func:`validate_gram`: shape, dtype, finiteness, symmetry and PSD checks;
* :func:`psd_cholesky`: a lower-triangular factor :math:`L L^\top = G` of a positive
  *semi*-definite :math:`G` whose leading blocks factor the leading sub-Gram matrices
  (what makes nested sets share their random numbers), and :func:`span_pivot_mask`;
* :func:`nnls_gram`: Lawson–Hanson non-negative least squares in Gram form, and
  :func:`cone_projection_sq_norm`, the squared norm of the projection onto
  :math:`\mathrm{cone}\{t_i\}` from :math:`z = Tg` alone;
* :func:`gram_schmidt_rows`: an orthonormal basis of the prefix spans of explicit
  vectors (the naive span estimator);
* :func:`default_rank_rtol`: the ONE relative rank tolerance every rank decision uses.

References (``paper/refs.bib``): Lawson & Hanson 1974; Bro & De Jong 1997 (Gram-form
active set, as in ``scipy.optimize.nnls``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._types import Gram
from .tree import accumulation_dtype

__all__ = [
    "cone_projection_sq_norm",
    "default_rank_rtol",
    "gram_schmidt_rows",
    "is_concrete",
    "nnls_gram",
    "psd_cholesky",
    "span_pivot_mask",
    "validate_gram",
]


# --------------------------------------------------------------------------------------
# Gram validation and factorisation
# --------------------------------------------------------------------------------------


def is_concrete(x: Any) -> bool:
    """Whether ``x`` is a concrete value (not a tracer): host-side checks apply."""
    return not isinstance(x, jax.core.Tracer)


def default_rank_rtol(dtype: Any) -> float:
    r"""Default relative rank tolerance, :math:`10^4\,\varepsilon` of ``dtype``.

    A generator :math:`t_j` counts as linearly dependent on :math:`t_1..t_{j-1}` (spans)
    or on the passive set (cone projection) when its squared residual after projection
    satisfies :math:`\|t_j^\perp\|^2 \le \mathrm{rtol}\,\|t_j\|^2`: 2.2e-12 in float64
    (angles below ~1.5e-6 rad), 1.2e-3 in float32 (below ~2 degrees). The Gram matrix
    carries relative errors of a few :math:`\varepsilon\log D` (float32: ~1e-6 for
    LLM-sized ``D``); the tolerance stays well above that, since in Gram form the
    residual is a difference of squares.
    """
    return float(1e4 * np.finfo(np.dtype(dtype)).eps)


def validate_gram(gram: Any, *, name: str = "gram") -> jax.Array:
    """Check a Gram matrix and return it symmetrised, as a JAX array.

    Checks (on concrete arrays; tracers pass through): 2-D square, floating, finite,
    symmetric up to round-off and positive semi-definite up to round-off.

    Raises:
      ValueError: naming what is wrong.
    """
    g = jnp.asarray(gram)
    if jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(accumulation_dtype(g.dtype))  # float16 / bfloat16 -> float32
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"{name}: expected a square [n, n] Gram matrix, got shape {g.shape}")
    if g.shape[0] == 0:
        raise ValueError(f"{name}: the Gram matrix is empty (n = 0)")
    if not jnp.issubdtype(g.dtype, jnp.floating):
        raise ValueError(f"{name}: dtype {g.dtype} is not floating")
    if is_concrete(g):
        a = np.asarray(g, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite entries")
        scale = max(float(np.max(np.abs(a))), np.finfo(np.float64).tiny)
        eps = float(np.finfo(np.dtype(g.dtype)).eps)
        tol = 1e3 * a.shape[0] * eps * scale
        asym = float(np.max(np.abs(a - a.T)))
        if asym > tol:
            raise ValueError(f"{name}: not symmetric (max |G - G^T| = {asym:.3g})")
        min_eig = float(np.linalg.eigvalsh(0.5 * (a + a.T))[0])
        if min_eig < -tol:
            raise ValueError(
                f"{name}: not positive semi-definite (smallest eigenvalue {min_eig:.3g})"
            )
        if asym == 0.0:
            return g
        return jnp.asarray((0.5 * (a + a.T)).astype(g.dtype))  # host-side: no compile
    return 0.5 * (g + g.T)


def psd_cholesky(gram: Gram, *, rtol: float | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Lower-triangular factor of a positive semi-definite Gram matrix.

    Returns :math:`L` with :math:`L L^\top = G` and the pivots
    :math:`d_j = \|t_j^\perp\|^2`, the squared residual of generator :math:`j` after
    projection onto :math:`\mathrm{span}(t_1..t_{j-1})` (Gram–Schmidt in Gram form). A
    pivot with :math:`d_j \le 10\, n\, \varepsilon\, G_{jj}` (round-off) zeroes column
    :math:`j`, so rank-deficient :math:`G` (repeated or dependent task vectors) is fine.

    Because :math:`L` is lower triangular, :math:`L_{1:m,1:m}` factors :math:`G_{1:m,1:m}`
    for every :math:`m`: with :math:`z = L h`, :math:`h \sim \mathcal{N}(0, I_n)`, the
    prefix :math:`z_{1:m}` depends on :math:`h_{1:m}` only. Nested sets therefore share
    their random numbers exactly.

    Args:
      gram: ``[n, n]`` symmetric PSD matrix.
      rtol: relative pivot tolerance; default ``10 * n * eps``.

    Returns:
      ``(L, pivots)``: ``[n, n]`` lower-triangular factor and ``[n]`` pivots (before
      zeroing, clipped at 0).

    Example:
      >>> L, d = psd_cholesky(jnp.ones((2, 2)))   # two equal unit vectors: rank 1
      >>> L                                       # [[1, 0], [1, 0]]
    """
    gram = jnp.asarray(gram)
    n = gram.shape[0]
    dtype = gram.dtype
    if rtol is None:
        rtol = 10.0 * n * float(np.finfo(np.dtype(dtype)).eps)
    diag = jnp.diagonal(gram)
    rows = jnp.arange(n)

    def body(j, carry):
        lower, piv = carry
        v = gram[:, j] - lower @ lower[j, :]  # columns >= j of `lower` are still zero
        d = v[j]
        ok = (d > rtol * diag[j]) & (d > 0)
        root = jnp.sqrt(jnp.where(ok, d, 1.0))
        col = jnp.where(ok & (rows >= j), v / root, 0.0).astype(dtype)
        col = col.at[j].set(jnp.where(ok, root, 0.0).astype(dtype))
        return lower.at[:, j].set(col), piv.at[j].set(jnp.maximum(d, 0.0))

    init = (jnp.zeros_like(gram), jnp.zeros((n,), dtype))
    return jax.lax.fori_loop(0, n, body, init)


def span_pivot_mask(gram: Gram, pivots: jax.Array, rank_rtol: float) -> jax.Array:
    r"""Which generators add a new direction: :math:`d_j > \mathrm{rtol}\, G_{jj} > 0`."""
    diag = jnp.diagonal(gram)
    return (pivots > rank_rtol * diag) & (diag > 0)


# --------------------------------------------------------------------------------------
# projection onto a polyhedral cone: NNLS in Gram form
# --------------------------------------------------------------------------------------


def nnls_gram(
    gram: Gram,
    z: jax.Array,
    *,
    max_iter: int | None = None,
    rtol: float | None = None,
    return_converged: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Non-negative least squares in Gram form (Lawson–Hanson active set).

    Solves

    .. math:: \lambda^\star = \arg\min_{\lambda \ge 0}\ \lambda^\top G \lambda - 2\lambda^\top z,

    i.e. :math:`\min_{\lambda\ge0}\|g - T^\top\lambda\|^2` with :math:`G = TT^\top`,
    :math:`z = Tg`, so that :math:`\Pi_C(g) = T^\top\lambda^\star` is the projection onto
    :math:`C = \mathrm{cone}\{t_i\}`. This is Lawson–Hanson in the Gram form of Bro & De
    Jong (the algorithm of ``scipy.optimize.nnls``, same default of ``3 n`` additions):
    add the coordinate with the largest positive dual residual :math:`w = z - G\lambda`,
    solve the least-squares problem on the passive set, and if that solution is
    infeasible step back towards it until a coordinate hits zero and drop it.

    Implementation: the inner and outer loops are merged into one ``lax.while_loop`` of at
    most ``2 max_iter`` steps with fixed shapes (jittable, vmappable; under ``vmap`` a
    batch runs until its slowest member is done). Each step re-factors the passive block
    (Cholesky of :math:`G_{PP}` padded with the identity, :math:`O(n^3)`) and solves with
    one step of iterative refinement (docs/width_engine.md says why not rank-one updates).

    Degeneracy: a coordinate whose residual against the passive set is unresolvable,
    :math:`\|t_j^\perp\|^2 = G_{jj} - G_{jP}G_{PP}^{-1}G_{Pj} \le \mathrm{rtol}\,G_{jj}`
    (default :func:`default_rank_rtol`), is not added (it is blocked until the passive set
    next shrinks); zero generators never enter. Rank-deficient :math:`G` is fine.

    Args:
      gram: ``[n, n]`` PSD Gram matrix (may be singular).
      z: ``[n]`` inner products :math:`T g`.
      max_iter: number of additions allowed; default ``3 n``.
      rtol: relative residual below which a generator counts as dependent.
      return_converged: also return whether the active set converged within
        ``max_iter`` (otherwise :math:`\lambda` is feasible but not optimal).

    Returns:
      ``[n]`` non-negative coefficients :math:`\lambda^\star`, and with
      ``return_converged`` a boolean scalar.

    Example:
      >>> lam = nnls_gram(jnp.eye(3), jnp.array([1.0, -2.0, 0.5]))   # [1, 0, 0.5]
    """
    lam, converged = _nnls_gram(gram, z, max_iter=max_iter, rtol=rtol)
    return (lam, converged) if return_converged else lam


def _nnls_gram(
    gram: Gram, z: jax.Array, *, max_iter: int | None, rtol: float | None
) -> tuple[jax.Array, jax.Array]:
    """:func:`nnls_gram` returning ``(lam, converged)``."""
    gram, z = jnp.asarray(gram), jnp.asarray(z)
    n = z.shape[-1]
    dtype = z.dtype
    if max_iter is None:
        max_iter = 3 * n
    max_steps = 2 * max_iter  # each removal (backtrack) undoes at most one addition
    eps = float(np.finfo(np.dtype(dtype)).eps)
    diag = jnp.diagonal(gram)
    has = diag > 0
    safe_sqrt_diag = jnp.sqrt(jnp.where(has, diag, 1.0))
    zscale = jnp.max(jnp.where(has, jnp.abs(z) / safe_sqrt_diag, 0.0))
    add_tol = 10.0 * n * eps * safe_sqrt_diag * zscale  # [n]: w_j above round-off
    schur_rtol = default_rank_rtol(dtype) if rtol is None else float(rtol)
    idx = jnp.arange(n, dtype=jnp.int32)
    eye = jnp.eye(n, dtype=dtype)

    def factor_and_solve(mask):
        # Cholesky of the passive block, padded with the identity, and the passive
        # least-squares solution G_PP s_P = z_P (one refinement step)
        m = mask.astype(dtype)
        a = gram * m[:, None] * m[None, :] + eye * (1.0 - m)[None, :]
        chol = jnp.linalg.cholesky(a)
        zp = z * m
        sol = jax.scipy.linalg.cho_solve((chol, True), zp)
        sol = sol + jax.scipy.linalg.cho_solve((chol, True), zp - (gram @ (sol * m)) * m)
        sol = sol * m
        return chol, sol, jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(sol))

    def cond(state):
        return (~state[5]) & (state[6] < max_steps)

    def body(state):
        lam, passive, blocked, chol, sol, _, it, last = state
        bad = passive & (sol <= 0)
        infeasible = jnp.any(bad)

        # (a) backtrack: step from lam towards sol until the first coordinate hits 0
        den = lam - sol
        ratio = jnp.where(bad & (den > 0), lam / jnp.where(den > 0, den, 1.0), 0.0)
        ratio = jnp.where(bad, ratio, jnp.inf)
        k = jnp.argmin(ratio).astype(jnp.int32)
        alpha = jnp.clip(ratio[k], 0.0, 1.0)
        lam_b = jnp.where(idx == k, 0.0, lam + alpha * (sol - lam))
        passive_b = passive & (idx != k)
        lam_b = jnp.where(passive_b, jnp.maximum(lam_b, 0.0), 0.0)
        # anti-cycling (Lawson-Hanson): a coordinate dropped right after entering, with no
        # progress, is blocked; any other removal unblocks everything
        futile = (k == last) & (alpha <= 0)
        blocked_b = jnp.where(futile, blocked | (idx == k), jnp.zeros_like(blocked))

        # (b) accept sol, then add the coordinate with the largest dual residual, if its
        # residual against the passive set, G_jj - |L^{-1} G_Pj|^2, is resolvable
        lam_a = jnp.where(passive, sol, 0.0)
        w = z - gram @ lam_a
        cand = jnp.where(passive | blocked | ~has | (w <= add_tol), -jnp.inf, w)
        j = jnp.argmax(cand).astype(jnp.int32)
        stop = ~jnp.isfinite(cand[j])
        gcol = gram[:, j] * passive.astype(dtype)
        ell = jax.scipy.linalg.solve_triangular(chol, gcol, lower=True)
        schur = diag[j] - jnp.dot(ell, ell)
        resolvable = schur > schur_rtol * diag[j]
        add = (~stop) & resolvable
        passive_a = passive | ((idx == j) & add)
        blocked_a = blocked | ((idx == j) & ~stop & ~resolvable)

        new_lam = jnp.where(infeasible, lam_b, lam_a).astype(dtype)
        new_passive = jnp.where(infeasible, passive_b, passive_a)
        new_blocked = jnp.where(infeasible, blocked_b, blocked_a)
        new_chol, new_sol, ok = factor_and_solve(new_passive)
        # numerically singular after all: undo the addition and block j
        failed = ~ok & ~infeasible & add
        new_passive = jnp.where(failed, passive, new_passive)
        new_blocked = jnp.where(failed, new_blocked | (idx == j), new_blocked)
        new_chol = jnp.where(failed, chol, new_chol).astype(dtype)
        new_sol = jnp.where(failed, lam_a, new_sol).astype(dtype)
        new_last = jnp.where(infeasible, jnp.int32(-1), jnp.where(add & ~failed, j, last))
        done = (~infeasible) & stop
        return (
            new_lam,
            new_passive,
            new_blocked,
            new_chol,
            new_sol,
            done,
            it + 1,
            new_last.astype(jnp.int32),
        )

    init = (
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), bool),
        jnp.zeros((n,), bool),
        eye,
        jnp.zeros((n,), dtype),
        jnp.zeros((), bool),
        jnp.zeros((), jnp.int32),
        jnp.full((), -1, jnp.int32),
    )
    final = jax.lax.while_loop(cond, body, init)
    return jnp.maximum(final[0], 0.0), final[5]


def cone_projection_sq_norm(
    gram: Gram, z: jax.Array, *, max_iter: int | None = None, rtol: float | None = None
) -> tuple[jax.Array, jax.Array]:
    r"""Squared norm of the projection onto :math:`C = \mathrm{cone}\{t_i\}`, from z alone.

    By Moreau's decomposition every feasible :math:`\lambda \ge 0` gives a lower bound

    .. math:: \|\Pi_C g\|^2 = \|g\|^2 - \mathrm{dist}(g, C)^2
              \ \ge\ V(\lambda) = 2\lambda^\top z - \lambda^\top G\lambda,

    with equality at the NNLS solution and an error quadratic in :math:`\lambda -
    \lambda^\star`. The active-set solution of :func:`nnls_gram` is polished by one
    Cholesky solve on its support :math:`P`, :math:`\lambda_P = G_{PP}^{-1} z_P`; if that
    is feasible its value :math:`z_P^\top G_{PP}^{-1} z_P = \|L_{PP}^{-1} z_P\|^2` is formed
    as a sum of squares (no cancellation). The larger of the two (valid) lower bounds is
    returned, clipped at 0, so solver error only ever errs low. If the active-set solver
    did not converge within ``max_iter`` the value is NaN (a loud failure, not a silently
    low bound; the estimators of :mod:`mergetheory.width` then raise).

    Args:
      gram: ``[n, n]`` Gram matrix.
      z: ``[n]`` inner products :math:`Tg`.
      max_iter: see :func:`nnls_gram`.
      rtol: see :func:`nnls_gram`.

    Returns:
      ``(value, lam)``: scalar :math:`\|\Pi_C g\|^2` (NaN if not converged) and the
      ``[n]`` coefficients.
    """
    gram, z = jnp.asarray(gram), jnp.asarray(z)
    lam, converged = _nnls_gram(gram, z, max_iter=max_iter, rtol=rtol)
    dtype = z.dtype
    n = z.shape[-1]
    value = 2.0 * jnp.dot(lam, z) - jnp.dot(lam, gram @ lam)
    m = (lam > 0).astype(dtype)
    a = gram * m[:, None] * m[None, :] + jnp.eye(n, dtype=dtype) * (1.0 - m)[None, :]
    chol = jnp.linalg.cholesky(a)
    y = jax.scipy.linalg.solve_triangular(chol, z * m, lower=True)
    lam_pol = jax.scipy.linalg.solve_triangular(chol.T, y, lower=False) * m
    ok = jnp.all(jnp.isfinite(lam_pol)) & jnp.all((lam_pol > 0) | (m == 0))
    polished = jnp.dot(y, y)
    better = ok & (polished > value)
    value = jnp.where(better, polished, value)
    lam = jnp.where(better, lam_pol, lam)
    return jnp.where(converged, jnp.maximum(value, 0.0), jnp.nan), lam


# --------------------------------------------------------------------------------------
# explicit vectors
# --------------------------------------------------------------------------------------


def gram_schmidt_rows(points: jax.Array, rank_rtol: float) -> jax.Array:
    r"""Orthonormal rows ``Q`` with :math:`\mathrm{span}(Q_{1:m}) = \mathrm{span}(t_{1:m})`.

    Classical Gram–Schmidt with one re-orthogonalisation, on the explicit ``[n, D]``
    vectors; a row is zeroed when :math:`\|t_j^\perp\|^2 \le \mathrm{rtol}\,\|t_j\|^2`
    (dependent), the rule of :func:`span_pivot_mask` with the same ``rank_rtol``.

    Args:
      points: ``[n, D]`` vectors.
      rank_rtol: relative rank tolerance (see :func:`default_rank_rtol`).

    Returns:
      ``[n, D]`` rows, orthonormal or zero.
    """
    n = points.shape[0]
    dtype = points.dtype

    def body(j, q):
        v = points[j]
        v = v - q.T @ (q @ v)
        v = v - q.T @ (q @ v)
        nrm2 = jnp.dot(v, v)
        own = jnp.dot(points[j], points[j])
        ok = (nrm2 > rank_rtol * own) & (own > 0)
        row = jnp.where(ok, v / jnp.sqrt(jnp.where(ok, nrm2, 1.0)), 0.0).astype(dtype)
        return q.at[j].set(row)

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(points))
