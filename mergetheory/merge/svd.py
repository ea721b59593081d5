r"""SVD-based merge operators: TSV-M / TSV-C, Iso-C and Iso-CTS, with their helpers.

Every operator here works *per 2-D leaf* (a leaf ``[T, m, n]``: one matrix per task) and
falls back to the task mean :math:`\frac1T\sum_t \tau_t` on every other leaf (biases,
LayerNorm scales, conv kernels), as the reference implementations do. Shapes follow the
house convention: task-vector leaves ``[T, ...]`` in, merged leaves ``[...]`` out.

**Operators** (registered in :data:`mergetheory.merge.MERGE_OPERATORS`):

* :func:`tsv_m` -- Task Singular Vectors merge (Gargiulo et al., CVPR 2025): top
  :math:`k = \lfloor r/T \rfloor` singular triplets of every task, concatenated, the two
  factor blocks orthogonalised by their polar factor, recombined with the original
  singular values.
* :func:`iso_c` -- isotropic merge in the common space (Marczak et al., ICML 2025): the SVD
  of :math:`\sum_t \tau_t` with its spectrum flattened to its mean.
* :func:`iso_cts` -- Iso-C plus task-specific residual subspaces, orthogonalised and
  flattened.

**Helpers**: :func:`tsv_c` (per-task TSV compression, returned dense or as
:class:`~mergetheory.lora.LoraFactors`), :func:`polar_factor`,
:func:`task_singular_triplets`, :func:`factored_singular_triplets`,
:func:`tsv_m_factors`, :func:`iso_cts_factors`.

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
:func:`tsv_m` and :func:`tsv_c` never form ``B @ A`` for the SVDs: each task's thin SVD
comes from QR factorisations of ``B`` and ``A^T`` and an ``r x r`` core
(:func:`factored_singular_triplets`, cost :math:`O((d + k) r^2)`); :func:`iso_c` gets the
SVD of :math:`\sum_t s_t B_t A_t = [s_1B_1 \dots s_TB_T][A_1; \dots; A_T]` the same way
(rank :math:`\le T r`). :func:`iso_cts` needs residuals of the dense updates and forms
:math:`s_t B_t A_t` per leaf. Every operator returns a *dense* ``[d, k]`` merged leaf
(``[L, d, k]`` for stacked factors), the layout of every merged update (for LoRA inputs
the TSV-M and Iso-C outputs have rank :math:`\le T r` and could be kept factored; they
are not).

**Cost per** ``m x n`` **leaf** (:math:`r = \min(m, n)`): TSV-M, :math:`T` SVDs
(:math:`O(T m n r)`) plus two polar SVDs of ``m x Tk`` and ``n x Tk``; Iso-C, one SVD
(:math:`O(m n r)`); Iso-CTS, :math:`T + 3` SVDs. Measured on the shared 2-core CPU
(jax 0.10, float32 ``[8, 1000, 1000]``, ``OPENBLAS_NUM_THREADS=1``): Iso-C 0.47 s,
TSV-M 3.7 s, Iso-CTS 4.1 s (one ``1000 x 1000`` SVD: 0.36-0.5 s).

**Threads.** On CPU, jax's SVD / QR / eigh call LAPACK in SciPy's OpenBLAS, which starts
its own thread pool beside XLA's. On the shared 2-core machine that oversubscription made
one ``1000 x 1000`` SVD take 7-15 s instead of 0.36 s, and TSV-M on ``[8, 1000, 1000]``
538 s instead of 3.7 s. Scripts and ``tests/conftest.py`` should set
``OPENBLAS_NUM_THREADS=1`` before importing jax (the library sets no global state).

**Weights.** ``weights`` ``[T]`` pre-scale each task vector before anything else (as
FusionBench's list of per-task ``alpha``); the scalar ``alpha`` scales the merged update
(every leaf) afterwards.

References (``paper/refs.bib``): ``gargiulo2025tsv`` (arXiv 2412.00081), ``marczak2025iso``
(arXiv 2502.04959); reference code FusionBench ``TSVM_utils`` / ``iso_utils``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._types import Key, Merged, TaskVectors, Weights, is_lora_factors
from ..lora import LoraFactors, validate_mixed_task_vectors
from ..tree import sum_tasks
from ._common import as_weights, check_weights, task_broadcast

__all__ = [
    "TSVFactors",
    "check_matrix_task_vectors",
    "factored_singular_triplets",
    "is_lora_factors",
    "iso_c",
    "iso_cts",
    "iso_cts_factors",
    "polar_factor",
    "task_singular_triplets",
    "tsv_c",
    "tsv_m",
    "tsv_m_factors",
]

_HI = "highest"


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


def _rank_tol(smax: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
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
    p, _, qh = jnp.linalg.svd(x, full_matrices=False)
    return jnp.matmul(p, qh, precision=_HI)


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

    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
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
    core = jnp.matmul(rb, jnp.swapaxes(ra, -1, -2), precision=_HI)
    u, s, vt = jnp.linalg.svd(core, full_matrices=False)
    return (
        jnp.matmul(qb, u, precision=_HI),
        s,
        jnp.matmul(vt, jnp.swapaxes(qa, -1, -2), precision=_HI),
    )


def _concat_tasks(u: jax.Array, s: jax.Array, vt: jax.Array):
    """``[T, m, k], [T, k], [T, k, n]`` -> task-major ``[m, T k], [T k], [T k, n]``."""
    num, m, k = u.shape
    n = vt.shape[-1]
    return (
        jnp.moveaxis(u, 0, 1).reshape(m, num * k),
        s.reshape(num * k),
        vt.reshape(num * k, n),
    )


def _orthogonalised(u: jax.Array, s: jax.Array, vt: jax.Array, occupied: jax.Array):
    u_perp = polar_factor(u, occupied)
    vt_perp = polar_factor(vt.T, occupied).T
    return TSVFactors(u_perp, jnp.where(occupied, s, jnp.zeros((), s.dtype)), vt_perp, occupied)


def _recombine(f: TSVFactors) -> jax.Array:
    return jnp.matmul(f.u * f.s, f.vt, precision=_HI)


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
    occupied = s > _rank_tol(s[:, :1], shape, s.dtype)  # per task, relative to its sigma_1
    uc, sc, vtc = _concat_tasks(u, s, vt)
    return _orthogonalised(uc, sc, vtc, occupied.reshape(-1))


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
    u, s, vt = jnp.linalg.svd(total, full_matrices=False)
    tol = _rank_tol(s[:1], (m, n), s.dtype)
    blocks_u, blocks_s, blocks_vt = [], [], []
    if per_task > 0:
        uc = u[:, :k]
        resid = x - jnp.matmul(uc, jnp.matmul(uc.T, x, precision=_HI), precision=_HI)
        ut, st, vtt = task_singular_triplets(resid, per_task)
        bu, bs, bvt = _concat_tasks(ut, st, vtt)
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
    return _orthogonalised(uu, flat, vv, occupied)


# --------------------------------------------------------------------------------------
# leaf dispatch: 2-D leaves, other leaves, LoRA factors
# --------------------------------------------------------------------------------------


def _mean_tasks(x: jax.Array) -> jax.Array:
    return sum_tasks(x) / x.shape[0]


def _times(alpha: Any, y: jax.Array) -> jax.Array:
    """``alpha * y`` in ``y``'s dtype (``alpha`` may be a traced float64 scalar)."""
    return jnp.asarray(alpha).astype(y.dtype) * y


