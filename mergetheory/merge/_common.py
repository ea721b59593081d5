r"""Shared helpers of the merge operators: input checks, weights, per-leaf keys, reductions.

Every public operator is an *eager wrapper* around a jitted core:

* the wrapper checks its inputs (:func:`check_task_vectors`, :func:`check_weights`,
  :func:`check_density`, ...). Shape / structure checks always run (they need shapes only);
  value checks (NaN, range of ``density``) run only on concrete values, so the wrapper can
  itself be wrapped in ``jit`` / ``vmap`` by the caller;
* the core is a ``jax.jit`` with the shape-determining options in ``static_argnames``;
  continuous hyperparameters (``density``, ``scale``, ``temperature``) are traced arguments,
  so sweeping them neither re-traces nor re-compiles.

:func:`checked` is the one decorator that runs these checks for a public operator.
Reductions over the task axis go through :mod:`mergetheory.merge.kernels`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .. import tree as mtree
from .._types import Key, TaskVectors

__all__ = [
    "as_weights",
    "check_choice",
    "checked",
    "check_density",
    "check_positive",
    "check_task_vectors",
    "check_weights",
    "is_concrete",
    "leaf_key_list",
    "leaf_keys",
    "task_broadcast",
]


def is_concrete(x: Any) -> bool:
    """True unless ``x`` is (or contains) a JAX tracer, i.e. we are not inside a transform."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(x))


def check_task_vectors(
    task_vectors: TaskVectors, *, name: str = "task_vectors", finite: bool = True
) -> int:
    """Validate a task-vector set (see :func:`mergetheory.tree.validate_task_vectors`).

    Structure, shape and dtype checks always run; the NaN / Inf check (if ``finite``)
    runs on concrete leaves only (tracers are skipped).

    Returns:
      ``T``, the number of tasks.
    """
    return mtree.validate_task_vectors(task_vectors, name=name, finite=finite)


def check_weights(weights: Any, num_tasks: int, *, name: str = "weights") -> None:
    """Check that ``weights`` is ``None`` or a ``[T]`` vector (finite, if concrete)."""
    if weights is None:
        return
    shape = jnp.shape(weights)
    if shape != (num_tasks,):
        raise mtree.TaskVectorError(
            f"{name} has shape {shape} but the task vectors have T = {num_tasks} tasks; "
            f"expected shape ({num_tasks},)"
        )
    if is_concrete(weights):
        arr = np.asarray(weights)
        if not np.issubdtype(arr.dtype, np.number):
            raise mtree.TaskVectorError(f"{name} must be numeric, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise mtree.TaskVectorError(f"{name} contains NaN or Inf: {arr}")


def check_density(density: Any, *, name: str = "density") -> None:
    """Check ``0 < density <= 1`` for concrete values (traced values pass unchecked)."""
    if not is_concrete(density):
        return
    arr = np.asarray(density, dtype=np.float64)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not (np.isfinite(arr) and 0.0 < arr <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (fraction of entries kept), got {float(arr)}")


def check_positive(value: Any, *, name: str) -> None:
    """Check ``value > 0`` (finite) for concrete scalars."""
    if not is_concrete(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not (np.isfinite(arr) and arr > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {float(arr)}")


def check_choice(value: Any, choices: tuple[str, ...], *, name: str) -> None:
    """Check that a static string option is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def leaf_key_list(key: Any, tree: Any, is_leaf: Any = None) -> list[Any]:
    r"""One PRNG key per leaf of ``tree`` (in flatten order): leaf ``i`` gets
    ``fold_in(key, i)``; or, when ``key`` is itself a pytree of keys with ``tree``'s
    structure (e.g. ``{name: k}`` for ``{name: x}``), its leaves as given.

    The second form lets a leaf be merged alone with the key it has in a larger tree:
    leaf ``i`` of a tree merged alone as ``{name: x_i}`` with ``{name: fold_in(key, i)}``
    draws what it draws in the whole-tree merge with ``key`` (the streamed ``merge``
    does this).

    Raises:
      ValueError: a pytree of keys whose structure is not ``tree``'s.
    """
    leaves, treedef = jtu.tree_flatten(tree, is_leaf=is_leaf)
    kdef = jtu.tree_structure(key)
    if key is not None and not jtu.treedef_is_leaf(kdef):
        if kdef != treedef:
            raise ValueError(f"per-leaf keys have the structure {kdef}, the task vectors {treedef}")
        return jtu.tree_leaves(key)
    return [jr.fold_in(key, i) for i in range(len(leaves))]


def leaf_keys(key: Key, tree: Any) -> Any:
    r"""One PRNG key per leaf: leaf ``i`` (in flatten order) gets ``fold_in(key, i)``
    (or ``key``'s own leaves, a pytree of per-leaf keys: :func:`leaf_key_list`).

    Stochastic operators draw each leaf's randomness from its own key, so adding a leaf
    never changes the draws of the others, and no key is reused.
    """
    treedef = jtu.tree_structure(tree)
    return jtu.tree_unflatten(treedef, leaf_key_list(key, tree))


def task_broadcast(v: jax.Array, ndim: int) -> jax.Array:
    """Reshape a ``[T]`` vector to ``[T, 1, ..., 1]`` (``ndim`` axes in all)."""
    return v.reshape(v.shape + (1,) * (ndim - 1))


def as_weights(weights: Any, num_tasks: int, dtype: Any) -> jax.Array | None:
    """``weights`` as a ``[T]`` array of ``dtype`` (``None`` stays ``None``)."""
    if weights is None:
        return None
    return jnp.asarray(weights).astype(dtype).reshape(num_tasks)


def checked(
    *,
    densities: tuple[str, ...] = (),
    choices: Mapping[str, tuple[str, ...]] | None = None,
    validate: Callable[..., int] = check_task_vectors,
    screen_output: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the eager input checks of a public operator ``fn(task_vectors, key, ...)``.

    Before the body runs: ``validate(task_vectors)`` (default :func:`check_task_vectors`;
    it returns ``T``), :func:`check_weights` if ``fn`` has a ``weights`` argument,
    :func:`check_density` for each name in ``densities`` and :func:`check_choice` for each
    static option in ``choices``, all with the call's values (defaults included). The body
    then calls the operator's jitted core (``jax.jit`` with the static options).

    With ``screen_output=True`` (for an operator whose output is NaN / Inf wherever an
    input entry is: task arithmetic, the kernels that add
    :func:`mergetheory.merge.leafwise.propagate_nonfinite`), ``validate`` is called with
    ``finite=False`` and the NaN / Inf check runs after the body, on the merged output
    (:func:`mergetheory.tree.check_finite_via`: the same error, naming the input leaf, but
    one pass over the output instead of a separate pass over the ``T`` times larger input).

    Example:
      >>> @checked(densities=("density",), choices={"trim": ("tensor", "global")})
      ... def op(task_vectors, key, *, weights=None, density=0.2, trim="tensor"):
      ...     return task_vectors
    """
    allowed = dict(choices or {})

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        has_weights = "weights" in sig.parameters

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            task_vectors = values["task_vectors"]
            if screen_output:
                num = validate(task_vectors, finite=False)
            else:
                num = validate(task_vectors)
            if has_weights:
                check_weights(values["weights"], num)
            for name in densities:
                check_density(values[name], name=name)
            for name, options in allowed.items():
                check_choice(values[name], options, name=name)
            out = fn(*args, **kwargs)
            if screen_output:
                mtree.check_finite_via(out, task_vectors, name="task_vectors")
            return out

        return wrapper

    return decorate
