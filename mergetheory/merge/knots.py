r"""KnOTS: merge in a shared SVD basis (Stoica et al., ICLR 2025, arXiv 2410.19735).

KnOTS aligns the task updates of a layer before merging them: the SVD of their column
concatenation gives one shared left basis :math:`U`, in which every task is a coordinate
matrix :math:`s_t`; the :math:`s_t` are merged with TIES (or DARE-TIES) and mapped back.
Per 2-D leaf (``[T, m, n]``, tasks :math:`\Delta_t \in \mathbb R^{m\times n}`):

.. math::

   [\Delta_1 \mid \dots \mid \Delta_T] = U \operatorname{diag}(\sigma) V^\top,\qquad
   V^\top = [V_1^\top \mid \dots \mid V_T^\top],\qquad
   s_t = \operatorname{diag}(\sigma) V_t^\top \in \mathbb R^{\rho\times n},

so that :math:`\Delta_t = U s_t` exactly, and

.. math::

   \Delta = \alpha\, U\, \operatorname{TIES}(s_1, \dots, s_T).

Components with :math:`\sigma \le \sigma_{\max}\max(m, Tn)\,\epsilon` are dropped (their
rows of :math:`s_t` are zeroed; the official code drops :math:`\sigma \le 10^{-5}` in
float64, an absolute threshold that is not scale-free).

**TIES as in the KnOTS code** (``masking_ops.py``, ``representation="svd-vector"``):

* *trim*: keep, per task, the top ``density`` fraction of :math:`|s_t|` entries
  (:math:`\lfloor\rho N\rfloor + 1` of them: ``kthvalue(N - k)`` with ``>=``, so ties are
  kept too), the ranking taken over **all** 2-D
  leaves of the model at once (``trim_scope="global"``, default; the code flattens every
  layer's :math:`s_t` into one vector) or per leaf (``trim_scope="tensor"``);
* *elect*: :math:`\gamma = \operatorname{sgn}\sum_t \hat s_t`, zeros replaced by the sign
  of :math:`\sum\gamma` over the pool (``resolve_zero_signs``, "majority");
* *disjoint mean*: the mean of the agreeing non-zero :math:`\hat s_t` entries (0 if none);
* the scaling coefficient :math:`\alpha` (``scale``) multiplies the result (the configs
  search it; 0.6 for ViT-B/32 with TIES, 0.7 with DARE-TIES).

**DARE-TIES** (:func:`knots_dare_ties`): each :math:`s_t` entry is kept with probability
``density`` (the DARE keep probability, as in :func:`mergetheory.merge.dare_ties`; the
code's ``dare_pruning_coeffs`` :math:`p = 1 -` ``density``, 0.1 in its configs) and
rescaled by ``1 / density``; then TIES with ``trim_density = 1``
(the configs use ``topK = 100``).

**Non-2-D leaves** (biases, norms, conv kernels) are merged by the same TIES (after the
same DARE, for :func:`knots_dare_ties`) directly on their entries, as one separate pool
(the code's ``merge_other_params=True``; by default it does not merge them at all). The
code's special layouts (a linear layer's bias appended to its weight as one more column,
LayerNorm scales as diagonal matrices) are not reproduced: pass such a layer as one 2-D
leaf if you want it.

**LoRA experts.** For :class:`~mergetheory.lora.LoraFactors` leaves the SVD is taken
from the factors: :math:`[s_1B_1A_1 \mid \dots] = B_{\text{cat}}\,
\operatorname{blockdiag}(A_1, \dots, A_T)` with :math:`B_{\text{cat}} = [s_1B_1 \dots
s_TB_T] = QR`, so only the ``Tr x Tk`` matrix :math:`R\,\operatorname{blockdiag}(A)` is
decomposed and :math:`\rho \le T r` (the KnOTS paper's setting). ``B @ A`` is never formed;
the merged leaf is dense ``[d, k]`` (``[L, d, k]`` for stacked factors).

**Cost per** ``m x n`` **leaf**: one SVD of the ``m x Tn`` concatenation,
:math:`O(m\,Tn\,\min(m, Tn))`, and coordinates :math:`s` of size
:math:`T\rho n \le T^2 m n`: for dense full-rank updates with :math:`m \ge Tn` the
coordinates hold :math:`T` times more numbers than the task vectors. For LoRA factors:
:math:`O((d + Tk)\,T^2 r^2)` and :math:`T\cdot Tr\cdot k` coordinates.

Properties: scale-equivariant and invariant to the task order (the SVD's sign and basis
ambiguities cancel in :math:`U s_t`, and TIES is sign-equivariant per entry); not linear.
At ``T = 1`` with ``density = 1`` it is the identity (up to float error and the dropped
:math:`\sigma \approx 0` components).

Reference (``paper/refs.bib``): ``stoica2025knots``; code ``gstoica27/KnOTS``
``task_merger.py`` (``SVDMerger``) and ``masking_ops.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

from .._types import Key, Merged, TaskVectors
from ._common import checked, leaf_key_list
from .dare_mask import dare_keep_mask
from .primitives import dare_rescale, elect_and_merge, trim_parts
from .svd import (
    HIGHEST,
    check_matrix_task_vectors,
    is_lora_factors,
    rank_tolerance,
    thin_svd,
)
from .topk import magnitude_threshold, num_kept

__all__ = ["knots", "knots_coordinates", "knots_dare_ties", "knots_ties_pool"]

_TRIM_SCOPES = ("global", "tensor")


# --------------------------------------------------------------------------------------
# shared basis and coordinates
# --------------------------------------------------------------------------------------


def knots_coordinates(x: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Shared basis and per-task coordinates of one leaf: :math:`\Delta_t = U s_t`.

    Args:
      x: ``[T, m, n]`` dense task matrices, or a
        :class:`~mergetheory.lora.LoraFactors` ``(B [T, d, r], A [T, r, k], scaling)``
        (not stacked).

    Returns:
      ``(u [m, rho], s [T, rho, n], occupied [rho])`` with ``rho = min(m, T n)``
      (``min(d, T r, T k)`` for factors); rows of ``s`` whose singular value is below the
      rank tolerance are zero and marked unoccupied.
    """
    if is_lora_factors(x):
        b, a = x.B, x.A.astype(x.B.dtype)
        num, d, rank = b.shape
        k_in = a.shape[-1]
        scale = jnp.broadcast_to(jnp.asarray(x.scaling).astype(b.dtype), (num,))
        b_cat = jnp.moveaxis(b * scale[:, None, None], 0, 1).reshape(d, num * rank)
        q, r = jnp.linalg.qr(b_cat)  # [d, p], [p, T r]
        core = jnp.einsum(
            "ptr,trk->ptk", r.reshape(r.shape[0], num, rank), a, precision=HIGHEST
        ).reshape(r.shape[0], num * k_in)
        u, sig, vt = thin_svd(core)
        u = jnp.matmul(q, u, precision=HIGHEST)
        shape = (d, num * k_in)
    else:
        num, m, n = x.shape
        k_in = n
        u, sig, vt = thin_svd(jnp.moveaxis(x, 0, 1).reshape(m, num * n))
        shape = (m, num * n)
    occupied = sig > rank_tolerance(sig[:1], shape, sig.dtype)
    sv = jnp.where(occupied[:, None], sig[:, None] * vt, jnp.zeros((), vt.dtype))
    s = jnp.moveaxis(sv.reshape(sv.shape[0], num, k_in), 1, 0)
    return u, s, occupied


