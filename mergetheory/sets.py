r"""Merged-set families, each defined by its Gram matrix or its support function.

Every set the toolkit builds from ``n`` task vectors :math:`t_1, \dots, t_n \in \mathbb{R}^D`
(rows of :math:`T \in \mathbb{R}^{n \times D}`) has a support function
:math:`h_S(g) = \sup_{s \in S} \langle g, s\rangle` that depends on :math:`g` only through
:math:`z = T g`, and :math:`z \sim \mathcal{N}(0, G)` for :math:`g \sim \mathcal{N}(0, I_D)`,
with :math:`G = T T^\top` the Gram matrix (DESIGN.md section 4). The families:

* ``ConvexHull`` (kind ``hull``): :math:`\mathrm{conv}\{t_i\}`, :math:`h = \max_i z_i`.
* ``ConvexHullWithOrigin`` (``hull0``): :math:`\mathrm{conv}\{0, t_i\}`, all
  weighted-average merges, :math:`h = \max(0, \max_i z_i)`.
* ``PointSet`` (``points``): the finite set :math:`\{t_i\}` (e.g. an operator image),
  :math:`h = \max_i z_i`.
* ``Zonotope`` (``zonotope``): :math:`\{\sum_i \lambda_i t_i : \lambda\in[0,1]^n\}`,
  :math:`h = \sum_i \max(0, z_i)`.
* ``Ellipsoid`` (``ellipsoid``): :math:`\{T^\top u : \|u\|_2 \le 1\}`, :math:`h = \|z\|_2`.
* ``Span`` (``span``): :math:`\mathrm{span}\{t_i\}`; width of :math:`\cap B_2`,
  :math:`h = \sqrt{z^\top G^+ z}`.
* ``PolyhedralCone`` (``cone``): :math:`\mathrm{cone}\{t_i\}`; width of :math:`\cap B_2`,
  :math:`h = \|\Pi_C g\|`, an NNLS problem in z.

``Span`` and ``PolyhedralCone`` are cones: their Gaussian width is reported for the cone
intersected with the unit ball, :math:`w(C \cap B_2) = \mathbb{E}\|\Pi_C g\|`, and their
statistical dimension is :math:`\delta(C) = \mathbb{E}\|\Pi_C g\|^2`.

Each generated set holds ``gram`` ``[n, n]`` and, optionally, the flat generators
``points`` ``[n, D]`` (needed only by the naive reference estimator). Build them with
``Kind.from_task_vectors(tv)`` (a pytree of ``[T, ...]`` leaves or a flat ``[T, D]``
array) or ``Kind.from_gram(G)`` (e.g. from the factored-LoRA Gram matrix), or with
:func:`make_set`. Reference sets in :math:`\mathbb{R}^D` with explicit support functions
(:class:`L1Ball`, :class:`L2Ball`, :class:`LinfBall`, :class:`NonnegativeOrthant`,
:class:`CircularCone`) serve as test oracles for the naive path.

The set classes are NamedTuples, hence pytrees whose tree structure records the concrete
class (``gram`` / ``points`` are the leaves), so they pass through ``jit`` unchanged.
(Registered dataclasses were tried first: in jax 0.10 two different dataclass node types
with the same fields give *equal* tree structures, which let ``jit`` reuse a Zonotope's
compiled program for a PolyhedralCone.) Reference sets are NamedTuples of Python scalars,
treated as static by the estimators.

Linear algebra used by the fast path lives here too: :func:`psd_cholesky` (a Cholesky
factor of a positive *semi*-definite Gram matrix whose leading blocks factor the leading
sub-Gram matrices, which is what makes nested sets share their random numbers) and
:func:`nnls_gram` (Lawson–Hanson non-negative least squares in Gram form, the projection
onto a polyhedral cone).

References (``paper/refs.bib``): Amelunxen, Lotz, McCoy, Tropp 2014 ("Living on the
edge"); Lawson & Hanson 1974; Bro & De Jong 1997 (Gram-form active set, as in
``scipy.optimize.nnls``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from ._types import Gram, Key, TaskVectors, is_lora_factors
from .lora import densify, lora_gram_matrix, split_factors, validate_mixed_task_vectors
from .tree import (
    accumulation_dtype,
    gram_matrix,
    ravel_tasks,
    validate_task_vectors,
)

__all__ = [
    "SET_KINDS",
    "CircularCone",
    "ConvexHull",
    "ConvexHullWithOrigin",
    "Ellipsoid",
    "GeneratedSet",
    "L1Ball",
    "L2Ball",
    "LinfBall",
    "NonnegativeOrthant",
    "PointSet",
    "PolyhedralCone",
    "ReferenceSet",
    "Span",
    "Zonotope",
    "cone_projection_sq_norm",
    "default_rank_rtol",
    "make_set",
    "nnls_gram",
    "operator_image",
    "psd_cholesky",
    "span_pivot_mask",
    "validate_gram",
]


# --------------------------------------------------------------------------------------
# Gram validation and factorisation
# --------------------------------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
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
    if _is_concrete(g):
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
    one step of iterative refinement. (Rank-one updates of :math:`G_{PP}^{-1}` were tried
    first: :math:`O(n^2)` per step, but with near-collinear generators the updated inverse
    drifted enough to admit dependent coordinates and return garbage.)

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
# generated sets
# --------------------------------------------------------------------------------------


@jax.jit
def _ravel_generators(task_vectors: Any) -> jax.Array:
    """Flat ``[T, D]`` generators (LoRA factors densified), at least float32."""
    dense = jtu.tree_map(
        lambda n: densify(n) if is_lora_factors(n) else n, task_vectors, is_leaf=is_lora_factors
    )
    dtype = accumulation_dtype(*(x.dtype for x in jtu.tree_leaves(dense)))
    flat, _ = ravel_tasks(jtu.tree_map(lambda x: x.astype(dtype), dense))
    return flat


_gram_jit = jax.jit(gram_matrix, static_argnames=("precision",))


def _generators_gram(task_vectors: Any, name: str, precision: Any) -> jax.Array:
    """Validated Gram matrix of dense leaves and/or :class:`~mergetheory.lora.LoraFactors`.

    Dense leaves go through the streamed :func:`mergetheory.tree.gram_matrix`; factored
    nodes through :func:`mergetheory.lora.lora_gram_matrix` (``B A`` never formed); a
    pytree mixing both gets the sum (inner products add over leaves).
    """
    validate_mixed_task_vectors(task_vectors, name=name)
    dense, factors = split_factors(task_vectors)
    grams = []
    if jtu.tree_leaves(factors, is_leaf=is_lora_factors):
        grams.append(lora_gram_matrix(factors, precision=precision, check=False))
    if jtu.tree_leaves(dense):
        grams.append(_gram_jit(dense, precision=precision))
    dtype = accumulation_dtype(*(g.dtype for g in grams))
    gram = sum((g.astype(dtype) for g in grams[1:]), grams[0].astype(dtype))
    return validate_gram(gram, name=f"{name}.gram")  # e.g. overflow in a huge-norm input


def _flatten_generators(
    task_vectors: Any, name: str, precision: Any = "highest", keep_points: bool | None = True
) -> tuple[jax.Array | None, jax.Array]:
    """Task vectors (pytree, flat ``[T, D]`` array or LoRA factors) -> ``(flat, gram)``.

    ``flat`` is ``None`` unless ``keep_points`` (``None``: keep for dense inputs only).
    Half-precision inputs are widened to float32.
    """
    if isinstance(task_vectors, GeneratedSet):
        raise TypeError(f"{name}: got a set; pass its task vectors or use make_set")
    if isinstance(task_vectors, np.ndarray):
        task_vectors = jnp.asarray(task_vectors)
    gram = _generators_gram(task_vectors, name, precision)
    if keep_points is None:
        nodes = jtu.tree_leaves(task_vectors, is_leaf=is_lora_factors)
        keep_points = not any(map(is_lora_factors, nodes))
    flat = _ravel_generators(task_vectors) if keep_points else None
    return flat, gram


class _GeneratedFields(NamedTuple):
    gram: jax.Array
    points: jax.Array | None = None


class GeneratedSet(_GeneratedFields):
    r"""Abstract base: a set generated by ``n`` vectors, known through its Gram matrix.

    A NamedTuple (hence a pytree whose tree structure records the concrete class); the
    concrete families below add no fields, only their ``kind``.

    Attributes:
      gram: ``[n, n]`` Gram matrix :math:`G_{ij} = \langle t_i, t_j\rangle`.
      points: ``[n, D]`` flat generators, or ``None`` when built from a Gram matrix (the
        naive estimator then is unavailable).
    """

    __slots__ = ()
    kind: ClassVar[str] = ""
    is_cone: ClassVar[bool] = False

    def __new__(cls, gram, points=None):  # noqa: D102
        if cls is GeneratedSet:
            raise TypeError("GeneratedSet is abstract; use ConvexHull, Span, ...")
        return super().__new__(cls, gram, points)

    @property
    def num_generators(self) -> int:
        """``n``, the number of generators."""
        return int(self.gram.shape[0])

    @property
    def dim(self) -> int | None:
        """Ambient dimension ``D`` when the generators are kept, else ``None``."""
        return None if self.points is None else int(self.points.shape[1])

    @classmethod
    def from_task_vectors(
        cls,
        task_vectors: TaskVectors,
        *,
        keep_points: bool | None = None,
        precision: Any = "highest",
    ):
        r"""Build the set from task vectors: a pytree, a flat ``[T, D]`` array, or LoRA factors.

        The Gram pass is streamed leaf by leaf (:func:`mergetheory.tree.gram_matrix`);
        :class:`~mergetheory.lora.LoraFactors` nodes (``B [T, d, r]``, ``A [T, r, k]``)
        enter through their factored Gram matrix, ``B A`` never formed. Half-precision
        inputs (float16, bfloat16) are widened to float32.

        Args:
          task_vectors: pytree whose leaves share the leading task axis; any node may be a
            :class:`~mergetheory.lora.LoraFactors`.
          keep_points: keep the flat ``[T, D]`` generators (for the naive estimator).
            ``None`` (default): keep them for dense inputs, not for LoRA factors (they
            would be densified). Set ``False`` for large ``D``: only the ``[T, T]`` Gram
            matrix is kept.
          precision: matmul precision of the Gram pass.

        Returns:
          An instance of ``cls``.

        Example:
          >>> hull = ConvexHull.from_task_vectors({"w": jnp.eye(3)})
        """
        flat, gram = _flatten_generators(task_vectors, cls.__name__, precision, keep_points)
        return cls(gram=gram, points=flat)

    @classmethod
    def from_gram(cls, gram: Gram):
        r"""Build the set from a precomputed ``[n, n]`` Gram matrix (validated).

        Use this with the factored-LoRA or sharded Gram pass; only the fast estimator is
        then available.
        """
        return cls(gram=validate_gram(gram, name=f"{cls.__name__}.from_gram"), points=None)

    def prefix(self, num: int):
        """The same family generated by the first ``num`` generators."""
        if not 1 <= num <= self.num_generators:
            raise ValueError(f"prefix: num={num} not in [1, {self.num_generators}]")
        pts = None if self.points is None else self.points[:num]
        return type(self)(gram=self.gram[:num, :num], points=pts)

    def as_kind(self, kind: str) -> GeneratedSet:
        """The set of family ``kind`` generated by the same vectors."""
        if kind not in SET_KINDS:
            raise ValueError(f"unknown set kind {kind!r}; expected one of {sorted(SET_KINDS)}")
        return SET_KINDS[kind](gram=self.gram, points=self.points)


class ConvexHull(GeneratedSet):
    r"""Convex hull :math:`\mathrm{conv}\{t_1..t_n\}`; :math:`h(g) = \max_i z_i`."""

    __slots__ = ()
    kind: ClassVar[str] = "hull"


class ConvexHullWithOrigin(GeneratedSet):
    r"""All weighted-average merges :math:`\mathrm{conv}\{0, t_1..t_n\}`.

    :math:`h(g) = \max(0, \max_i z_i)`; equivalently
    :math:`\{\sum_i\lambda_i t_i : \lambda \ge 0, \sum_i \lambda_i \le 1\}`.
    """

    __slots__ = ()
    kind: ClassVar[str] = "hull0"


class PointSet(GeneratedSet):
    r"""A finite point set :math:`\{t_1..t_n\}` (width equals its hull's).

    Built by :func:`operator_image` from a merge operator's outputs, or directly.
    """

    __slots__ = ()
    kind: ClassVar[str] = "points"


class Zonotope(GeneratedSet):
    r"""Zonotope :math:`\{\sum_i\lambda_i t_i : \lambda\in[0,1]^n\}`.

    :math:`h(g) = \sum_i \max(0, z_i)`, so :math:`w = \sum_i \|t_i\| / \sqrt{2\pi}` exactly
    (:func:`mergetheory.closed_forms.zonotope_width`).
    """

    __slots__ = ()
    kind: ClassVar[str] = "zonotope"


class Ellipsoid(GeneratedSet):
    r"""Ellipsoid :math:`\{T^\top u : \|u\|_2 \le 1\}` generated by the rows of ``T``.

    :math:`h(g) = \|Tg\|_2 = \|z\|_2`. With orthonormal axes :math:`U` and semi-axes
    :math:`a`, ``T = diag(a) U`` and :math:`G = \mathrm{diag}(a^2)`
    (:meth:`from_semi_axes`).
    """

    __slots__ = ()
    kind: ClassVar[str] = "ellipsoid"

    @classmethod
    def from_semi_axes(cls, semi_axes: Any, axes: Any | None = None) -> Ellipsoid:
        r"""Ellipsoid with semi-axes ``a`` ``[k]`` along orthonormal ``axes`` ``[k, D]``.

        Without ``axes`` the ellipsoid lives in :math:`\mathbb{R}^k` with coordinate axes.
        E.g. a Hessian sublevel set :math:`\{\Delta: \tfrac12\Delta^\top H\Delta\le\epsilon\}`
        has :math:`a_j = \sqrt{2\epsilon/\lambda_j}` (THEORY.md section 3, candidate 4).
        """
        concrete = _is_concrete(semi_axes) and (axes is None or _is_concrete(axes))
        xp = np if concrete else jnp  # host-side construction: no eager compiles
        a = xp.asarray(semi_axes)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"from_semi_axes: semi_axes must be [k], got shape {a.shape}")
        if concrete and not bool(np.all(np.isfinite(a) & (a >= 0))):
            raise ValueError("from_semi_axes: semi_axes must be finite and >= 0")
        if axes is None:
            pts = xp.diag(a)
        else:
            u = xp.asarray(axes)
            if u.ndim != 2 or u.shape[0] != a.shape[0]:
                raise ValueError(f"from_semi_axes: axes must be [k={a.shape[0]}, D], got {u.shape}")
            pts = a[:, None] * u
        return cls.from_task_vectors(pts)


class Span(GeneratedSet):
    r"""The linear span :math:`L = \mathrm{span}\{t_i\}` (a cone).

    Gaussian width is that of :math:`L\cap B_2`: :math:`\mathbb{E}\|P_L g\| =
    \mathbb{E}\sqrt{z^\top G^+ z} = \mathbb{E}\chi_r`, :math:`r = \mathrm{rank}\,G`;
    statistical dimension :math:`\delta(L) = r`.
    """

    __slots__ = ()
    kind: ClassVar[str] = "span"
    is_cone: ClassVar[bool] = True


class PolyhedralCone(GeneratedSet):
    r"""Polyhedral cone :math:`C = \{T^\top\lambda : \lambda \ge 0\}` of the generators.

    Gaussian width is that of :math:`C \cap B_2`, :math:`\mathbb{E}\|\Pi_C g\|`;
    statistical dimension :math:`\delta(C) = \mathbb{E}\|\Pi_C g\|^2`. The projection is
    the NNLS problem :func:`nnls_gram` in ``n`` coordinates.
    """

    __slots__ = ()
    kind: ClassVar[str] = "cone"
    is_cone: ClassVar[bool] = True


SET_KINDS: dict[str, type[GeneratedSet]] = {
    cls.kind: cls
    for cls in (
        ConvexHull,
        ConvexHullWithOrigin,
        PointSet,
        Zonotope,
        Ellipsoid,
        Span,
        PolyhedralCone,
    )
}
"""Generated-set families by ``kind`` name."""


def make_set(kind: str, generators: Any, *, keep_points: bool | None = None) -> GeneratedSet:
    """Build a generated set of family ``kind`` (see :data:`SET_KINDS`).

    Args:
      kind: ``"hull"``, ``"hull0"``, ``"points"``, ``"zonotope"``, ``"ellipsoid"``,
        ``"span"`` or ``"cone"``.
      generators: task-vector pytree ``[T, ...]``, flat ``[T, D]`` array, pytree of
        :class:`~mergetheory.lora.LoraFactors`, or an existing :class:`GeneratedSet`
        (its Gram matrix and points are reused).
      keep_points: keep flat generators for the naive estimator (``None``: for dense
        inputs only; see :meth:`GeneratedSet.from_task_vectors`).

    Example:
      >>> cone = make_set("cone", jnp.eye(4))
    """
    if kind not in SET_KINDS:
        raise ValueError(f"unknown set kind {kind!r}; expected one of {sorted(SET_KINDS)}")
    if isinstance(generators, GeneratedSet):
        return generators.as_kind(kind)
    if isinstance(generators, ReferenceSet):
        raise TypeError("make_set: reference sets have no generators")
    return SET_KINDS[kind].from_task_vectors(generators, keep_points=keep_points)


# --------------------------------------------------------------------------------------
# reference sets with explicit support functions (naive path only)
# --------------------------------------------------------------------------------------


class ReferenceSet:
    r"""Mixin for sets in :math:`\mathbb{R}^D` with an explicit support function.

    The concrete reference sets are NamedTuples of Python scalars (``dim`` first); the
    estimators treat them as static (they are hashable), so ``dim`` may set shapes. They
    serve as oracles for the naive estimator.
    """

    __slots__ = ()
    is_cone: ClassVar[bool] = False

    def support(self, g: jax.Array) -> jax.Array:
        r"""Support function :math:`h(g) = \sup_{t} \langle g, t\rangle`.

        For cones, that of :math:`C\cap B_2`, i.e. :math:`\|\Pi_C g\|`.
        """
        raise NotImplementedError

    def projection_sq_norm(self, g: jax.Array) -> jax.Array:
        r""":math:`\|\Pi_C g\|^2` (cones only)."""
        raise TypeError(f"{type(self).__name__} is not a cone")


def _check_dim(name: str, dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"{name}: dim must be an int >= 1, got {dim!r}")
    return int(dim)


def _check_radius(name: str, radius: Any) -> float:
    r = float(radius)
    if not (np.isfinite(r) and r >= 0):
        raise ValueError(f"{name}: radius must be finite and >= 0, got {radius!r}")
    return r


class _BallFields(NamedTuple):
    dim: int
    radius: float = 1.0


class L2Ball(ReferenceSet, _BallFields):
    r"""Euclidean ball of radius ``radius`` in :math:`\mathbb{R}^D`: :math:`h(g) = r\|g\|_2`."""

    __slots__ = ()

    def __new__(cls, dim: int, radius: float = 1.0):  # noqa: D102
        return _BallFields.__new__(
            cls, _check_dim(cls.__name__, dim), _check_radius(cls.__name__, radius)
        )

    def support(self, g):  # noqa: D102
        return self.radius * jnp.sqrt(jnp.sum(g * g))


class L1Ball(ReferenceSet, _BallFields):
    r"""Cross-polytope :math:`\{\|t\|_1 \le r\}`: :math:`h(g) = r\|g\|_\infty`."""

    __slots__ = ()

    def __new__(cls, dim: int, radius: float = 1.0):  # noqa: D102
        return _BallFields.__new__(
            cls, _check_dim(cls.__name__, dim), _check_radius(cls.__name__, radius)
        )

    def support(self, g):  # noqa: D102
        return self.radius * jnp.max(jnp.abs(g))


class LinfBall(ReferenceSet, _BallFields):
    r"""Cube :math:`\{\|t\|_\infty \le r\}`: :math:`h(g) = r\|g\|_1`."""

    __slots__ = ()

    def __new__(cls, dim: int, radius: float = 1.0):  # noqa: D102
        return _BallFields.__new__(
            cls, _check_dim(cls.__name__, dim), _check_radius(cls.__name__, radius)
        )

    def support(self, g):  # noqa: D102
        return self.radius * jnp.sum(jnp.abs(g))


class _DimFields(NamedTuple):
    dim: int


class NonnegativeOrthant(ReferenceSet, _DimFields):
    r"""The orthant :math:`\mathbb{R}^D_+`: :math:`\Pi(g) = g_+`, :math:`\delta = D/2`."""

    __slots__ = ()
    is_cone: ClassVar[bool] = True

    def __new__(cls, dim: int):  # noqa: D102
        return _DimFields.__new__(cls, _check_dim(cls.__name__, dim))

    def projection_sq_norm(self, g):  # noqa: D102
        gp = jnp.maximum(g, 0.0)
        return jnp.sum(gp * gp)

    def support(self, g):  # noqa: D102
        return jnp.sqrt(self.projection_sq_norm(g))


class _ConeFields(NamedTuple):
    dim: int
    angle: float = float(np.pi / 4)


class CircularCone(ReferenceSet, _ConeFields):
    r"""Circular cone :math:`\{x : x_1 \ge \|x\|\cos\alpha\}` of half-angle ``angle``.

    ALMT 2014, section 3.4. With :math:`r = \|x_{2:D}\|`, the projection has norm
    :math:`\|x\|` inside the cone and :math:`\max(0, x_1\cos\alpha + r\sin\alpha)` outside.
    """

    __slots__ = ()
    is_cone: ClassVar[bool] = True

    def __new__(cls, dim: int, angle: float = float(np.pi / 4)):  # noqa: D102
        a = float(angle)
        if not 0.0 <= a <= np.pi / 2:
            raise ValueError(f"CircularCone: angle must be in [0, pi/2], got {angle!r}")
        return _ConeFields.__new__(cls, _check_dim(cls.__name__, dim), a)

    def projection_sq_norm(self, g):  # noqa: D102
        x1 = g[0]
        r = jnp.sqrt(jnp.sum(g[1:] * g[1:]))
        nrm2 = x1 * x1 + r * r
        c, s = float(np.cos(self.angle)), float(np.sin(self.angle))
        inside = x1 >= jnp.sqrt(nrm2) * c
        edge = jnp.maximum(x1 * c + r * s, 0.0)
        return jnp.where(inside, nrm2, edge * edge)

    def support(self, g):  # noqa: D102
        return jnp.sqrt(self.projection_sq_norm(g))


# --------------------------------------------------------------------------------------
# image of a merge operator
# --------------------------------------------------------------------------------------


def _flat_merged(merged: Any) -> jax.Array:
    leaves = jtu.tree_leaves(merged)
    return jnp.concatenate([jnp.reshape(x, (-1,)) for x in leaves])


def operator_image(
    operator: str | Callable[..., Any],
    task_vectors: TaskVectors,
    key: Key,
    *,
    grid: Mapping[str, Any] | None = None,
    num_keys: int = 1,
    hparams: Mapping[str, Any] | None = None,
    keep_points: bool = True,
    chunk_size: int | None = None,
) -> PointSet:
    r"""The image of a merge operator over a grid of hyperparameters and keys.

    .. math:: S = \{\, M(\tau_1..\tau_T;\ k_j,\ \theta) : \theta \in \Theta,\ j \le K \,\}

    for :math:`\Theta` the Cartesian product of the ``grid`` values. ``S`` is a finite set,
    so :math:`w(S) = w(\mathrm{conv}\,S)` and the fast estimator applies to its Gram matrix.

    Args:
      operator: a name in ``mergetheory.merge.MERGE_OPERATORS`` (imported lazily; its
        ``default_hparams`` are the starting point) or a function
        ``fn(task_vectors, key, **hparams) -> merged``.
      task_vectors: pytree of ``[T, ...]`` leaves (or a flat ``[T, D]`` array).
      key: PRNG key; split into ``num_keys`` keys shared by all grid points.
      grid: ``{name: values}``; each ``values`` has a leading grid axis (``[K]`` scalars,
        or e.g. ``[K, T]`` for ``weights``). Values are passed traced (continuous
        hyperparameters only; static ones go in ``hparams``).
      num_keys: keys per grid point (use > 1 for stochastic operators such as DARE).
      hparams: fixed keyword arguments (override the registry defaults).
      keep_points: keep the ``[P, D]`` flat outputs (for the naive estimator).
      chunk_size: evaluate this many (grid point, key) pairs at a time (memory bound);
        default all at once.

    Returns:
      A :class:`PointSet` with ``P = prod(len(values)) * num_keys`` points, ordered grid
      point major, key minor.

    Example:
      >>> image = operator_image("task_arithmetic", tv, key,
      ...                        grid={"scaling": jnp.linspace(0.1, 1.0, 10)})
    """
    if isinstance(operator, str):
        from .merge import MERGE_OPERATORS  # lazy: merge is a sibling layer

        if operator not in MERGE_OPERATORS:
            raise ValueError(
                f"unknown merge operator {operator!r}; known: {sorted(MERGE_OPERATORS)}"
            )
        op = MERGE_OPERATORS[operator]
        fn = op.fn
        base = dict(op.default_hparams)
    elif callable(operator):
        fn = operator
        base = {}
    else:
        raise TypeError(f"operator must be a registry name or a callable, got {type(operator)}")
    base.update(dict(hparams or {}))
    if isinstance(task_vectors, np.ndarray):
        task_vectors = jnp.asarray(task_vectors)
    validate_task_vectors(task_vectors)
    if not isinstance(num_keys, int | np.integer) or num_keys < 1:
        raise ValueError(f"num_keys must be an int >= 1, got {num_keys!r}")

    grid = dict(grid or {})
    names = list(grid)
    values = [jnp.asarray(grid[k]) for k in names]
    for k, v in zip(names, values, strict=True):
        if v.ndim == 0 or v.shape[0] == 0:
            raise ValueError(f"grid[{k!r}] needs a non-empty leading grid axis, got {v.shape}")
    for k in names:
        base.pop(k, None)  # grid values override fixed / default hyperparameters
    sizes = [int(v.shape[0]) for v in values]
    num_grid = int(np.prod(sizes)) if sizes else 1
    num_points = num_grid * num_keys
    # point p = (grid point p // num_keys, key p % num_keys); grid points in C order
    grid_idx = np.repeat(np.arange(num_grid), num_keys)
    index = np.unravel_index(grid_idx, sizes) if sizes else ()
    batch = num_points if chunk_size is None else max(1, min(int(chunk_size), num_points))

    def one(args):
        hp, k = args
        return _flat_merged(fn(task_vectors, k, **base, **hp))

    @jax.jit
    def image(values, key):  # one compiled program instead of many eager ops
        point_hp = {k: v[index[i]] for i, (k, v) in enumerate(zip(names, values, strict=True))}
        point_keys = jnp.tile(jr.split(key, num_keys), num_grid)
        return jax.lax.map(one, (point_hp, point_keys), batch_size=batch)

    flat = image(values, key)
    return PointSet.from_task_vectors(flat, keep_points=keep_points)
