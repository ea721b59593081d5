r"""Shared linear algebra of the SVD-based merge operators (TSV-M / TSV-C, Iso-C, Iso-CTS).

Every operator here works *per 2-D leaf* (a leaf ``[T, m, n]``: one matrix per task) and
falls back to the task mean :math:`\frac1T\sum_t \tau_t` on every other leaf (biases,
LayerNorm scales, conv kernels), as the reference implementations do. Shapes follow the
house convention: task-vector leaves ``[T, ...]`` in, merged leaves ``[...]`` out.

The operators live in :mod:`mergetheory.merge.tsv` (TSV-M, TSV-C; Gargiulo et al.,
CVPR 2025) and :mod:`mergetheory.merge.iso` (Iso-C, Iso-CTS; Marczak et al., ICML 2025);
this module holds what they share: :func:`polar_factor`, :func:`task_singular_triplets`,
:func:`factored_singular_triplets`, the :class:`TSVFactors` layout, the rank tolerance
and the leaf dispatch :func:`map_matrix_leaves`. Costs and thread settings:
``docs/merge_kernels.md``.

**Null-space directions.** When a matrix is rank deficient (e.g. a densified LoRA update,
rank :math:`\le r_{\text{LoRA}}`), its SVD's singular vectors beyond the rank are an
*arbitrary* orthonormal completion (whatever LAPACK returns). The reference codes feed
those vectors into the polar step (TSV-M, Iso-CTS) or give them the mean singular value
(Iso-C), so their output depends on the completion. Here a singular triplet with
:math:`\sigma \le \sigma_{\max}\,\max(m, n)\,\epsilon` (NumPy's ``matrix_rank`` tolerance)
is treated as *unoccupied*: its column is zeroed before the polar step and it receives no
weight. For full-rank updates (every dense fine-tuning update in practice) this changes
nothing; for rank-deficient ones it makes the result well defined and lets the factored
LoRA path below agree with the densified one.

**LoRA experts.** A leaf may be a :class:`~mergetheory.lora.LoraFactors`
``(B [T, d, r], A [T, r, k], scaling)`` (or stacked ``[L, T, ...]``, handled layer by layer).
TSV-M and TSV-C never form ``B @ A`` for the SVDs: each task's thin SVD
comes from QR factorisations of ``B`` and ``A^T`` and an ``r x r`` core
(:func:`factored_singular_triplets`, cost :math:`O((d + k) r^2)`); Iso-C gets the
SVD of :math:`\sum_t s_t B_t A_t = [s_1B_1 \dots s_TB_T][A_1; \dots; A_T]` the same way
(rank :math:`\le T r`). Iso-CTS needs residuals of the dense updates and forms
:math:`s_t B_t A_t` per leaf. Every operator returns a *dense* ``[d, k]`` merged leaf
(``[L, d, k]`` for stacked factors), the layout of every merged update (for LoRA inputs
the TSV-M and Iso-C outputs have rank :math:`\le T r` and could be kept factored; they
are not).

**Weights.** ``weights`` ``[T]`` pre-scale each task vector before anything else (as
FusionBench's list of per-task ``alpha``); the scalar ``alpha`` scales the merged update
(every leaf) afterwards.

References (``paper/refs.bib``): ``gargiulo2025tsv`` (arXiv 2412.00081), ``marczak2025iso``
(arXiv 2502.04959); reference code FusionBench ``TSVM_utils`` / ``iso_utils``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._types import Merged, TaskVectors, Weights, is_lora_factors
from ..lora import LoraFactors, validate_mixed_task_vectors
from ..tree import sum_tasks
from ._common import as_weights, check_weights, task_broadcast

__all__ = [
    "HIGHEST",
    "TSVFactors",
    "check_matrix_task_vectors",
    "concat_task_triplets",
    "factored_singular_triplets",
    "is_lora_factors",
    "map_matrix_leaves",
    "map_matrix_leaves_alpha",
    "mean_tasks",
    "orthogonalised_factors",
    "polar_factor",
    "rank_tolerance",
    "recombine_factors",
    "task_singular_triplets",
    "thin_svd",
    "times_alpha",
]

HIGHEST = "highest"
"""Matmul precision of the SVD-based operators (full float32 / float64 products on GPU)."""


class TSVFactors(NamedTuple):
    r"""The orthogonalised TSV-M factors of one matrix: :math:`\Delta = U_\perp
    \operatorname{diag}(\sigma) V_\perp^\top`.

    Attributes:
      u: ``[m, T k]`` left factor :math:`U_\perp` (orthonormal on occupied columns).
      s: ``[T k]`` singular values, task-major (zero on unoccupied columns).
      vt: ``[T k, n]`` right factor :math:`V_\perp^\top` (orthonormal occupied rows).
      occupied: ``[T k]`` bool, the triplets with :math:`\sigma` above the rank tolerance.
    """

    u: jax.Array
    s: jax.Array
    vt: jax.Array
    occupied: jax.Array


# --------------------------------------------------------------------------------------
# linear-algebra helpers
# --------------------------------------------------------------------------------------


@jax.custom_batching.custom_vmap
def _svd_one(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return tuple(jnp.linalg.svd(x, full_matrices=False))


def _svd_mapped(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jax.lax.map(_svd_one, x)


def _svd_batched(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return tuple(jnp.linalg.svd(x, full_matrices=False))


@_svd_one.def_vmap
def _svd_one_vmap(axis_size: int, in_batched: list[bool], x: jax.Array) -> Any:
    del axis_size
    if not in_batched[0]:
        return _svd_one(x), (False, False, False)
    out = jax.lax.platform_dependent(x, cpu=_svd_mapped, default=_svd_batched)
    return tuple(out), (True, True, True)


def thin_svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``jnp.linalg.svd(x, full_matrices=False)``, one matrix at a time on CPU.

    Why not the library call alone: jaxlib's batched CPU SVD splits its batch over XLA's
    intra-op thread pool and blocks a pool thread until the pieces finish; a merged tree
    has one such call per leaf, and when as many are ready at once as the pool has threads
    every thread waits and the program deadlocks (seen with ``jit(vmap(tsv_m))`` on a
    30-leaf transformer on 2 cores, jax 0.10.2; ``docs/real_merging.md``). Leading axes,
    and batch axes added by ``vmap``, are therefore mapped with ``lax.map`` on CPU; other
    platforms keep the batched call. Same LAPACK routine per matrix, so the same numbers.

    Returns:
      ``(u [..., m, k], s [..., k], vt [..., k, n])`` with ``k = min(m, n)``.
    """
    if x.ndim == 2:
        return _svd_one(x)
    flat = x.reshape((-1,) + x.shape[-2:])
    out = jax.lax.platform_dependent(flat, cpu=_svd_mapped, default=_svd_batched)
    return tuple(o.reshape(x.shape[:-2] + o.shape[1:]) for o in out)


