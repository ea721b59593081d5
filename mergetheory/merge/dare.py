r"""DARE: drop and rescale, then a linear merge (``dare_linear``) or TIES (``dare_ties``).

DARE (Yu et al., ICML 2024, arXiv 2311.03099) sparsifies each task
vector at random and rescales the survivors so that the expectation is unchanged:

.. math::
   m_t \sim \mathrm{Bernoulli}(\rho)^{\otimes n}, \qquad
   \tilde\tau_t = \frac{m_t \odot \tau_t}{\rho}, \qquad
   \mathbb E[\tilde\tau_t] = \tau_t, \quad
   \mathrm{Var}[\tilde\tau_{t,i}] = \tau_{t,i}^2 \frac{1 - \rho}{\rho}.

``density`` :math:`\rho` is the **keep** probability (PEFT / mergekit); the paper's drop
rate is :math:`p = 1 - \rho`. The rescaling is the exact :math:`1/\rho` of the paper,
MergeLM, FusionBench and PEFT, not mergekit's L1-norm matching. Then

* ``dare_linear`` (PEFT ``dare_linear``): :math:`\Delta = \lambda \sum_t w_t \tilde\tau_t`;
* ``dare_ties`` (PEFT ``dare_ties``): elect :math:`\gamma = \operatorname{sgn}^+\sum_t
  \tilde\tau_t` on the unweighted rescaled tensors and take the disjoint mean
  :math:`\lambda \sum_{t \in A} w_t\tilde\tau_t / \max(1, |A|)`, with the same options as
  :func:`mergetheory.merge.ties`.

**Randomness.** Leaf ``i`` (in flatten order) uses the key ``fold_in(key, i)`` and one
Bernoulli draw of shape ``[T, ...]`` covers all tasks of that leaf
(:func:`mergetheory.merge.dare_keep_masks` returns exactly these masks; the bits come from
a counter-based hash of the key, :func:`mergetheory.merge.kernels.hash_uniform_bits`;
``docs/merge_kernels.md`` says why). So the same key
reproduces the merge, different keys give independent masks, and adding a leaf does not
change the others. Permuting the tasks with a fixed key does *not* permute the masks:
the operators are permutation invariant in distribution only.

For a fixed key the masks do not depend on the task vectors, so ``dare_linear`` is a
linear map of them (:math:`\mathbb E` over keys gives Task Arithmetic).

Default ``density = 0.5`` (FusionBench's sparsity ratio; the paper drops 90%,
``density = 0.1``, for LLM deltas, MergeLM's default keeps 90%).

References (``paper/refs.bib``): ``yu2024dare``; PEFT ``merge_utils.py``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .._types import Key, Merged, TaskVectors
from ._common import as_weights, checked, leaf_key_list
from .kernels import sum_parts
from .leafwise import map_leaves, propagate_nonfinite
from .primitives import AGGREGATES, ELECTIONS, ZERO_SIGNS, dare_drop_parts, elect_and_merge_array
from .primitives import dare_rescale as dare_rescale  # re-exported (home: .primitives)

__all__ = [
    "dare_linear",
    "dare_linear_array",
    "dare_rescale",
    "dare_ties",
    "dare_ties_array",
]


def dare_linear_array(
    x: jax.Array,
    key: Key | None,
    *,
    weights: Any = None,
    density: Any = 0.5,
    scale: Any = 1.0,
    keep_mask: Any = None,
) -> jax.Array:
    r"""``dare_linear`` on one array ``x`` ``[T, ...]``: :math:`\lambda\sum_t w_t m_t x_t/\rho`.

    Args:
      x: ``[T, ...]``.
      key: PRNG key for the Bernoulli masks (ignored if ``keep_mask`` is given).
      weights: optional ``[T]``.
      density: keep probability :math:`\rho`.
      scale: :math:`\lambda`.
      keep_mask: optional explicit boolean ``[T, ...]`` mask (e.g. for reference tests).
    """
    parts = dare_drop_parts(key, x, density, keep_mask)
    w = as_weights(weights, x.shape[0], x.dtype)
    return jnp.asarray(scale).astype(x.dtype) * sum_parts(parts, w)


def dare_ties_array(
    x: jax.Array,
    key: Key | None,
    *,
    weights: Any = None,
    density: Any = 0.5,
    scale: Any = 1.0,
    keep_mask: Any = None,
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
) -> jax.Array:
    """``dare_ties`` on one array ``x`` ``[T, ...]``; options as :func:`mergetheory.merge.ties`."""
    parts = dare_drop_parts(key, x, density, keep_mask)
    return elect_and_merge_array(
        parts, weights, scale, weights_before_election, election, aggregate, zero_sign
    )


@functools.partial(
    jax.jit,
    static_argnames=("use_ties", "weights_before_election", "election", "aggregate", "zero_sign"),
)
def _dare_leaf(
    x: jax.Array,
    k: Key,
    *,
    weights: jax.Array | None,
    density: jax.Array,
    scale: jax.Array,
    use_ties: bool,
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
) -> jax.Array:
    """DARE of one leaf with its key ``k``; compiled per shape.

    NaN wherever an input entry is NaN or Inf (:func:`propagate_nonfinite`, for the eager
    check on the output).
    """
    if not use_ties:
        out = dare_linear_array(x, k, weights=weights, density=density, scale=scale)
        return propagate_nonfinite(out, x)
    out = dare_ties_array(
        x,
        k,
        weights=weights,
        density=density,
        scale=scale,
        weights_before_election=weights_before_election,
        election=election,
        aggregate=aggregate,
        zero_sign=zero_sign,
    )
    return propagate_nonfinite(out, x)


def _dare_map(
    task_vectors: TaskVectors, key: Key, weights: Any, density: Any, scale: Any, **static: Any
) -> Merged:
    """:func:`_dare_leaf` over the leaves; leaf ``i`` uses ``fold_in(key, i)``
    (:func:`~._common.leaf_key_list`: or ``key``'s own leaves, per-leaf keys)."""
    return map_leaves(
        _dare_leaf,
        task_vectors,
        leaf_key_list(key, task_vectors),
        weights=weights,
        density=jnp.asarray(density),
        scale=jnp.asarray(scale),
        **static,
    )


@checked(densities=("density",), screen_output=True)
def dare_linear(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Any = None,
    density: Any = 0.5,
    scale: Any = 1.0,
) -> Merged:
    r"""DARE then a weighted sum: :math:`\Delta = \lambda \sum_t w_t\, m_t \odot \tau_t / \rho`.

    PEFT ``dare_linear`` semantics (see the module docstring for the masks and keys).
    Unbiased: :math:`\mathbb E_{\text{key}}\Delta = \lambda\sum_t w_t\tau_t`.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: PRNG key (leaf ``i`` uses ``fold_in(key, i)``), or a pytree of per-leaf keys
        with the task vectors' structure (:func:`mergetheory.merge.leaf_key_list`).
      weights: optional ``[T]`` weights (default all 1).
      density: keep probability :math:`\rho \in (0, 1]` (traceable).
      scale: :math:`\lambda` (traceable).

    Returns:
      The merged pytree (dtypes preserved).
    """
    return _dare_map(task_vectors, key, weights, density, scale, use_ties=False)


@checked(
    densities=("density",),
    choices={"election": ELECTIONS, "aggregate": AGGREGATES, "zero_sign": ZERO_SIGNS},
    screen_output=True,
)
def dare_ties(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Any = None,
    density: Any = 0.5,
    scale: Any = 1.0,
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
) -> Merged:
    r"""DARE then TIES' elect + disjoint merge (PEFT ``dare_ties``).

    .. math::
       \tilde\tau_t = m_t \odot \tau_t / \rho, \quad
       \gamma = \operatorname{sgn}^+\Big(\sum_t \tilde\tau_t\Big), \quad
       \Delta = \lambda \frac{\sum_{t \in A} w_t \tilde\tau_t}{\max(1, |A|)},

    :math:`A = \{t : \tilde\tau_t\gamma > 0\}`. The election and aggregation options are
    those of :func:`mergetheory.merge.ties` (all static).

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: PRNG key (leaf ``i`` uses ``fold_in(key, i)``), or a pytree of per-leaf keys
        with the task vectors' structure (:func:`mergetheory.merge.leaf_key_list`).
      weights: optional ``[T]`` weights (default all 1).
      density: keep probability :math:`\rho \in (0, 1]` (traceable).
      scale: :math:`\lambda` (traceable).
      weights_before_election, election, aggregate, zero_sign: see
        :func:`mergetheory.merge.ties` (``zero_sign="majority"`` is taken per tensor).

    Returns:
      The merged pytree (dtypes preserved).
    """
    return _dare_map(
        task_vectors,
        key,
        weights,
        density,
        scale,
        use_ties=True,
        weights_before_election=bool(weights_before_election),
        election=election,
        aggregate=aggregate,
        zero_sign=zero_sign,
    )
