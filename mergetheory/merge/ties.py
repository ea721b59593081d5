r"""TIES-Merging and magnitude pruning (trim, elect, disjoint merge).

TIES-Merging (Yadav et al., NeurIPS 2023, arXiv 2306.01708), per
tensor, for task vectors :math:`\tau_1, \dots, \tau_T` with optional weights :math:`w_t`:

1. **Trim.** :math:`\hat\tau_t = \tau_t \odot \mathbb 1[|\tau_t| \ge \theta_t]`, keeping the
   :math:`k = \lfloor \rho\, n \rfloor` largest magnitudes of each task's tensor
   (:math:`\rho` = ``density``, PEFT's rule; entries tied at the threshold are all kept,
   see :mod:`mergetheory.merge.topk`).
2. **Elect.** :math:`\gamma = \operatorname{sgn}^+\!\big(\sum_t \hat\tau_t\big)`, the sign
   with the larger total mass, with :math:`\operatorname{sgn}^+(0) = +1`.
3. **Disjoint merge.** With the agreeing set
   :math:`A = \{t : \hat\tau_t \ne 0,\ \operatorname{sgn}\hat\tau_t = \gamma\}`
   (pruned zeros never agree),

   .. math::
      \Delta = \lambda\, \frac{\sum_{t \in A} w_t \hat\tau_t}{\max(1, |A|)} .

With all :math:`w_t = 1` this is the paper's "dis-mean" (Algorithm 1) and exactly PEFT's
``ties(..., majority_sign_method="total")``; with weights it is PEFT's weighted sum divided
by the *count* of agreeing entries (``disjoint_merge``).

Every choice where the reference implementations differ is an explicit option:

* ``trim="tensor"`` (PEFT, mergekit) or ``"global"``: the official code flattens the whole
  model, so :math:`\theta_t` is one threshold per task over all leaves.
* ``weights_before_election``: ``False`` elects on the unweighted
  :math:`\sum_t \hat\tau_t` (paper Algorithm 1, PEFT); ``True`` elects on
  :math:`\sum_t w_t \hat\tau_t` (mergekit; a user measured < 3% of parameters changing,
  mergekit issue #474).
* ``election="mass"`` (:math:`\sum_t \hat\tau_t`) or ``"count"``
  (:math:`\sum_t \operatorname{sgn}\hat\tau_t`: PEFT ``"frequency"``, mergekit
  ``consensus_method="count"``).
* ``aggregate``: ``"mean"`` (above), ``"sum"`` (official "dis-sum", FusionBench's default
  with :math:`\lambda = 0.3`), ``"weighted_mean"``
  (:math:`\sum_{A} w_t\hat\tau_t / \sum_{A} w_t`, mergekit ``normalize=True``, divisor
  set to 1 where :math:`|\sum_A w_t| < 10^{-8}` as mergekit does) or ``"max"`` (official
  "dis-max": :math:`\gamma \max_{t\in A} |w_t \hat\tau_t|`).
* ``zero_sign``: ``"positive"`` (:math:`\operatorname{sgn}^+(0) = +1`: PEFT, mergekit) or
  ``"majority"`` (official ``resolve_zero_signs``: a zero sum takes the majority elected
  sign of the trim scope, :math:`\operatorname{sgn}^+\sum_p \operatorname{sgn}(S_p)`).
  They differ only where nonzero entries cancel exactly.

* ``keep_rule``: ``"peft"`` keeps :math:`k = \lfloor\rho n\rfloor` entries (PEFT,
  mergekit, the paper's "top-k%"); ``"official"`` keeps :math:`\min(k + 1, n)`, which is
  what the official code's ``topk_values_mask`` does: its threshold is
  ``kthvalue(n - k)``, the :math:`(n-k)`-th *smallest* magnitude, and ``>=`` keeps it too
  (copied by FusionBench and others).

Not implemented: the official code's "normfrac" / "normmass" elections and std-based
masks. mergekit = ``weights_before_election=True, aggregate="weighted_mean"``;
official = ``trim="global", zero_sign="majority", keep_rule="official"``.

The steps are the public primitives of :mod:`mergetheory.merge.primitives`
(:func:`~mergetheory.merge.primitives.trim_parts`,
:func:`~mergetheory.merge.primitives.elect_and_merge`); cost notes are in
``docs/merge_kernels.md``.

References (``paper/refs.bib``): ``yadav2023ties``; PEFT ``merge_utils.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._types import Key, Merged, TaskVectors
from ._common import as_weights, checked
from .kernels import sum_parts
from .leafwise import map_leaves
from .primitives import (
    AGGREGATES,
    ELECTIONS,
    ZERO_SIGNS,
    elect_and_merge,
    elect_and_merge_array,
    trim_parts,
)
from .primitives import disjoint_merge as disjoint_merge  # re-exported (home: .primitives)
from .primitives import elect_sign as elect_sign
from .primitives import prune_by_threshold as prune_by_threshold
from .topk import leaf_thresholds, magnitude_threshold, num_kept

__all__ = [
    "AGGREGATES",
    "ELECTIONS",
    "KEEP_RULES",
    "TRIMS",
    "ZERO_SIGNS",
    "disjoint_merge",
    "elect_sign",
    "magnitude_prune",
    "magnitude_prune_array",
    "prune_by_threshold",
    "ties",
    "ties_array",
    "ties_kept",
    "ties_merge_thresholded",
]

TRIMS = ("tensor", "global")
KEEP_RULES = ("peft", "official")


def _trimmed_parts(x: jax.Array, density: Any) -> list[jax.Array]:
    """Per-tensor trim of ``x`` ``[T, ...]``: each task keeps its top-``density`` magnitudes."""
    return trim_parts(x, magnitude_threshold(x, num_kept(density, math.prod(x.shape[1:]))))


def ties_array(
    x: jax.Array,
    key: Key | None = None,
    *,
    weights: Any = None,
    density: Any = 0.2,
    scale: Any = 1.0,
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
) -> jax.Array:
    r"""TIES on one array ``x`` ``[T, ...]`` (per-tensor trim); see :func:`ties`.

    A plain function (no ``jit``, no value checks) for other operators to build on, e.g.
    KnOTS merging the per-task ``diag(s) V_t^T`` blocks.

    Returns:
      ``[...]`` merged array.
    """
    del key
    pruned = _trimmed_parts(x, density)
    return elect_and_merge_array(
        pruned, weights, scale, weights_before_election, election, aggregate, zero_sign
    )


def magnitude_prune_array(
    x: jax.Array,
    key: Key | None = None,
    *,
    weights: Any = None,
    density: Any = 0.2,
    scale: Any = 1.0,
) -> jax.Array:
    r"""PEFT ``magnitude_prune`` on one array: :math:`\lambda \sum_t w_t \hat\tau_t`."""
    del key
    pruned = _trimmed_parts(x, density)
    w = as_weights(weights, x.shape[0], x.dtype)
    return jnp.asarray(scale).astype(x.dtype) * sum_parts(pruned, w)


# --------------------------------------------------------------------------------------
# pytree operators
# --------------------------------------------------------------------------------------


def ties_kept(density: Any, num: int, keep_rule: str = "peft") -> jax.Array:
    r"""Entries each task keeps of ``num``: :math:`\lfloor\rho n\rfloor` (``"peft"``) or
    one more (``"official"``, capped at ``num``)."""
    k = num_kept(density, num)
    return jnp.minimum(k + 1, num) if keep_rule == "official" else k


def _kept_counts(task_vectors: TaskVectors, density: Any, trim: str, keep_rule: str) -> Any:
    sizes = [math.prod(x.shape[1:]) for x in jtu.tree_leaves(task_vectors)]
    if trim == "global":
        return ties_kept(density, sum(sizes), keep_rule)
    return [ties_kept(density, n, keep_rule) for n in sizes]


def _pruned_leaves(leaves: Sequence[jax.Array], ks: Any, trim: str) -> list[list[jax.Array]]:
    if trim == "global":
        thr = magnitude_threshold(list(leaves), ks)
        return [trim_parts(x, thr) for x in leaves]
    return [trim_parts(x, magnitude_threshold(x, k)) for x, k in zip(leaves, ks, strict=True)]


_ELECT_STATIC = ("weights_before_election", "election", "aggregate", "zero_sign")


@functools.partial(jax.jit, static_argnames=_ELECT_STATIC)
def _ties_leaf(
    x: jax.Array,
    k: jax.Array,
    thr: jax.Array | None,
    *,
    weights: jax.Array | None,
    scale: jax.Array,
    weights_before_election: bool,
    election: str,
    aggregate: str,
    zero_sign: str,
) -> jax.Array:
    """TIES of one leaf with per-tensor trim (``k`` kept per task); compiled per shape.

    ``thr``: the leaf's thresholds when known (:func:`leaf_thresholds`), else ``None``.
    """
    return ties_merge_thresholded(
        x,
        magnitude_threshold(x, k) if thr is None else thr,
        weights=weights,
        scale=scale,
        weights_before_election=weights_before_election,
        election=election,
        aggregate=aggregate,
        zero_sign=zero_sign,
    )


def ties_merge_thresholded(
    x: jax.Array,
    threshold: jax.Array,
    *,
    weights: Any = None,
    scale: Any = 1.0,
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
) -> jax.Array:
    r"""TIES of ``x`` ``[T, ...]`` given each task's trim threshold ``[T]``.

    Keeps :math:`|x_t| \ge \theta_t`, elects and merges as :func:`ties`. With
    ``zero_sign="positive"`` every step after the thresholds is elementwise, so a large
    tensor may be merged in blocks of entries once :math:`\theta_t` (the ``k``-th largest
    magnitude of task ``t``'s whole tensor, :func:`mergetheory.merge.magnitude_threshold`
    with :func:`ties_kept`) is known; the blocks then equal :func:`ties` bit for bit
    (``mergetheory merge`` does this for tensors too large to stack whole).

    Example:
      >>> x = jnp.array([[3.0, -1.0, 0.5], [2.0, 2.0, -0.4]])
      >>> ties_merge_thresholded(x, jnp.array([1.0, 2.0]))
      Array([2.5, 2. , 0. ], dtype=float32)
    """
    pruned = trim_parts(x, threshold)
    return elect_and_merge_array(
        pruned, weights, scale, weights_before_election, election, aggregate, zero_sign
    )


@functools.partial(
    jax.jit,
    static_argnames=("trim", "weights_before_election", "election", "aggregate", "zero_sign"),
)
def _ties_core(
    task_vectors: TaskVectors,
    weights: jax.Array | None,
    ks: Any,
    scale: jax.Array,
    *,
    trim: str,
    weights_before_election: bool,
    election: str,
    aggregate: str,
    zero_sign: str,
) -> Merged:
    leaves, treedef = jtu.tree_flatten(task_vectors)
    pruned = _pruned_leaves(leaves, ks, trim)
    merged = elect_and_merge(
        pruned,
        weights,
        scale,
        weights_before_election=weights_before_election,
        election=election,
        aggregate=aggregate,
        zero_sign=zero_sign,
        majority_scope=trim,
    )
    return jtu.tree_unflatten(treedef, merged)


@checked(
    densities=("density",),
    choices={
        "trim": TRIMS,
        "election": ELECTIONS,
        "aggregate": AGGREGATES,
        "zero_sign": ZERO_SIGNS,
        "keep_rule": KEEP_RULES,
    },
)
def ties(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Any = None,
    density: Any = 0.2,
    scale: Any = 1.0,
    trim: str = "tensor",
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
    keep_rule: str = "peft",
) -> Merged:
    r"""TIES-Merging: trim, elect sign, disjoint merge (see the module docstring for the maths).

    Defaults follow the paper's Algorithm 1 with per-tensor trimming: keep the top 20%
    (``density=0.2``), elect by mass, disjoint mean, :math:`\lambda = 1`. With all weights 1
    the result equals PEFT ``ties(task_tensors, weights, density, "total")`` tensor by
    tensor (tested against a NumPy transcription).

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator).
      weights: optional ``[T]`` task weights :math:`w_t` (default all 1).
      density: :math:`\rho \in (0, 1]`, fraction of entries kept (traceable; with a
        concrete value :math:`k = \lfloor \rho n \rfloor` is computed exactly as PEFT).
      scale: :math:`\lambda` (traceable).
      trim: ``"tensor"`` or ``"global"`` (static).
      weights_before_election: elect on :math:`\sum_t w_t \hat\tau_t` (mergekit; static).
      election: ``"mass"`` or ``"count"`` (static).
      aggregate: ``"mean"``, ``"sum"``, ``"weighted_mean"`` or ``"max"`` (static).
      zero_sign: ``"positive"`` or ``"majority"`` (static).
      keep_rule: ``"peft"`` (:math:`\lfloor\rho n\rfloor` kept) or ``"official"``
        (one more, as the official code's ``kthvalue`` threshold; static).

    Returns:
      The merged pytree (dtypes preserved).

    Example:
      >>> tv = {"w": jnp.array([[3.0, -1.0, 0.5], [2.0, 2.0, -0.4]])}
      >>> ties(tv, jax.random.key(0), density=2 / 3)["w"]
      Array([2.5, 2. , 0. ], dtype=float32)
    """
    del key
    ks = _kept_counts(task_vectors, density, trim, keep_rule)
    if trim == "tensor":  # per-leaf maths: one compiled kernel per distinct leaf shape
        return map_leaves(
            _ties_leaf,
            task_vectors,
            ks,
            leaf_thresholds(jtu.tree_leaves(task_vectors), ks),
            weights=weights,
            scale=jnp.asarray(scale),
            weights_before_election=bool(weights_before_election),
            election=election,
            aggregate=aggregate,
            zero_sign=zero_sign,
        )
    return _ties_core(
        task_vectors,
        weights,
        ks,
        jnp.asarray(scale),
        trim=trim,
        weights_before_election=bool(weights_before_election),
        election=election,
        aggregate=aggregate,
        zero_sign=zero_sign,
    )


@jax.jit
def _magnitude_prune_leaf(
    x: jax.Array,
    k: jax.Array,
    thr: jax.Array | None,
    *,
    weights: jax.Array | None,
    scale: jax.Array,
) -> jax.Array:
    """Magnitude pruning of one leaf with per-tensor trim; compiled per shape."""
    pruned = trim_parts(x, magnitude_threshold(x, k) if thr is None else thr)
    return scale.astype(x.dtype) * sum_parts(pruned, as_weights(weights, x.shape[0], x.dtype))


@functools.partial(jax.jit, static_argnames=("trim",))
def _magnitude_prune_core(
    task_vectors: TaskVectors, weights: jax.Array | None, ks: Any, scale: jax.Array, *, trim: str
) -> Merged:
    leaves, treedef = jtu.tree_flatten(task_vectors)
    num = leaves[0].shape[0]
    pruned = _pruned_leaves(leaves, ks, trim)
    out = [
        scale.astype(p[0].dtype) * sum_parts(p, as_weights(weights, num, p[0].dtype))
        for p in pruned
    ]
    return jtu.tree_unflatten(treedef, out)


@checked(densities=("density",), choices={"trim": TRIMS, "keep_rule": KEEP_RULES})
def magnitude_prune(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Any = None,
    density: Any = 0.2,
    scale: Any = 1.0,
    trim: str = "tensor",
    keep_rule: str = "peft",
) -> Merged:
    r"""Magnitude pruning then a weighted sum (PEFT ``magnitude_prune``).

    .. math::
       \Delta = \lambda \sum_t w_t\, \tau_t \odot \mathbb 1[|\tau_t| \ge \theta_t],

    with :math:`\theta_t` the :math:`\lfloor\rho n\rfloor`-th largest magnitude of task
    :math:`t`'s tensor (or of its whole model with ``trim="global"``). No sign election,
    no rescaling (contrast :func:`mergetheory.merge.rht`).

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator).
      weights: optional ``[T]`` weights (default all 1).
      density: fraction kept, in ``(0, 1]`` (traceable).
      scale: :math:`\lambda` (traceable).
      trim: ``"tensor"`` or ``"global"`` (static).
      keep_rule: ``"peft"`` or ``"official"``, see :func:`ties` (static).

    Returns:
      The merged pytree (dtypes preserved).
    """
    del key
    ks = _kept_counts(task_vectors, density, trim, keep_rule)
    if trim == "tensor":
        thrs = leaf_thresholds(jtu.tree_leaves(task_vectors), ks)
        return map_leaves(
            _magnitude_prune_leaf,
            task_vectors,
            ks,
            thrs,
            weights=weights,
            scale=jnp.asarray(scale),
        )
    return _magnitude_prune_core(task_vectors, weights, ks, jnp.asarray(scale), trim=trim)