# --------------------------------------------------------------------------------------
# TIES over a pool of arrays (KnOTS masking_ops semantics)
# --------------------------------------------------------------------------------------


def knots_ties_pool(xs: list[jax.Array], density: Any, num_entries: Any = None) -> list[jax.Array]:
    r"""TIES-merge a pool of ``[T, ...]`` arrays, trimming over the whole pool per task.

    Trim: per task keep :math:`|x| \ge` the :math:`(k+1)`-th largest magnitude of the
    pool, :math:`k = \lfloor \rho N\rfloor` (capped at :math:`N`), found exactly by
    :func:`mergetheory.merge.magnitude_threshold`. The ``+1`` is the official
    rule: ``kthvalue(N - k)`` with ``>=`` keeps :math:`k + 1` entries (TIES' and KnOTS'
    ``topk_values_mask``; PEFT keeps exactly :math:`k`). Elect:
    :math:`\gamma = \operatorname{sgn}\sum_t\hat x_t`, zeros set to the sign of the pool's
    :math:`\sum\gamma`. Merge: mean of the agreeing non-zero entries. Elect and merge are
    :mod:`mergetheory.merge.primitives` with the official options
    (``zero_sign="majority"`` over the whole pool, ``aggregate="mean"``).

    Args:
      xs: list of ``[T, ...]`` arrays (one pool).
      density: fraction kept (traceable).
      num_entries: ``N``, the number of entries per task that count (traceable); None
        means all of them. KnOTS passes the entries of the occupied rows only, so that
        the zero rows of dropped singular components do not inflate ``k`` (the official
        code removes those rows).

    Returns:
      List of merged arrays (task axis removed), in ``xs``'s dtypes.
    """
    if num_entries is None:
        n_all = sum(x[0].size for x in xs)
        k = num_kept(density, n_all)
        n_eff = jnp.asarray(n_all, jnp.int32)
    else:
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 under x64
        n_eff = jnp.asarray(num_entries).astype(jnp.int32)
        k = jnp.floor(jnp.asarray(density).astype(dtype) * n_eff.astype(dtype)).astype(jnp.int32)
    # the code's rule: kthvalue(N - k) with ">=" keeps k + 1 entries (capped at N)
    thr = magnitude_threshold(xs, jnp.minimum(k + 1, n_eff))
    return elect_and_merge(
        [trim_parts(x, thr) for x in xs],
        None,
        jnp.asarray(1.0),
        zero_sign="majority",
        majority_scope="global",
    )


