r"""TSV-M and TSV-C: Task Singular Vectors merge and compression, per 2-D leaf.

TSV-M (Gargiulo et al., CVPR 2025): keep the top :math:`k = \lfloor r/T \rfloor` singular
triplets of every task (:math:`r = \min(m, n)`), concatenate them, orthogonalise the two
factor blocks by their polar factors and recombine with the original singular values,

.. math::
   \tau_t = U_t \Sigma_t V_t^\top,\quad
   \Delta = \alpha\, \operatorname{polar}([U_{t,:k}]_t)\,
   \operatorname{diag}(\sigma)\, \operatorname{polar}([V_{t,:k}]_t)^\top .

TSV-C compresses each task to its top triplets (no merge). Other leaves get the task mean;
LoRA leaves, weights and the rank tolerance are described in :mod:`mergetheory.merge.svd`.

Example:
  >>> tv = {"w": jr.normal(jr.key(0), (4, 16, 8))}
  >>> tsv_m(tv, jr.key(1))["w"].shape
  (16, 8)

References (``paper/refs.bib``): ``gargiulo2025tsv`` (arXiv 2412.00081); reference code
FusionBench ``TSVM_utils``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._types import Key, Merged, TaskVectors, Weights
from ..lora import LoraFactors
from ._common import checked
from .svd import (
    HIGHEST,
    TSVFactors,
    check_matrix_task_vectors,
    concat_task_triplets,
    factored_singular_triplets,
    is_lora_factors,
    map_matrix_leaves_alpha,
    mean_tasks,
    orthogonalised_factors,
    rank_tolerance,
    recombine_factors,
    task_singular_triplets,
    times_alpha,
)

__all__ = ["tsv_c", "tsv_m", "tsv_m_factors", "tsv_m_from_triplets", "tsv_m_triplets"]


def _tsv_rank(r: int, num: int, sv_reduction: float | None) -> int:
    # floor(r / T) exactly; the reference's int(r * (1 / T)) can be one less from float
    # rounding (e.g. r = T = 49 gives 0).
    return r // num if sv_reduction is None else int(r * sv_reduction)


def _tsv_from_triplets(
    u: jax.Array, s: jax.Array, vt: jax.Array, shape: tuple[int, int], rank: int
) -> TSVFactors | None:
    k = min(rank, s.shape[-1])
    if k == 0:
        return None
    u, s, vt = u[..., :k], s[..., :k], vt[..., :k, :]
    occupied = s > rank_tolerance(s[:, :1], shape, s.dtype)  # per task, relative to its sigma_1
    uc, sc, vtc = concat_task_triplets(u, s, vt)
    return orthogonalised_factors(uc, sc, vtc, occupied.reshape(-1))


def tsv_m_factors(x: jax.Array, *, sv_reduction: float | None = None) -> TSVFactors | None:
    r"""The TSV-M factors of one stack of task matrices.

    .. math::

       \tau_t = U_t \Sigma_t V_t^\top,\quad k = \lfloor r \cdot f \rfloor,\quad
       U = [U_{1,:k} \dots U_{T,:k}],\ V = [V_{1,:k} \dots V_{T,:k}],\quad
       U_\perp = \operatorname{polar}(U),\ V_\perp = \operatorname{polar}(V).

    Args:
      x: ``[T, m, n]``.
      sv_reduction: fraction ``f`` of ``r = min(m, n)`` kept per task; None means
        :math:`k = \lfloor r / T \rfloor`.

    Returns:
      :class:`TSVFactors`, or None when ``k = 0`` (then the merged matrix is zero, as in the
      reference, whose buffers stay zero).
    """
    num, m, n = x.shape
    rank = _tsv_rank(min(m, n), num, sv_reduction)
    if rank == 0:
        return None
    u, s, vt = task_singular_triplets(x, rank)
    return _tsv_from_triplets(u, s, vt, (m, n), rank)


@checked(validate=check_matrix_task_vectors)
def tsv_m(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Weights | None = None,
    alpha: Any = 1.0,
    sv_reduction: float | None = None,
) -> Merged:
    r"""TSV-M: Task Singular Vectors merge, per 2-D leaf.

    .. math::

       \Delta_{\text{TSV}} = \alpha\, U_\perp \operatorname{diag}(\sigma) V_\perp^\top,

    with :math:`U_\perp, \sigma, V_\perp` from :func:`tsv_m_factors` (each task's top
    :math:`k = \lfloor r/T\rfloor` singular triplets, concatenated, both factor blocks
    replaced by their polar factors). Non-2-D leaves: :math:`\alpha\,\frac1T\sum_t\tau_t`.

    Properties: scale-equivariant; invariant to the task order (the polar factor is
    equivariant under column permutations and sign flips) up to float error; not linear.
    At ``T = 1`` with the default ``sv_reduction`` it keeps the full rank and returns the
    input (up to float error); with ``sv_reduction = f`` it reduces to the TSV-C truncation
    :func:`tsv_c`.

    LoRA leaves: per-task SVDs from the factors (:func:`factored_singular_triplets`); the
    merged leaf is dense ``[d, k]``.

    Cost per ``m x n`` leaf: ``T`` SVDs, :math:`O(T m n r)`, plus two polar SVDs of the
    concatenated ``m x Tk`` and ``n x Tk`` blocks.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (or :class:`LoraFactors`).
      key: unused (deterministic operator).
      weights: optional ``[T]`` factors applied to each task vector *before* the SVDs
        (FusionBench's per-task alphas).
      alpha: scalar applied to the merged update (traceable).
      sv_reduction: static fraction of ``r`` kept per task (None: ``1/T``, exact floor).

    Returns:
      The merged update (same pytree without the task axis).

    Example:
      >>> tv = {"w": jr.normal(jr.key(0), (4, 16, 8))}
      >>> tsv_m(tv, jr.key(1))["w"].shape
      (16, 8)

    Reference: Gargiulo et al., CVPR 2025 (``gargiulo2025tsv``).
    """
    del key
    return _tsv_m(task_vectors, weights, alpha, sv_reduction)


@functools.partial(jax.jit, static_argnames=("sv_reduction",))
def _tsv_m(task_vectors: Any, weights: Any, alpha: Any, sv_reduction: float | None) -> Merged:
    def matrix(x: jax.Array) -> jax.Array:
        f = tsv_m_factors(x, sv_reduction=sv_reduction)
        if f is None:
            return jnp.zeros(x.shape[1:], x.dtype)
        return times_alpha(alpha, recombine_factors(f))

    def factors(b: jax.Array, a: jax.Array) -> jax.Array:
        num, d, _ = b.shape
        k_in = a.shape[-1]
        rank = _tsv_rank(min(d, k_in), num, sv_reduction)
        u, s, vt = factored_singular_triplets(b, a)
        f = _tsv_from_triplets(u, s, vt, (d, k_in), rank) if rank > 0 else None
        if f is None:
            return jnp.zeros((d, k_in), b.dtype)
        return times_alpha(alpha, recombine_factors(f))

    return map_matrix_leaves_alpha(task_vectors, weights, alpha, matrix, factors)


def tsv_m_triplets(task_vectors: TaskVectors) -> Any:
    r"""Stage one of a two-stage TSV-M: every task's full thin SVD of every 2-D leaf.

    .. math:: \tau_t = U_t \Sigma_t V_t^\top \quad (\text{all } r = \min(m, n) \text{ triplets}).

    Each task's SVD does not depend on which other tasks are merged with it, so a caller
    merging many subsets of one task set (the bridge experiment's nested subsets) computes
    it once and gathers the subsets' triplets for :func:`tsv_m_from_triplets`.

    Args:
      task_vectors: pytree of dense ``[T, ...]`` leaves (no :class:`LoraFactors`).

    Returns:
      The same tree with ``(u [T, m, r], s [T, r], vt [T, r, n])`` at each ``[T, m, n]``
      leaf and None at the other leaves.

    Example:
      >>> tv = {"w": jr.normal(jr.key(0), (4, 16, 8))}
      >>> trip = tsv_m_triplets(tv)
      >>> tsv_m_from_triplets(tv, trip)["w"].shape   # == tsv_m(tv, key)["w"]
      (16, 8)

    Reference: Gargiulo et al., CVPR 2025 (``gargiulo2025tsv``).
    """
    check_matrix_task_vectors(task_vectors)
    if any(is_lora_factors(x) for x in jtu.tree_leaves(task_vectors, is_leaf=is_lora_factors)):
        raise ValueError("tsv_m_triplets: dense task vectors only (got LoraFactors leaves)")
    return _tsv_m_triplets(task_vectors)


@jax.jit
def _tsv_m_triplets(task_vectors: Any) -> Any:
    return jtu.tree_map(lambda x: task_singular_triplets(x) if x.ndim == 3 else None, task_vectors)


def tsv_m_from_triplets(task_vectors: TaskVectors, triplets: Any, *, alpha: Any = 1.0) -> Merged:
    r"""Stage two of a two-stage TSV-M: the merge from the tasks' precomputed triplets.

    ``tsv_m_from_triplets(tv, tsv_m_triplets(tv), alpha=a)`` is ``tsv_m(tv, key,
    alpha=a)`` bit for bit (the same SVDs, truncated to the same
    :math:`k = \lfloor r/T \rfloor`, then the same polar factors), and a subset's merge
    takes the subset's rows of both arguments. Unweighted, default ``sv_reduction``.

    Args:
      task_vectors: ``[T, ...]`` dense task vectors (their mean is the merge of the
        non-2-D leaves).
      triplets: :func:`tsv_m_triplets` of the same ``T`` tasks (rows gathered alike).
      alpha: scalar applied to the merged update (traceable).

    Returns:
      The merged update (same pytree without the task axis).

    Example:
      >>> tv = {"w": jr.normal(jr.key(0), (4, 16, 8))}
      >>> sub = jax.tree.map(lambda x: x[:2], (tv, tsv_m_triplets(tv)))
      >>> tsv_m_from_triplets(*sub)["w"].shape   # == tsv_m of the first two tasks
      (16, 8)

    Reference: Gargiulo et al., CVPR 2025 (``gargiulo2025tsv``).
    """
    return _tsv_m_from_triplets(task_vectors, triplets, alpha)


@jax.jit
def _tsv_m_from_triplets(task_vectors: Any, triplets: Any, alpha: Any) -> Merged:
    # jitted as tsv_m is (bit-identical results need the same compiled arithmetic)
    def one(x: jax.Array, trip: Any) -> jax.Array:
        if x.ndim != 3:
            return times_alpha(alpha, mean_tasks(x)).astype(x.dtype)
        num, m, n = x.shape
        rank = _tsv_rank(min(m, n), num, None)
        f = _tsv_from_triplets(*trip, (m, n), rank) if rank > 0 else None
        if f is None:
            return jnp.zeros((m, n), x.dtype)
        return times_alpha(alpha, recombine_factors(f)).astype(x.dtype)

    return jtu.tree_map(one, task_vectors, triplets, is_leaf=lambda t: t is None)


def tsv_c(
    task_vectors: TaskVectors,
    *,
    sv_reduction: float | None = None,
    factored: bool = False,
) -> TaskVectors:
    r"""TSV-C: compress each task's 2-D leaves to their top singular triplets.

    .. math::

       \tau_t \mapsto U_{t,:k}\,\Sigma_{t,:k}\,V_{t,:k}^\top,\qquad
       k = \lfloor r \cdot f \rfloor .

    Not a merge: the output keeps the task axis (TSV-C serves per-task models, storing
    :math:`k(m + n + 1)` numbers per task instead of :math:`m n`). Non-2-D leaves are
    returned unchanged.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (or :class:`LoraFactors`, whose SVDs come
        from the factors).
      sv_reduction: static fraction ``f`` of ``r = min(m, n)`` kept (None: ``1/T``, as the
        TSV paper uses for a ``T``-task setting).
      factored: return each compressed 2-D leaf as
        ``LoraFactors(B = U diag(sigma) [T, m, k], A = V^T [T, k, n])`` instead of dense.

    Returns:
      The compressed task-vector set.

    Reference: Gargiulo et al., CVPR 2025 (``gargiulo2025tsv``).
    """
    check_matrix_task_vectors(task_vectors)
    return _tsv_c(task_vectors, sv_reduction, factored)


@functools.partial(jax.jit, static_argnames=("sv_reduction", "factored"))
def _tsv_c(task_vectors: Any, sv_reduction: float | None, factored: bool) -> Any:
    def compress(u: jax.Array, s: jax.Array, vt: jax.Array, rank: int, dtype: Any) -> Any:
        u, s, vt = u[..., :rank], s[..., :rank], vt[..., :rank, :]
        b = (u * s[:, None, :]).astype(dtype)
        if factored:
            return LoraFactors(b, vt.astype(dtype), 1.0)
        return jnp.matmul(b, vt.astype(dtype), precision=HIGHEST)

    def one(leaf: Any) -> Any:
        if is_lora_factors(leaf):
            if leaf.B.ndim == 4:
                raise ValueError("tsv_c: stacked LoraFactors [L, T, ...] are not supported")
            num, d, _ = leaf.B.shape
            k_in = leaf.A.shape[-1]
            scale = jnp.broadcast_to(jnp.asarray(leaf.scaling).astype(leaf.B.dtype), (num,))
            u, s, vt = factored_singular_triplets(
                leaf.B * scale[:, None, None], leaf.A.astype(leaf.B.dtype)
            )
            return compress(u, s, vt, _tsv_rank(min(d, k_in), num, sv_reduction), leaf.B.dtype)
        if leaf.ndim != 3:
            return leaf
        num, m, n = leaf.shape
        rank = _tsv_rank(min(m, n), num, sv_reduction)
        u, s, vt = task_singular_triplets(leaf, rank)
        return compress(u, s, vt, rank, leaf.dtype)

    return jtu.tree_map(one, task_vectors, is_leaf=is_lora_factors)
