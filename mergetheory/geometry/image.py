r"""The image of a merge operator as a finite point set.

Example:
  >>> image = operator_image("task_arithmetic", tv, key,
  ...                        grid={"scaling": jnp.linspace(0.1, 1.0, 10)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._types import Key, TaskVectors
from ..tree import validate_task_vectors
from .generated import PointSet

__all__ = ["operator_image"]


def _flat_merged(merged: Any) -> jax.Array:
    leaves = jtu.tree_leaves(merged)
    return jnp.concatenate([jnp.reshape(x, (-1,)) for x in leaves])


def operator_image(
    operator: str | Callable[..., Any],
    task_vectors: TaskVectors,
    key: Key,
    *,
    grid: Mapping[str, Any] | None = None,
    num_keys: int = 1,
    hparams: Mapping[str, Any] | None = None,
    keep_points: bool = True,
    chunk_size: int | None = None,
) -> PointSet:
    r"""The image of a merge operator over a grid of hyperparameters and keys.

    .. math:: S = \{\, M(\tau_1..\tau_T;\ k_j,\ \theta) : \theta \in \Theta,\ j \le K \,\}

    for :math:`\Theta` the Cartesian product of the ``grid`` values. ``S`` is a finite set,
    so :math:`w(S) = w(\mathrm{conv}\,S)` and the fast estimator applies to its Gram matrix.

    Args:
      operator: a name in ``mergetheory.merge.MERGE_OPERATORS`` (imported lazily; its
        ``default_hparams`` are the starting point) or a function
        ``fn(task_vectors, key, **hparams) -> merged``.
      task_vectors: pytree of ``[T, ...]`` leaves (or a flat ``[T, D]`` array).
      key: PRNG key; split into ``num_keys`` keys shared by all grid points.
      grid: ``{name: values}``; each ``values`` has a leading grid axis (``[K]`` scalars,
        or e.g. ``[K, T]`` for ``weights``). Values are passed traced (continuous
        hyperparameters only; static ones go in ``hparams``).
      num_keys: keys per grid point (use > 1 for stochastic operators such as DARE).
      hparams: fixed keyword arguments (override the registry defaults).
      keep_points: keep the ``[P, D]`` flat outputs (for the naive estimator).
      chunk_size: evaluate this many (grid point, key) pairs at a time (memory bound);
        default all at once.

    Returns:
      A :class:`PointSet` with ``P = prod(len(values)) * num_keys`` points, ordered grid
      point major, key minor.

    Example:
      >>> image = operator_image("task_arithmetic", tv, key,
      ...                        grid={"scaling": jnp.linspace(0.1, 1.0, 10)})
    """
    if isinstance(operator, str):
        from ..merge import MERGE_OPERATORS  # lazy: merge is a sibling layer

        if operator not in MERGE_OPERATORS:
            raise ValueError(
                f"unknown merge operator {operator!r}; known: {sorted(MERGE_OPERATORS)}"
            )
        op = MERGE_OPERATORS[operator]
        fn = op.fn
        base = dict(op.default_hparams)
    elif callable(operator):
        fn = operator
        base = {}
    else:
        raise TypeError(f"operator must be a registry name or a callable, got {type(operator)}")
    base.update(dict(hparams or {}))
    if isinstance(task_vectors, np.ndarray):
        task_vectors = jnp.asarray(task_vectors)
    validate_task_vectors(task_vectors)
    if not isinstance(num_keys, int | np.integer) or num_keys < 1:
        raise ValueError(f"num_keys must be an int >= 1, got {num_keys!r}")

    grid = dict(grid or {})
    names = list(grid)
    values = [jnp.asarray(grid[k]) for k in names]
    for k, v in zip(names, values, strict=True):
        if v.ndim == 0 or v.shape[0] == 0:
            raise ValueError(f"grid[{k!r}] needs a non-empty leading grid axis, got {v.shape}")
    for k in names:
        base.pop(k, None)  # grid values override fixed / default hyperparameters
    sizes = [int(v.shape[0]) for v in values]
    num_grid = int(np.prod(sizes)) if sizes else 1
    num_points = num_grid * num_keys
    # point p = (grid point p // num_keys, key p % num_keys); grid points in C order
    grid_idx = np.repeat(np.arange(num_grid), num_keys)
    index = np.unravel_index(grid_idx, sizes) if sizes else ()
    batch = num_points if chunk_size is None else max(1, min(int(chunk_size), num_points))

    def one(args):
        hp, k = args
        return _flat_merged(fn(task_vectors, k, **base, **hp))

    @jax.jit
    def image(values, key):  # one compiled program instead of many eager ops
        point_hp = {k: v[index[i]] for i, (k, v) in enumerate(zip(names, values, strict=True))}
        point_keys = jnp.tile(jr.split(key, num_keys), num_grid)
        return jax.lax.map(one, (point_hp, point_keys), batch_size=batch)

    flat = image(values, key)
    return PointSet.from_task_vectors(flat, keep_points=keep_points)
