r"""Run a per-leaf merge kernel over a pytree: one compiled program per distinct leaf shape.

An operator whose maths is per tensor (TIES with ``trim="tensor"``, magnitude pruning,
DARE, RHT, the linear merges) need not be one ``jax.jit`` over the whole pytree: XLA
compiles such a program leaf by leaf, so its compile time grows with the number of leaves
(about 0.5 s per leaf for TIES; a GPT-2-small tree has 148 leaves but 9 distinct shapes).
:func:`map_leaves` calls a *jitted per-leaf kernel* once per leaf instead; ``jax.jit``
caches the compiled kernel by the leaves' shapes and dtypes (and the static options), so a
tree compiles one program per distinct ``(shape, dtype)`` and every later call with new
continuous hyperparameters reuses them.

The map is pure: under an outer ``jax.jit`` / ``vmap`` the kernel calls are traced like
any nested ``jit`` (traced once per shape and inlined by XLA into the caller's program).

Example:
  >>> kernel = jax.jit(lambda x, scale: scale * x.sum(0))
  >>> tv = {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 3))}
  >>> map_leaves(kernel, tv, scale=0.5)["a"]
  Array([1., 1., 1.], dtype=float32)

Reference: ``docs/merge_kernels.md`` (compile times before and after).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .. import tree as mtree
from .._types import Merged, TaskVectors

__all__ = ["map_leaves", "propagate_nonfinite"]


def propagate_nonfinite(out: jax.Array, x: jax.Array) -> jax.Array:
    r"""``out`` with NaN wherever an entry of ``x`` ``[T, ...]`` is NaN or Inf in any task.

    :math:`\mathrm{out} - \sum_t |x_t| \cdot 0`: the subtracted term is :math:`+0` where
    every :math:`x_t` is finite (and ``a - (+0)`` is ``a`` bit for bit, signed zeros
    included), NaN otherwise. A kernel that drops entries (DARE's masks, TIES' election)
    adds it so that its output can stand in for its input in the eager NaN / Inf check
    (:func:`mergetheory.tree.check_finite_via`, one pass over the output instead of the
    ``T`` times larger input); XLA fuses it into the kernel's pass over ``x``.

    Example:
      >>> x = jnp.array([[1.0, jnp.inf], [2.0, 3.0]])
      >>> propagate_nonfinite(jnp.array([-0.0, 5.0]), x)
      Array([-0., nan], dtype=float32)
    """
    zero = mtree.sum_tasks(jnp.abs(x) * jnp.zeros((), x.dtype))
    return out - zero.astype(out.dtype)


def map_leaves(
    kernel: Callable[..., Any],
    task_vectors: TaskVectors,
    *per_leaf: Sequence[Any],
    **shared: Any,
) -> Merged:
    r"""``kernel(x_i, per_leaf[0][i], ..., **shared)`` for every leaf ``x_i``, as a pytree.

    Args:
      kernel: a jitted function of one ``[T, ...]`` leaf (its static options fixed by the
        caller through ``shared``); compiled once per distinct leaf shape and dtype.
      task_vectors: pytree of ``[T, ...]`` leaves.
      *per_leaf: sequences with one entry per leaf, in flatten order (e.g. the number of
        entries kept by each leaf's top-k).
      **shared: arguments passed to every call (weights, traced hyperparameters, static
        options).

    Returns:
      The pytree of the kernel's outputs (same structure as ``task_vectors``).
    """
    leaves, treedef = jtu.tree_flatten(task_vectors)
    for seq in per_leaf:
        if len(seq) != len(leaves):
            raise ValueError(
                f"map_leaves: a per-leaf argument has {len(seq)} entries for {len(leaves)} leaves"
            )
    out = [kernel(x, *(seq[i] for seq in per_leaf), **shared) for i, x in enumerate(leaves)]
    return jtu.tree_unflatten(treedef, out)
