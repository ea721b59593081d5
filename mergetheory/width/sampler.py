r"""One chunk of Gaussian-width replicates as a pure function of a chunk key.

:func:`width_sampler` draws ``chunk_size`` Gaussian vectors from one key and evaluates
the set on each through the set's own maths
(:meth:`~mergetheory.geometry.GeneratedSet.sample_value`, or a reference set's
``support`` / ``projection_sq_norm``):

* **fast** (generated sets): :math:`z = Lh` with :math:`h \sim \mathcal{N}(0, I_n)` and
  :math:`G = LL^\top` (:func:`~mergetheory.linalg.psd_cholesky`), cost :math:`O(n^2)` per
  sample. The draws are coordinate-major and prefix-consistent
  (:func:`coordinate_major_normal`) and :math:`L` is lower triangular, so the set built
  from the first ``m`` generators sees exactly the same :math:`z_{1:m}` as any larger set.
* **naive** (the reference): :math:`g \sim \mathcal{N}(0, I_D)` evaluated on the explicit
  vectors, cost :math:`O(nD)` per sample.

Example:
  >>> sample = width_sampler(ConvexHull.from_task_vectors(jnp.eye(4)), chunk_size=8)
  >>> sample(jax.random.key(0)).shape      # (8,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Key
from ..geometry import GeneratedSet, ReferenceSet
from ..linalg import default_rank_rtol

__all__ = ["CONVENTIONS", "METHODS", "QUANTITIES", "coordinate_major_normal", "width_sampler"]

METHODS = ("fast", "naive")
CONVENTIONS = ("sup", "symmetric")
QUANTITIES = ("width", "statdim")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def coordinate_major_normal(key: Key, num: int, dim: int, dtype: Any) -> jax.Array:
    """``[num, dim]`` standard normals; entry ``(i, j)`` does not depend on ``dim``.

    Drawn coordinate-major as one 1-D array (``[dim * num]`` -> ``[dim, num]`` -> ``.T``):
    with ``jax_threefry_partitionable`` (the default) a 1-D draw is prefix-consistent, so
    the first ``m`` coordinates are the same for every ``dim >= m``. Without that flag,
    coordinate ``j`` is drawn from ``fold_in(key, j)``.
    """
    if jax.config.jax_threefry_partitionable:
        return jr.normal(key, (dim * num,), dtype).reshape(dim, num).T
    cols = jax.vmap(lambda j: jr.normal(jr.fold_in(key, j), (num,), dtype))(jnp.arange(dim))
    return cols.T


def width_sampler(
    set_: GeneratedSet | ReferenceSet,
    *,
    chunk_size: int,
    method: str = "fast",
    quantity: str = "width",
    convention: str = "sup",
    nested: bool = False,
    rank_rtol: float | None = None,
    max_iter: int | None = None,
    factor: tuple[jax.Array, jax.Array] | None = None,
) -> Callable[[Key], jax.Array]:
    r"""One chunk of Monte Carlo replicates as a pure function ``chunk_key -> values``.

    The returned function draws ``chunk_size`` Gaussian vectors from one key and returns,
    per vector, :math:`\sup_{s\in S}\langle g, s\rangle` (``quantity="width"``; cones: of
    :math:`S\cap B_2`) or :math:`\|\Pi_C g\|^2` (``"statdim"``): shape ``[chunk_size]``,
    or ``[chunk_size, N]`` (the path over the prefix sets) when ``nested``. The
    preprocessing (:meth:`~mergetheory.geometry.GeneratedSet.sampling_state`: Cholesky
    factor, Gram–Schmidt basis) runs once, when this function is called. The estimators
    of :mod:`mergetheory.width` split ``key`` into ``ceil(M / chunk_size)`` chunk keys and
    stream this function over them (:func:`mergetheory.width.run_monte_carlo`).

    Args:
      set_: a generated set (:class:`~mergetheory.geometry.ConvexHull`, ...) or a
        reference set.
      chunk_size: vectors per call.
      method: ``"fast"`` (Gram path) or ``"naive"`` (explicit vectors). Reference sets
        have only their explicit support function; ``method`` is ignored for them.
      quantity: ``"width"`` or ``"statdim"`` (cones only).
      convention: ``"sup"`` (:math:`\sup\langle g,s\rangle`) or ``"symmetric"``
        (:math:`\sup|\langle g,s\rangle| = \max(h_S(g), h_S(-g))`).
      nested: return the ``[N]`` path over the prefix sets (generated sets only).
      rank_rtol: rank tolerance (default :func:`~mergetheory.linalg.default_rank_rtol`).
      max_iter: NNLS outer iterations for cones (default ``3 n``).
      factor: optional precomputed ``psd_cholesky(set_.gram)`` (fast path).

    Returns:
      ``fn(chunk_key) -> Array`` of shape ``[chunk_size]`` or ``[chunk_size, N]``.
    """
    check_choice("method", method, METHODS)
    check_choice("quantity", quantity, QUANTITIES)
    check_choice("convention", convention, CONVENTIONS)
    if not isinstance(set_, GeneratedSet | ReferenceSet):
        raise TypeError(
            f"width_sampler: expected a set from mergetheory.geometry, got {type(set_)}"
        )
    if quantity == "statdim" and not set_.is_cone:
        raise ValueError(f"{type(set_).__name__} is not a cone: no statistical dimension")
    squared = quantity == "statdim"
    if isinstance(set_, GeneratedSet):
        if method == "naive" and set_.points is None:
            raise ValueError("method='naive' needs a set that keeps its generators (points)")
        if rank_rtol is None:
            rank_rtol = default_rank_rtol(set_.gram.dtype)
        state = set_.sampling_state(method, rank_rtol=rank_rtol, factor=factor)
        if method == "fast":
            n, dtype = set_.gram.shape[0], set_.gram.dtype

            def draw(k: Key, num: int) -> jax.Array:
                return coordinate_major_normal(k, num, n, dtype)

        else:
            dim, dtype = set_.points.shape[1], set_.points.dtype

            def draw(k: Key, num: int) -> jax.Array:
                return jr.normal(k, (num * dim,), dtype).reshape(num, dim)

        def values(x: jax.Array) -> jax.Array:
            return set_.sample_value(
                x, state, method=method, nested=nested, squared=squared, max_iter=max_iter
            )

    else:
        if nested:
            raise TypeError("nested widths need a generated set, not a reference set")
        dim, dtype = set_.dim, jnp.result_type(float)

        def draw(k: Key, num: int) -> jax.Array:
            return jr.normal(k, (num * dim,), dtype).reshape(num, dim)

        values = set_.projection_sq_norm if squared else set_.support

    def one(x: jax.Array) -> jax.Array:
        v = values(x)
        if convention == "symmetric":
            v = jnp.maximum(v, values(-x))
        return v

    def sample_chunk(k: Key) -> jax.Array:
        return jax.vmap(one)(draw(k, chunk_size))

    return sample_chunk