# --------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------


def _knots(
    task_vectors: Any,
    key: Key | None,
    density: Any,
    dare_density: Any,
    scale: Any,
    trim_scope: str,
) -> Merged:
    leaves, treedef = jtu.tree_flatten(task_vectors, is_leaf=is_lora_factors)
    # leaf i draws from fold_in(key, i) (or key's own leaves: per-leaf keys)
    keys = (
        [None] * len(leaves)
        if key is None
        else leaf_key_list(key, task_vectors, is_leaf=is_lora_factors)
    )

    def dare(s: jax.Array, k: Key | None) -> jax.Array:
        if k is None:
            return s
        return dare_rescale(s, dare_keep_mask(k, s.shape, dare_density), dare_density)

    # pools of (leaf index, layer index or None, basis or None, coordinates, entries counted)
    matrices, others = [], []
    for i, (leaf, k) in enumerate(zip(leaves, keys, strict=True)):
        if is_lora_factors(leaf) and leaf.B.ndim == 4:  # stacked: one basis per layer
            layer_keys = jr.split(k, leaf.B.shape[0]) if k is not None else None
            for layer in range(leaf.B.shape[0]):
                f = leaf._replace(B=leaf.B[layer], A=leaf.A[layer])
                u, s, occ = knots_coordinates(f)
                kk = layer_keys[layer] if layer_keys is not None else None
                matrices.append((i, layer, u, dare(s, kk), jnp.sum(occ) * s.shape[-1]))
        elif is_lora_factors(leaf) or leaf.ndim == 3:
            u, s, occ = knots_coordinates(leaf)
            matrices.append((i, None, u, dare(s, k), jnp.sum(occ) * s.shape[-1]))
        else:
            others.append((i, None, None, dare(leaf, k), None))

    merged: dict[int, Any] = {}
    for pool in (matrices, others):
        if not pool:
            continue
        groups = [pool] if trim_scope == "global" else [[item] for item in pool]
        for group in groups:
            sizes = [n for *_, n in group]
            num_entries = None if sizes[0] is None else sum(sizes[1:], sizes[0])
            results = knots_ties_pool([c for *_, c, _ in group], density, num_entries)
            for (i, layer, u, *_), res in zip(group, results, strict=True):
                out = res if u is None else jnp.matmul(u, res, precision=HIGHEST)
                out = jnp.asarray(scale).astype(out.dtype) * out
                if layer is None:
                    merged[i] = out
                else:
                    merged.setdefault(i, {})[layer] = out
    outs = []
    for i, leaf in enumerate(leaves):
        m = merged[i]
        if isinstance(m, dict):
            m = jnp.stack([m[layer] for layer in range(len(m))])
        dtype = leaf.B.dtype if is_lora_factors(leaf) else leaf.dtype
        outs.append(m.astype(dtype))
    return jtu.tree_unflatten(treedef, outs)