def rank_tolerance(smax: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """NumPy's ``matrix_rank`` tolerance :math:`\\sigma_{\\max} \\max(m, n) \\epsilon`."""
    return smax * (max(shape) * float(jnp.finfo(dtype).eps))


def polar_factor(x: jax.Array, occupied: jax.Array | None = None) -> jax.Array:
    r"""Orthogonal polar factor :math:`W = P Q^\top` of :math:`x = P S Q^\top` (thin SVD).

    :math:`W` is the matrix with orthonormal columns nearest to ``x`` in Frobenius norm
    (orthogonal Procrustes), which is how TSV-M and Iso-CTS orthogonalise their
    concatenated singular-vector blocks. Columns marked unoccupied are zeroed first; if the
    occupied columns are linearly independent, ``W``'s occupied columns are then the polar
    factor of the occupied block alone (unoccupied columns of ``W`` are arbitrary and must
    be given zero weight by the caller).

    Args:
      x: ``[m, p]`` with ``p <= m``.
      occupied: optional ``[p]`` bool mask of the columns to keep.

    Returns:
      ``[m, p]`` matrix ``W`` with :math:`W^\top W = I` (on the occupied columns).
    """
    if occupied is not None:
        x = jnp.where(occupied, x, jnp.zeros((), x.dtype))
    p, _, qh = thin_svd(x)
    return jnp.matmul(p, qh, precision=HIGHEST)


def task_singular_triplets(
    x: jax.Array, rank: int | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-task thin SVD ``x[t] = U_t diag(s_t) V_t^T``, truncated to ``rank`` triplets.

    Args:
      x: ``[T, m, n]`` task matrices.
      rank: number of leading triplets kept (None: all ``min(m, n)``).

    Returns:
      ``(u [T, m, k], s [T, k], vt [T, k, n])`` with singular values in descending order.
    """

    u, s, vt = thin_svd(x)
    if rank is not None:
        u, s, vt = u[..., :rank], s[..., :rank], vt[..., :rank, :]
    return u, s, vt


def factored_singular_triplets(
    b: jax.Array, a: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Thin SVD of :math:`B A` from the factors, without forming the product.

    With :math:`B = Q_B R_B` and :math:`A^\top = Q_A R_A` (reduced QR),
    :math:`B A = Q_B (R_B R_A^\top) Q_A^\top`, so the SVD of the small core
    :math:`R_B R_A^\top = u\,\operatorname{diag}(s)\,v^\top` gives
    :math:`B A = (Q_B u)\operatorname{diag}(s)(Q_A v)^\top`. Cost :math:`O((d + k) r^2)`
    instead of :math:`O(d k \min(d, k))`.

    Args:
      b: ``[..., d, r]``.
      a: ``[..., r, k]`` (same leading axes).

    Returns:
      ``(u [..., d, rho], s [..., rho], vt [..., rho, k])``, ``rho = min(d, k, r)``.
    """
    qb, rb = jnp.linalg.qr(b)
    qa, ra = jnp.linalg.qr(jnp.swapaxes(a, -1, -2))
    core = jnp.matmul(rb, jnp.swapaxes(ra, -1, -2), precision=HIGHEST)
    u, s, vt = thin_svd(core)
    return (
        jnp.matmul(qb, u, precision=HIGHEST),
        s,
        jnp.matmul(vt, jnp.swapaxes(qa, -1, -2), precision=HIGHEST),
    )


def concat_task_triplets(u: jax.Array, s: jax.Array, vt: jax.Array):
    """``[T, m, k], [T, k], [T, k, n]`` -> task-major ``[m, T k], [T k], [T k, n]``."""
    num, m, k = u.shape
    n = vt.shape[-1]
    return (
        jnp.moveaxis(u, 0, 1).reshape(m, num * k),
        s.reshape(num * k),
        vt.reshape(num * k, n),
    )


def orthogonalised_factors(
    u: jax.Array, s: jax.Array, vt: jax.Array, occupied: jax.Array
) -> TSVFactors:
    """:class:`TSVFactors` with ``u`` and ``vt^T`` replaced by their polar factors."""
    u_perp = polar_factor(u, occupied)
    vt_perp = polar_factor(vt.T, occupied).T
    return TSVFactors(u_perp, jnp.where(occupied, s, jnp.zeros((), s.dtype)), vt_perp, occupied)


def recombine_factors(f: TSVFactors) -> jax.Array:
    r""":math:`U_\perp \operatorname{diag}(\sigma) V_\perp^\top` from :class:`TSVFactors`."""
    return jnp.matmul(f.u * jnp.expand_dims(f.s, -2), f.vt, precision=HIGHEST)


# --------------------------------------------------------------------------------------
# leaf dispatch: 2-D leaves, other leaves, LoRA factors
# --------------------------------------------------------------------------------------


def mean_tasks(x: jax.Array) -> jax.Array:
    r""":math:`\frac1T\sum_t x_t` (the fallback of the SVD operators on non-2-D leaves)."""
    return sum_tasks(x) / x.shape[0]


def times_alpha(alpha: Any, y: jax.Array) -> jax.Array:
    """``alpha * y`` in ``y``'s dtype (``alpha`` may be a traced float64 scalar)."""
    return jnp.asarray(alpha).astype(y.dtype) * y


def map_matrix_leaves(
    task_vectors: TaskVectors,
    weights: Weights | None,
    *,
    matrix_fn: Callable[[jax.Array], jax.Array],
    other_fn: Callable[[jax.Array], jax.Array] = mean_tasks,
    factors_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Merged:
    """Apply ``matrix_fn`` to ``[T, m, n]`` leaves, ``other_fn`` to the rest.

    :class:`LoraFactors` leaves go to ``factors_fn(B, A)`` (scaling and weights folded
    into ``B``), or, when it is None, are densified and go to ``matrix_fn``; stacked
    factors are mapped layer by layer with ``vmap``.
    """

    def dense(leaf: jax.Array) -> jax.Array:
        w = as_weights(weights, leaf.shape[0], leaf.dtype)
        x = leaf if w is None else leaf * task_broadcast(w, leaf.ndim)
        out = matrix_fn(x) if leaf.ndim == 3 else other_fn(x)
        return out.astype(leaf.dtype)

    def factored(f: LoraFactors) -> jax.Array:
        b, a = f.B, f.A.astype(f.B.dtype)
        stacked = b.ndim == 4
        num = b.shape[1] if stacked else b.shape[0]
        scale = jnp.broadcast_to(jnp.asarray(f.scaling).astype(b.dtype), (num,))
        w = as_weights(weights, num, b.dtype)
        if w is not None:
            scale = scale * w

        def one_layer(bl: jax.Array, al: jax.Array) -> jax.Array:
            bl = bl * scale[:, None, None]
            if factors_fn is None:
                return matrix_fn(jnp.matmul(bl, al, precision=HIGHEST))
            return factors_fn(bl, al)

        out = jax.vmap(one_layer)(b, a) if stacked else one_layer(b, a)
        return out.astype(b.dtype)

    return jtu.tree_map(
        lambda leaf: factored(leaf) if is_lora_factors(leaf) else dense(leaf),
        task_vectors,
        is_leaf=is_lora_factors,
    )


def map_matrix_leaves_alpha(
    task_vectors: TaskVectors,
    weights: Weights | None,
    alpha: Any,
    matrix_fn: Callable[[jax.Array], jax.Array],
    factors_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Merged:
    r""":func:`map_matrix_leaves` with :math:`\alpha\,\frac1T\sum_t\tau_t` on the other leaves.

    The dispatch of the SVD merges (Iso-C, Iso-CTS, TSV-M): ``matrix_fn`` and
    ``factors_fn`` apply ``alpha`` themselves.
    """
    return map_matrix_leaves(
        task_vectors,
        weights,
        matrix_fn=matrix_fn,
        other_fn=lambda x: times_alpha(alpha, mean_tasks(x)),
        factors_fn=factors_fn,
    )


def check_matrix_task_vectors(task_vectors: Any, weights: Any = None) -> int:
    """Validate a task-vector set whose leaves may be :class:`LoraFactors`; return ``T``.

    :func:`mergetheory.lora.validate_mixed_task_vectors` (dense leaves and factored nodes
    must agree on ``T``; errors name the offending leaf path); ``weights`` must be None or
    ``[T]``.
    """
    num = validate_mixed_task_vectors(task_vectors)
    check_weights(weights, num)
    return num
