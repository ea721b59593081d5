r"""LoRA experts: merge the A and B factors separately (as the seed code does) or merge B A.

A set of ``T`` LoRA experts is a pytree of :class:`mergetheory.lora.LoraFactors`
``(B [T, d, r], A [T, r, k], scaling)`` with dense updates
:math:`\Delta W_t = s_t B_t A_t` (PEFT layout, see :mod:`mergetheory.lora`).

* :func:`lora_factorwise` merges the factors independently,
  :math:`B_m = \mathrm{merge}(s_1 B_1, \dots, s_T B_T)`,
  :math:`A_m = \mathrm{merge}(A_1, \dots, A_T)`, and the model receives :math:`B_m A_m`.
  This is what the seed repository of arXiv 2505.21226 does for RHT and every other
  operator: it merges each tensor of the adapter state dict on its own (Sources S6). It
  is **not** linear in :math:`\Delta W`: even for Task Arithmetic
  :math:`B_m A_m = (\sum_t B_t)(\sum_t A_t) \ne \sum_t B_t A_t`.
  A scalar ``scaling`` is kept outside the merge (as a PEFT config value); a per-expert
  ``[T]`` scaling is folded into ``B`` first.
* :func:`lora_deltawise` merges the dense products :math:`\Delta W_t` themselves
  (:func:`mergetheory.lora.densify`).

:func:`lora_delta` turns merged factors into the dense update, so the gap between the two
paths is ``lora_delta(lora_factorwise(...)) - lora_deltawise(...)``. The A and B merges
use independent keys (``jr.split(key)``), one per factor, for stochastic operators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

from .. import tree as mtree
from .._types import Key, is_lora_factors
from ..lora import LoraFactors, densify, lora_num_tasks

__all__ = ["lora_delta", "lora_deltawise", "lora_factorwise"]


def _split_factors(factors: Any) -> tuple[Any, Any, Any, Any]:
    """``(treedef, Bs, As, scalings)`` with per-expert scalings folded into ``B``."""
    lora_num_tasks(factors)  # validates shapes, T, scaling
    nodes, treedef = jtu.tree_flatten(factors, is_leaf=is_lora_factors)
    bs, as_, scalings = [], [], []
    for node in nodes:
        if node.B.ndim != 3:
            raise mtree.TaskVectorError(
                f"lora_factorwise: stacked factors B {node.B.shape} are not supported; "
                "unstack the layer axis into separate LoraFactors first"
            )
        s = jnp.asarray(node.scaling)
        if s.ndim == 1:
            bs.append(node.B * s.astype(node.B.dtype)[:, None, None])
            scalings.append(1.0)
        else:
            bs.append(node.B)
            scalings.append(node.scaling)
        as_.append(node.A)
    return treedef, bs, as_, scalings


def lora_factorwise(merge_fn: Callable[..., Any], factors: Any, key: Key, **hparams: Any) -> Any:
    r"""Merge LoRA experts factor by factor (the seed repository's behaviour).

    Args:
      merge_fn: a merge operator ``fn(task_vectors, key, **hparams)``.
      factors: pytree of :class:`mergetheory.lora.LoraFactors` (``B [T, d, r]``,
        ``A [T, r, k]``).
      key: PRNG key; the B merge uses ``jr.split(key)[0]``, the A merge ``[1]``.
      **hparams: forwarded to ``merge_fn`` (for both factors).

    Returns:
      The same pytree of :class:`~mergetheory.lora.LoraFactors` with merged ``B [d, r]``
      and ``A [r, k]`` (no task axis) and the scalar scaling.
    """
    treedef, bs, as_, scalings = _split_factors(factors)
    key_b, key_a = jr.split(key)
    merged_b = merge_fn(bs, key_b, **hparams)
    merged_a = merge_fn(as_, key_a, **hparams)
    out = [
        LoraFactors(B=b, A=a, scaling=s)
        for b, a, s in zip(merged_b, merged_a, scalings, strict=True)
    ]
    return jtu.tree_unflatten(treedef, out)


def lora_delta(merged: Any) -> Any:
    r"""Dense update :math:`s B A` of every merged (task-axis-free) :class:`LoraFactors` node.

    Args:
      merged: pytree of :class:`~mergetheory.lora.LoraFactors` with ``B [d, r]``,
        ``A [r, k]`` (e.g. the output of :func:`lora_factorwise`).

    Returns:
      The pytree with each node replaced by the ``[d, k]`` update.
    """

    def one(node: Any) -> jax.Array:
        if not is_lora_factors(node):
            raise mtree.TaskVectorError(
                f"lora_delta: expected LoraFactors nodes, got {type(node).__name__}"
            )
        if node.B.ndim != 2 or node.A.ndim != 2 or node.B.shape[1] != node.A.shape[0]:
            raise mtree.TaskVectorError(
                f"lora_delta: B {node.B.shape} and A {node.A.shape} are not merged "
                "factors B [d, r], A [r, k]"
            )
        w = jnp.matmul(node.B, node.A, precision="highest")
        return w * jnp.asarray(node.scaling).astype(w.dtype)

    return jtu.tree_map(one, merged, is_leaf=is_lora_factors)


def lora_deltawise(merge_fn: Callable[..., Any], factors: Any, key: Key, **hparams: Any) -> Any:
    r"""Merge the dense products :math:`\Delta W_t = s_t B_t A_t` instead of the factors.

    Args:
      merge_fn: a merge operator ``fn(task_vectors, key, **hparams)``.
      factors: pytree of :class:`mergetheory.lora.LoraFactors`.
      key: PRNG key, passed through.
      **hparams: forwarded to ``merge_fn``.

    Returns:
      The pytree with each node replaced by the merged ``[d, k]`` update.
    """
    return merge_fn(densify(factors), key, **hparams)