_knots_jit = jax.jit(_knots, static_argnames=("trim_scope",))


@checked(
    densities=("density",), choices={"trim_scope": _TRIM_SCOPES}, validate=check_matrix_task_vectors
)
def knots(
    task_vectors: TaskVectors,
    key: Key,
    *,
    density: Any = 0.2,
    scale: Any = 1.0,
    trim_scope: Literal["global", "tensor"] = "global",
) -> Merged:
    r"""KnOTS-TIES: TIES on the per-task coordinates in the shared SVD basis.

    .. math::

       \Delta = \alpha\, U\,\operatorname{TIES}_\rho(s_1, \dots, s_T),\qquad
       [\Delta_1\mid\dots\mid\Delta_T] = U\operatorname{diag}(\sigma)V^\top,\
       s_t = \operatorname{diag}(\sigma)V_t^\top .

    See the module docstring for the TIES semantics, non-2-D leaves and LoRA factors.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (or :class:`LoraFactors`).
      key: unused (deterministic operator).
      density: TIES top-k fraction kept (traceable; KnOTS ``topK = 20`` -> 0.2).
      scale: :math:`\alpha`, applied to the merged update (traceable; the KnOTS configs
        search it, e.g. 0.6).
      trim_scope: static, ``"global"`` (rank over all 2-D leaves at once, as the code) or
        ``"tensor"`` (per leaf).

    Returns:
      The merged update (same pytree without the task axis; dense for LoRA leaves).

    Reference: Stoica et al., ICLR 2025 (``stoica2025knots``).
    """
    del key
    return _knots_jit(task_vectors, None, density, 1.0, scale, trim_scope)


@checked(
    densities=("density", "trim_density"),
    choices={"trim_scope": _TRIM_SCOPES},
    validate=check_matrix_task_vectors,
)
def knots_dare_ties(
    task_vectors: TaskVectors,
    key: Key,
    *,
    density: Any = 0.9,
    trim_density: Any = 1.0,
    scale: Any = 1.0,
    trim_scope: Literal["global", "tensor"] = "global",
) -> Merged:
    r"""KnOTS-DARE-TIES: DARE on the coordinates :math:`s_t`, then TIES (see :func:`knots`).

    Each coordinate is kept with probability ``density`` and rescaled by ``1 / density``
    (leaf ``i`` draws from ``fold_in(key, i)``; stacked LoRA layers split that key), then
    TIES keeps the top ``trim_density`` fraction (1.0: no trimming, as the KnOTS configs).

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (or :class:`LoraFactors`).
      key: PRNG key for the DARE masks, or a pytree of per-leaf keys with the task
        vectors' structure (:func:`mergetheory.merge.leaf_key_list`).
      density: DARE keep probability (traceable; KnOTS ``dare_pruning_coeffs = 0.1``
        -> 0.9).
      trim_density: TIES top-k fraction kept after DARE (traceable).
      scale: :math:`\alpha` (traceable; 0.7 in the KnOTS ViT-B/32 config).
      trim_scope: static, ``"global"`` or ``"tensor"``.

    Returns:
      The merged update.

    Reference: Stoica et al., ICLR 2025 (``stoica2025knots``).
    """
    if key is None:
        raise ValueError("knots_dare_ties: a PRNG key is required (keys are never defaulted)")
    return _knots_jit(task_vectors, key, trim_density, density, scale, trim_scope)