def _map_leaves(
    task_vectors: TaskVectors,
    weights: Weights | None,
    *,
    matrix_fn: Callable[[jax.Array], jax.Array],
    other_fn: Callable[[jax.Array], jax.Array] = _mean_tasks,
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
                return matrix_fn(jnp.matmul(bl, al, precision=_HI))
            return factors_fn(bl, al)

        out = jax.vmap(one_layer)(b, a) if stacked else one_layer(b, a)
        return out.astype(b.dtype)

    return jtu.tree_map(
        lambda leaf: factored(leaf) if is_lora_factors(leaf) else dense(leaf),
        task_vectors,
        is_leaf=is_lora_factors,
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


# --------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------


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
    check_matrix_task_vectors(task_vectors, weights)
    return _tsv_m(task_vectors, weights, alpha, sv_reduction)


@functools.partial(jax.jit, static_argnames=("sv_reduction",))
def _tsv_m(task_vectors: Any, weights: Any, alpha: Any, sv_reduction: float | None) -> Merged:
    def matrix(x: jax.Array) -> jax.Array:
        f = tsv_m_factors(x, sv_reduction=sv_reduction)
        if f is None:
            return jnp.zeros(x.shape[1:], x.dtype)
        return _times(alpha, _recombine(f))

    def factors(b: jax.Array, a: jax.Array) -> jax.Array:
        num, d, _ = b.shape
        k_in = a.shape[-1]
        rank = _tsv_rank(min(d, k_in), num, sv_reduction)
        u, s, vt = factored_singular_triplets(b, a)
        f = _tsv_from_triplets(u, s, vt, (d, k_in), rank) if rank > 0 else None
        if f is None:
            return jnp.zeros((d, k_in), b.dtype)
        return _times(alpha, _recombine(f))

    return _map_leaves(
        task_vectors,
        weights,
        matrix_fn=matrix,
        other_fn=lambda x: _times(alpha, _mean_tasks(x)),
        factors_fn=factors,
    )


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
        return jnp.matmul(b, vt.astype(dtype), precision=_HI)

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


def _iso_from_svd(u: jax.Array, s: jax.Array, vt: jax.Array, shape: tuple[int, int]) -> jax.Array:
    r = min(shape)
    sbar = jnp.sum(s) / r  # mean over all r singular values (zeros beyond len(s) included)
    occupied = s > _rank_tol(s[:1], shape, s.dtype)
    uo = jnp.where(occupied, u, jnp.zeros((), u.dtype))
    return sbar * jnp.matmul(uo, vt, precision=_HI)


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
    check_matrix_task_vectors(task_vectors, weights)
    return _iso_c(task_vectors, weights, alpha)


@jax.jit
def _iso_c(task_vectors: Any, weights: Any, alpha: Any) -> Merged:
    def matrix(x: jax.Array) -> jax.Array:
        u, s, vt = jnp.linalg.svd(sum_tasks(x), full_matrices=False)
        return _times(alpha, _iso_from_svd(u, s, vt, x.shape[1:]))

    def factors(b: jax.Array, a: jax.Array) -> jax.Array:
        num, d, rank = b.shape
        k_in = a.shape[-1]
        b_cat = jnp.moveaxis(b, 0, 1).reshape(d, num * rank)
        a_cat = a.reshape(num * rank, k_in)
        u, s, vt = factored_singular_triplets(b_cat, a_cat)
        return _times(alpha, _iso_from_svd(u, s, vt, (d, k_in)))

    return _map_leaves(
        task_vectors,
        weights,
        matrix_fn=matrix,
        other_fn=lambda x: _times(alpha, _mean_tasks(x)),
        factors_fn=factors,
    )


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
    check_matrix_task_vectors(task_vectors, weights)
    return _iso_cts(task_vectors, weights, alpha, common_space_fraction)


@functools.partial(jax.jit, static_argnames=("common_space_fraction",))
def _iso_cts(task_vectors: Any, weights: Any, alpha: Any, common_space_fraction: float) -> Merged:
    def matrix(x: jax.Array) -> jax.Array:
        f = iso_cts_factors(x, common_space_fraction=common_space_fraction)
        return _times(alpha, _recombine(f))

    return _map_leaves(
        task_vectors,
        weights,
        matrix_fn=matrix,
        other_fn=lambda x: _times(alpha, _mean_tasks(x)),
    )
