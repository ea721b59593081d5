r"""Linear merges: weight averaging, Task Arithmetic and base-knowledge weighting.

All three are linear maps of the task vectors,
:math:`\Delta = \sum_t \omega_t \tau_t`, that differ only in the coefficients
:math:`\omega` (Sources S7). The task-axis reduction
is :func:`mergetheory.tree.sum_tasks` (unrolled over ``T``, docs/width_engine.md).

References (``paper/refs.bib``): ``ilharco2023editing`` (Task Arithmetic),
``rahamim2026mergeability`` (base-knowledge weighting, arXiv 2601.06672).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import tree as mtree
from .._types import Key, Merged, TaskVectors
from ._common import (
    as_weights,
    check_positive,
    check_weights,
    checked,
    is_concrete,
)
from .leafwise import map_leaves

__all__ = [
    "average",
    "base_knowledge_weighted",
    "base_knowledge_weights",
    "task_arithmetic",
]


# --------------------------------------------------------------------------------------
# average
# --------------------------------------------------------------------------------------


@jax.jit
def _average_leaf(x: jax.Array, *, weights: jax.Array | None) -> jax.Array:
    """Weighted mean of one leaf over its task axis; compiled per leaf shape."""
    num = x.shape[0]
    if weights is None:
        return mtree.sum_tasks(x) / num
    w = as_weights(weights, num, x.dtype)
    return mtree.sum_tasks(x, w) / jnp.sum(w)


@checked(screen_output=True)  # a NaN / Inf entry of any task reaches the mean
def average(task_vectors: TaskVectors, key: Key, *, weights: Any = None) -> Merged:
    r"""Weight averaging: :math:`\Delta = \sum_t w_t \tau_t / \sum_t w_t` (the mean by default).

    On task vectors this is the update of the averaged model,
    :math:`\frac1T\sum_t\theta_t - \theta_0`; it equals Task Arithmetic with
    :math:`\lambda = 1/T`. Linear and permutation invariant; the
    identity at ``T = 1``.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator; kept for the common signature).
      weights: optional ``[T]`` weights (normalized by their sum, which must not be 0).

    Returns:
      The merged pytree (leaves ``[...]``, dtypes preserved).

    Example:
      >>> tv = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
      >>> average(tv, jax.random.key(0))["w"]
      Array([2., 4.], dtype=float32)
    """
    del key
    if weights is not None and is_concrete(weights) and float(np.sum(weights)) == 0.0:
        raise ValueError("average: weights sum to 0; they cannot be normalized")
    return map_leaves(_average_leaf, task_vectors, weights=weights)


# --------------------------------------------------------------------------------------
# task arithmetic
# --------------------------------------------------------------------------------------


@jax.jit
def _task_arithmetic_leaf(
    x: jax.Array, *, weights: jax.Array | None, scale: jax.Array
) -> jax.Array:
    r""":math:`\lambda \sum_t w_t x_t` of one leaf; compiled per leaf shape."""
    return scale.astype(x.dtype) * mtree.sum_tasks(x, as_weights(weights, x.shape[0], x.dtype))


@checked(screen_output=True)  # a NaN / Inf entry reaches the sum (0 * Inf is NaN)
def task_arithmetic(
    task_vectors: TaskVectors, key: Key, *, weights: Any = None, scale: Any = 1.0
) -> Merged:
    r"""Task Arithmetic (Ilharco et al., ICLR 2023): :math:`\Delta = \lambda \sum_t w_t \tau_t`.

    The merged model is :math:`\theta_0 + \Delta`. With ``weights=None`` all
    :math:`w_t = 1` (the paper's sum of task vectors); per-task weights follow mergekit's
    ``task_arithmetic`` (``normalize = False``). Reference scales: FusionBench
    :math:`\lambda = 0.3`, the task_vectors README 0.8.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator).
      weights: optional ``[T]`` per-task weights (any sign).
      scale: :math:`\lambda` (traceable).

    Returns:
      The merged pytree (dtypes preserved).

    Example:
      >>> tv = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
      >>> task_arithmetic(tv, jax.random.key(0), scale=0.5)["w"]
      Array([2., 4.], dtype=float32)
    """
    del key
    return map_leaves(
        _task_arithmetic_leaf, task_vectors, weights=weights, scale=jnp.asarray(scale)
    )


# --------------------------------------------------------------------------------------
# base-knowledge weighting (reconstruction of Rahamim et al. 2026)
# --------------------------------------------------------------------------------------


def base_knowledge_weights(
    base_accuracy: Any, *, temperature: Any = 0.1, weights: Any = None
) -> jax.Array:
    r"""Per-expert coefficients :math:`\omega = \mathrm{softmax}((1 - a)/\tau)`.

    :math:`a_t \in [0, 1]` is the base model's accuracy on task :math:`t`: experts whose
    task the base model knows least get the largest weight. Optional prior ``weights``
    multiply the softmax, :math:`\omega_t = w_t\,\mathrm{softmax}_t((1-a)/\tau)` (no
    renormalization). As :math:`\tau \to \infty`, :math:`\omega \to 1/T` (the mean).

    Args:
      base_accuracy: ``[T]`` accuracies of the base model.
      temperature: :math:`\tau > 0` (traceable).
      weights: optional ``[T]`` prior multipliers.

    Returns:
      ``[T]`` coefficients (float dtype of ``base_accuracy``, at least float32).
    """
    acc = jnp.asarray(base_accuracy)
    if not jnp.issubdtype(acc.dtype, jnp.floating):
        acc = acc.astype(jnp.float32)
    tau = jnp.asarray(temperature).astype(acc.dtype)
    omega = jax.nn.softmax((1.0 - acc) / tau)
    if weights is not None:
        omega = omega * jnp.asarray(weights).astype(acc.dtype)
    return omega


_base_knowledge_weights_jit = jax.jit(base_knowledge_weights)


@checked()
def base_knowledge_weighted(
    task_vectors: TaskVectors,
    key: Key,
    *,
    base_accuracy: Any,
    temperature: Any = 0.1,
    weights: Any = None,
    scale: Any = 1.0,
) -> Merged:
    r"""Base-knowledge-weighted linear merge (**reconstruction** of Rahamim et al. 2026).

    "Will it Merge? On The Causes of Model Mergeability" (arXiv 2601.06672) weights each
    adapter inversely to the base model's accuracy on its task, with a softmax over
    :math:`1 - \mathrm{Acc}` at temperature :math:`\tau`, against a mean-merge baseline
    (Sources S7). The exact form below is inferred from that description; the
    paper's :math:`\tau`, and whether the weights multiply a KnOTS or a plain linear merge,
    are not available. Here they multiply a linear merge:

    .. math::
       \omega_t = w_t\,\frac{\exp((1 - a_t)/\tau)}{\sum_s \exp((1 - a_s)/\tau)}, \qquad
       \Delta = \lambda \sum_t \omega_t \tau_t .

    The default :math:`\tau = 0.1` is this toolkit's choice (accuracy gaps of 0.1 change a
    weight by a factor :math:`e`). Linear in the task vectors, permutation invariant (with
    ``base_accuracy`` and ``weights`` permuted alike), the identity at ``T = 1``.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator).
      base_accuracy: required ``[T]`` base-model accuracies in ``[0, 1]``.
      temperature: :math:`\tau > 0` (traceable).
      weights: optional ``[T]`` prior multipliers :math:`w_t`.
      scale: :math:`\lambda` (traceable).

    Returns:
      The merged pytree (dtypes preserved).
    """
    del key
    check_weights(base_accuracy, mtree.num_tasks(task_vectors), name="base_accuracy")
    if is_concrete(base_accuracy):
        acc = np.asarray(base_accuracy, dtype=np.float64)
        if np.any(acc < 0) or np.any(acc > 1):
            raise ValueError(f"base_accuracy must lie in [0, 1], got {acc}")
    check_positive(temperature, name="temperature")
    omega = _base_knowledge_weights_jit(
        jnp.asarray(base_accuracy), temperature=jnp.asarray(temperature), weights=weights
    )  # then Task Arithmetic with omega, leaf by leaf
    return map_leaves(_task_arithmetic_leaf, task_vectors, weights=omega, scale=jnp.asarray(scale))
