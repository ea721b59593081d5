r"""Iso-C and Iso-CTS: isotropic merging in the common (and task-specific) subspace.

Iso-C (Marczak et al., ICML 2025) takes the SVD of :math:`\sum_t \tau_t` per 2-D leaf
and flattens its spectrum to the mean, :math:`\Delta = \alpha\,\bar\sigma\, U V^\top`;
Iso-CTS adds task-specific residual subspaces to the common one, orthogonalised by polar
factors, with the same flat spectrum. Other leaves get the task mean; LoRA leaves, weights
and the rank tolerance are described in :mod:`mergetheory.merge.svd`.

Example:
  >>> tv = {"w": jr.normal(jr.key(0), (4, 16, 8))}
  >>> iso_c(tv, jr.key(1))["w"].shape
  (16, 8)

References (``paper/refs.bib``): ``marczak2025iso`` (arXiv 2502.04959); reference code
FusionBench ``iso_utils``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .._types import Key, Merged, TaskVectors, Weights
from ..tree import sum_tasks
from ._common import checked
from .svd import (
    HIGHEST,
    TSVFactors,
    check_matrix_task_vectors,
    concat_task_triplets,
    factored_singular_triplets,
    map_matrix_leaves_alpha,
    orthogonalised_factors,
    rank_tolerance,
    recombine_factors,
    task_singular_triplets,
    thin_svd,
    times_alpha,
)

__all__ = ["iso_c", "iso_cts", "iso_cts_factors"]


def iso_cts_factors(x: jax.Array, *, common_space_fraction: float = 0.8) -> TSVFactors:
    r"""The Iso-CTS factors of one stack of task matrices.

    With :math:`r = \min(m, n)`, :math:`k_0 = \lfloor r f\rfloor`,
    :math:`n_t = \operatorname{round}((r - k_0)/T)` and :math:`k = r - T n_t` (so the task
    blocks divide evenly; Python's round-half-even, as the reference):

    .. math::

       \textstyle\sum_t \tau_t = U \Sigma V^\top,\quad
       U_c = U_{:, :k},\quad
       \tau_t^\perp = \tau_t - U_c U_c^\top \tau_t = U_t' \Sigma_t' V_t'^\top,

    then the blocks ``[U'_{1,:n_t} ... U'_{T,:n_t}, U_c]`` (and likewise for ``V``) are
    orthogonalised by their polar factors and every singular value is replaced by the mean
    :math:`\bar\sigma` of all :math:`r` concatenated values.

    Args:
      x: ``[T, m, n]``.
      common_space_fraction: ``f`` (0.8 in the paper and FusionBench).

    Returns:
      :class:`TSVFactors` (the same layout as TSV-M) with ``s`` the flat spectrum
      :math:`\bar\sigma` on occupied columns.
    """
    num, m, n = x.shape
    r = min(m, n)
    k = int(r * common_space_fraction)
    per_task = round((r - k) / num)
    if num * per_task > r:  # only for tiny r with f near 0
        per_task = r // num
    k = r - num * per_task
    total = sum_tasks(x)
    u, s, vt = thin_svd(total)
    tol = rank_tolerance(s[:1], (m, n), s.dtype)
    blocks_u, blocks_s, blocks_vt = [], [], []
    if per_task > 0:
        uc = u[:, :k]
        resid = x - jnp.matmul(uc, jnp.matmul(uc.T, x, precision=HIGHEST), precision=HIGHEST)
        ut, st, vtt = task_singular_triplets(resid, per_task)
        bu, bs, bvt = concat_task_triplets(ut, st, vtt)
        blocks_u.append(bu)
        blocks_s.append(bs)
        blocks_vt.append(bvt)
    blocks_u.append(u[:, :k])
    blocks_s.append(s[:k])
    blocks_vt.append(vt[:k])
    uu = jnp.concatenate(blocks_u, axis=1)
    ss = jnp.concatenate(blocks_s)
    vv = jnp.concatenate(blocks_vt, axis=0)
    occupied = ss > tol
    flat = jnp.full_like(ss, jnp.mean(ss))
    return orthogonalised_factors(uu, flat, vv, occupied)


def _iso_from_svd(u: jax.Array, s: jax.Array, vt: jax.Array, shape: tuple[int, int]) -> jax.Array:
    r = min(shape)
    sbar = jnp.sum(s) / r  # mean over all r singular values (zeros beyond len(s) included)
    occupied = s > rank_tolerance(s[:1], shape, s.dtype)
    uo = jnp.where(occupied, u, jnp.zeros((), u.dtype))
    return sbar * jnp.matmul(uo, vt, precision=HIGHEST)


@checked(validate=check_matrix_task_vectors)
def iso_c(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Weights | None = None,
    alpha: Any = 1.0,
) -> Merged:
    r"""Iso-C: isotropic merge in the common subspace, per 2-D leaf.

    .. math::

       \textstyle\sum_t \tau_t = U \Sigma V^\top,\qquad
       \Delta_{\text{Iso-C}} = \alpha\,\bar\sigma\, U V^\top,\quad
       \bar\sigma = \frac1r \sum_{i=1}^r \sigma_i,\ r = \min(m, n).

    So every singular value of the merged matrix equals :math:`\alpha\bar\sigma`, its
    singular vectors are those of the task sum, :math:`\|\Delta\|_F = \alpha\bar\sigma
    \sqrt r` and :math:`\|\Delta\|_2 = \alpha\bar\sigma` (the nuclear norm of the sum is
    kept: :math:`r\bar\sigma = \|\sum_t\tau_t\|_*`). Non-2-D leaves:
    :math:`\alpha\,\frac1T\sum_t\tau_t`. If the sum is rank deficient, the null-space
    directions (arbitrary in the SVD) get no weight; see the module docstring.

    Properties: scale-equivariant, invariant to the task order, not linear, not the
    identity at ``T = 1`` (the spectrum is flattened).

    LoRA leaves: the SVD of :math:`\sum_t s_t B_t A_t` comes from the concatenated factors
    (rank :math:`\le T r`, cost :math:`O((d + k) T^2 r^2)`); the merged leaf is dense.
    Dense cost: one SVD of the ``m x n`` sum per leaf, :math:`O(m n r)`.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (or :class:`LoraFactors`).
      key: unused (deterministic operator).
      weights: optional ``[T]``: the sum becomes :math:`\sum_t w_t \tau_t`.
      alpha: scalar applied to the merged update (traceable; FusionBench default 1.0).

    Returns:
      The merged update (same pytree without the task axis).

    Reference: Marczak et al., ICML 2025 (``marczak2025iso``).
    """
    del key
    return _iso_c(task_vectors, weights, alpha)


@jax.jit
def _iso_c(task_vectors: Any, weights: Any, alpha: Any) -> Merged:
    def matrix(x: jax.Array) -> jax.Array:
        u, s, vt = thin_svd(sum_tasks(x))
        return times_alpha(alpha, _iso_from_svd(u, s, vt, x.shape[1:]))

    def factors(b: jax.Array, a: jax.Array) -> jax.Array:
        num, d, rank = b.shape
        k_in = a.shape[-1]
        b_cat = jnp.moveaxis(b, 0, 1).reshape(d, num * rank)
        a_cat = a.reshape(num * rank, k_in)
        u, s, vt = factored_singular_triplets(b_cat, a_cat)
        return times_alpha(alpha, _iso_from_svd(u, s, vt, (d, k_in)))

    return map_matrix_leaves_alpha(task_vectors, weights, alpha, matrix, factors)


@checked(validate=check_matrix_task_vectors)
def iso_cts(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Weights | None = None,
    alpha: Any = 1.0,
    common_space_fraction: float = 0.8,
) -> Merged:
    r"""Iso-CTS: Iso-C in a common plus task-specific subspace, per 2-D leaf.

    .. math::

       \Delta_{\text{Iso-CTS}} = \alpha\,\bar\sigma\; U_\perp V_\perp^\top,

    with :math:`U_\perp, V_\perp` the polar-orthogonalised blocks of the top
    :math:`k \approx f r` singular vectors of :math:`\sum_t \tau_t` and each task's top
    :math:`n_t = (r - k)/T` singular vectors of its residual
    :math:`\tau_t - U_c U_c^\top \tau_t`, and :math:`\bar\sigma` the mean of all their
    singular values (:func:`iso_cts_factors`). Non-2-D leaves:
    :math:`\alpha\,\frac1T\sum_t\tau_t`.

    Properties: scale-equivariant, invariant to the task order (up to float error), not
    linear, not the identity at ``T = 1``.

    LoRA leaves are densified (``s_t B_t A_t`` per leaf): the residual SVDs need the dense
    updates. Cost per ``m x n`` leaf: ``T + 3`` SVDs, :math:`O(T m n r)`.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (or :class:`LoraFactors`).
      key: unused (deterministic operator).
      weights: optional ``[T]`` factors applied to each task vector first.
      alpha: scalar applied to the merged update (traceable).
      common_space_fraction: static ``f``, the common share of the rank (0.8 default).

    Returns:
      The merged update (same pytree without the task axis).

    Reference: Marczak et al., ICML 2025 (``marczak2025iso``).
    """
    del key
    return _iso_cts(task_vectors, weights, alpha, common_space_fraction)


@functools.partial(jax.jit, static_argnames=("common_space_fraction",))
def _iso_cts(task_vectors: Any, weights: Any, alpha: Any, common_space_fraction: float) -> Merged:
    def matrix(x: jax.Array) -> jax.Array:
        f = iso_cts_factors(x, common_space_fraction=common_space_fraction)
        return times_alpha(alpha, recombine_factors(f))

    return map_matrix_leaves_alpha(task_vectors, weights, alpha, matrix)
