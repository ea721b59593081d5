r"""Drawing task vectors: :func:`sample_task_vectors` for every spec of :mod:`.specs`.

:func:`sample_task_vectors` ``(key, spec, shapes, dtype)`` draws a task-vector set, i.e. a
pytree with the structure of ``shapes`` whose every leaf has a leading task axis
``[T, ...]``. ``shapes`` is any pytree of leaf shapes: tuples of ints
(``{"w": (64, 32), "b": (32,)}``), ``jax.ShapeDtypeStruct`` leaves (the output of
``jax.eval_shape(model.init, ...)`` for a Flax model) or arrays (their shape is used).

**Transformations.** Static spec fields (:data:`~mergetheory.tasks.specs.STATIC_FIELDS`)
set shapes and control flow; all continuous fields are traced, so a sweep over ``rho`` is a
``vmap``::

    jax.vmap(lambda r: sample_task_vectors(key, CorrelatedSpec(8, r), shapes))(rhos)

The samplers are jitted once per (family, static fields, leaf shapes, dtype); changing a
continuous field does not retrace.

Randomness: dense families draw on the flat ``[T, D]`` layout (leaves concatenated in
flatten order) with a constant number of RNG calls and cut the result into leaves, so the
sample depends on the key, the spec and the leaf shapes in flatten order; compile time
does not grow with the number of leaves. :class:`LoRASpec` also draws all factors at once.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._types import Key, TaskVectors
from ..lora import LoraFactors
from .specs import (
    STATIC_FIELDS,
    CorrelatedSpec,
    GaussianSpec,
    HeavyTailedSpec,
    LoRASpec,
    SignConflictSpec,
    SparseSpec,
    TaskSpec,
    shape_tree,
    validate_spec,
)

__all__ = ["sample_task_vectors"]


# --------------------------------------------------------------------------------------
# per-family samplers on the flat [T, D] layout (run under jit; `p` = traced fields)
# --------------------------------------------------------------------------------------
# Each family makes a constant number of RNG calls on the whole flat [T, D] array, then the
# result is cut into leaves: XLA:CPU compiles every RNG call separately (about a second
# each), so per-leaf draws would make compile time grow with the number of leaves.


def _flat_gaussian(key, p, num, size, dtype):
    return jr.normal(key, (num, size), dtype)


def _flat_correlated(key, p, num, size, dtype):
    z = jr.normal(key, (num + 1, size), dtype)  # row 0: shared component c
    rho = p["rho"]
    return jnp.sqrt(rho) * z[:1] + jnp.sqrt(1.0 - rho) * z[1:]


def _flat_sparse(key, p, num, size, dtype):
    ku, kv = jr.split(key)
    f, o = p["fraction"], p["overlap"]
    u = jr.uniform(ku, (num + 2, size), dtype)  # rows: shared?, common coin, own coins
    mask = jnp.where(u[:1] < o, u[1:2] < f, u[2:] < f)
    vals = jr.normal(kv, (num, size), dtype) / jnp.sqrt(f)
    return jnp.where(mask, vals, jnp.zeros((), dtype))


def _flat_heavy(key, p, num, size, dtype):
    nu = p["nu"]
    x = jr.t(key, nu, (num, size), dtype)
    kappa = jnp.where(nu > 2.0, jnp.sqrt(jnp.maximum(nu - 2.0, 0.0) / nu), jnp.ones((), dtype))
    return kappa * x


def _flat_sign(key, p, num, size, dtype):
    ku, kg = jr.split(key)
    u = jr.uniform(ku, (num + 1, size), dtype)  # row 0: shared sign, rows 1..: flips
    shared = jnp.where(u[:1] < 0.5, -jnp.ones((), dtype), jnp.ones((), dtype))
    sign = jnp.where(u[1:] < p["flip_prob"], -shared, shared)
    return sign * jnp.abs(jr.normal(kg, (num, size), dtype))


_FLAT_SAMPLERS = {
    GaussianSpec: _flat_gaussian,
    CorrelatedSpec: _flat_correlated,
    SparseSpec: _flat_sparse,
    HeavyTailedSpec: _flat_heavy,
    SignConflictSpec: _flat_sign,
}


def _dense(key, p, static, leaf_shapes, dtype, spec_type):
    num = static["num_tasks"]
    sizes = [math.prod(s) for s in leaf_shapes]
    total = sum(sizes)
    flat = _FLAT_SAMPLERS[spec_type](key, p, num, max(total, 1), dtype)[:, :total]
    sigma = p["norm"] / jnp.sqrt(jnp.asarray(max(total, 1), dtype))
    if static["exact_norm"]:
        nrm = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
        flat = flat * jnp.where(nrm > 0, p["norm"] / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    else:
        flat = sigma * flat
    offsets = np.cumsum([0, *sizes])
    return [
        flat[:, offsets[i] : offsets[i + 1]].reshape((num, *shape))
        for i, shape in enumerate(leaf_shapes)
    ]


def _lora(key, p, static, leaf_shapes, dtype):
    num, rank = static["num_tasks"], static["rank"]
    mats = [s for s in leaf_shapes if len(s) == 2]
    total2 = sum(d * k for d, k in mats)
    scaling = p["alpha"] / rank
    # entries N(0, v) with v^2 = norm^2 / (s^2 r D_2); one RNG call for all factors
    var = p["norm"] / (scaling * jnp.sqrt(jnp.asarray(rank * max(total2, 1), dtype)))
    sizes = [x for d, k in mats for x in (d * rank, rank * k)]
    flat = jnp.sqrt(var) * jr.normal(key, (num, max(sum(sizes), 1)), dtype)
    offsets = np.cumsum([0, *sizes])
    scale_vec = jnp.full((num,), scaling, dtype)
    out, j = [], 0
    for s in leaf_shapes:
        if len(s) != 2:
            out.append(None)
            continue
        b = flat[:, offsets[j] : offsets[j + 1]].reshape(num, s[0], rank)
        a = flat[:, offsets[j + 1] : offsets[j + 2]].reshape(num, rank, s[1])
        out.append(LoraFactors(b, a, scale_vec))
        j += 2
    return out


@functools.partial(jax.jit, static_argnames=("spec_type", "static", "leaf_shapes", "dtype"))
def _sample_leaves(key, dynamic, *, spec_type, static, leaf_shapes, dtype):
    p = {k: jnp.asarray(v).astype(dtype) for k, v in dynamic.items()}
    static = dict(static)
    if spec_type is LoRASpec:
        return _lora(key, p, static, leaf_shapes, dtype)
    return _dense(key, p, static, leaf_shapes, dtype, spec_type)


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def sample_task_vectors(
    key: Key, spec: TaskSpec, shapes: Any, dtype: Any = jnp.float32
) -> TaskVectors:
    r"""Draw ``spec.num_tasks`` synthetic task vectors shaped like ``shapes``.

    Args:
      key: PRNG key (``jax.random.key`` or a raw ``uint32[2]`` key).
      spec: one of :class:`GaussianSpec`, :class:`CorrelatedSpec`, :class:`SparseSpec`,
        :class:`HeavyTailedSpec`, :class:`SignConflictSpec`, :class:`LoRASpec`.
      shapes: pytree of leaf shapes (tuples of ints, ``jax.ShapeDtypeStruct`` or arrays),
        e.g. ``{"w": (64, 32), "b": (32,)}`` or ``jax.eval_shape(model.init, key, x)``.
      dtype: floating dtype of every leaf (``ShapeDtypeStruct`` dtypes are ignored).

    Returns:
      A pytree with the structure of ``shapes`` and leaves ``[T, *shape]``; for
      :class:`LoRASpec`, :class:`~mergetheory.lora.LoraFactors` on 2-D leaves and
      ``None`` elsewhere.

    Raises:
      ValueError: for out-of-range spec fields (``rho`` outside ``[0, 1]``, ``nu <= 0``,
        ``fraction`` outside ``(0, 1]``, ...) or malformed shapes.
      TypeError: for an unknown spec type or a non-floating dtype.

    Example:
      >>> tv = sample_task_vectors(jr.key(0), CorrelatedSpec(4, rho=0.5),
      ...                          {"w": (64, 32), "b": (32,)})
      >>> tv["w"].shape, tv["b"].shape
      ((4, 64, 32), (4, 32))
    """
    validate_spec(spec)
    dtype = jax.dtypes.canonicalize_dtype(jnp.dtype(dtype))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be floating, got {dtype}")
    leaf_shapes, treedef = shape_tree(shapes)
    fields = spec._asdict()
    if isinstance(spec, LoRASpec) and spec.alpha is None:
        fields["alpha"] = float(spec.rank)
    static = tuple((k, v) for k, v in fields.items() if k in STATIC_FIELDS)
    static = tuple((k, bool(v) if k == "exact_norm" else int(v)) for k, v in static)
    dynamic = {k: v for k, v in fields.items() if k not in STATIC_FIELDS}
    leaves = _sample_leaves(
        key,
        dynamic,
        spec_type=type(spec),
        static=static,
        leaf_shapes=tuple(leaf_shapes),
        dtype=dtype,
    )
    return jtu.tree_unflatten(treedef, leaves)
