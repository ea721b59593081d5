r"""The one Monte Carlo engine: chunked, streamed, optionally sharded or in blocks.

:func:`run_monte_carlo` turns a *sampler* (a pytree whose call returns a one-chunk
function) into the streamed :class:`~mergetheory.width.moments.SampleMoments` of its
per-sample statistics:

* the random stream is ``jr.split(key, C)``, one key per chunk of ``c`` samples,
  :math:`C = \lceil M / c \rceil` (or, with ``per_sample_keys``, sample ``i`` uses
  ``jr.fold_in(key, i)``); samples with index :math:`\ge M` are masked out;
* the chunks are folded into running moments by a ``lax.scan`` (one chunk alive at a
  time), inside one jitted program;
* ``mesh``: the chunks are sharded over the mesh axes (``jax.shard_map``), each device
  streams its own and the devices' moments are pooled exactly with ``psum`` s, so any
  mesh gives the one-device result up to the order of the final sums;
* ``on_block``: the chunks run in blocks (a host loop over the same jitted program), and
  ``on_block(num_samples_done)`` is called after each (a progress bar).

:func:`paired_paths` evaluates several sets on the *same* draws (common random numbers),
chunk by chunk, and returns the per-path values for paired statistics.

Example:
  >>> sampler = jax.tree_util.Partial(make_chunk_fn, gram)   # sampler() -> chunk fn
  >>> moments = run_monte_carlo(jr.key(0), sampler,
  ...                           MonteCarloConfig(num_samples=10_000, chunk_size=1024))
  >>> moments.mean, moments.stderr()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from .._types import Key
from ..geometry import GeneratedSet
from .moments import SampleMoments, pool_moments, stream_moments
from .sampler import width_sampler

__all__ = [
    "AxisName",
    "MonteCarloConfig",
    "identity_statistics",
    "mesh_axes",
    "paired_paths",
    "run_monte_carlo",
]

AxisName = str | tuple[str, ...]


def identity_statistics(values: Any) -> Any:
    """Track the per-sample values themselves (the default statistics)."""
    return values


class MonteCarloConfig(NamedTuple):
    """Static configuration of :func:`run_monte_carlo` (hashable: a ``jit`` static).

    Attributes:
      num_samples: :math:`M \\ge 2`, the samples that count.
      chunk_size: samples per chunk ``c`` (one chunk alive at a time).
      statistics: ``values -> pytree of [c, ...]`` per-sample statistics to track; a
        module-level function or a hashable callable (default: the values).
      per_sample_keys: ``False``: chunk ``j`` gets ``jr.split(key, C)[j]`` and the
        sampler's chunk function takes that key; ``True``: the sampler returns a
        one-sample function and sample ``i`` gets ``jr.fold_in(key, i)``.
      axis_name: mesh axis (or axes) the chunks are sharded over when a ``mesh`` is
        given (default: every axis of the mesh).
      chunks_per_block: chunks per host-side block when ``on_block`` is given
        (default: all chunks in one block).
      finalize: ``SampleMoments -> result`` applied to the final (pooled) moments, inside
        the same compiled program when there is one block (default: the moments).
    """

    num_samples: int
    chunk_size: int
    statistics: Callable[[Any], Any] = identity_statistics
    per_sample_keys: bool = False
    axis_name: AxisName | None = None
    chunks_per_block: int | None = None
    finalize: Callable[[SampleMoments], Any] | None = None


def mesh_axes(mesh: Mesh, axis_name: AxisName | None) -> tuple[AxisName, int]:
    """``(axis_name, size)``: the mesh axes to shard over (default all) and their size."""
    if axis_name is None:
        axis_name = mesh.axis_names if len(mesh.axis_names) > 1 else mesh.axis_names[0]
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    for nm in names:
        if nm not in mesh.shape:
            raise ValueError(f"axis {nm!r} is not an axis of the mesh {dict(mesh.shape)}")
    return axis_name, math.prod(mesh.shape[nm] for nm in names)


def _chunk_function(sampler: Any, key: Key, per_sample_keys: bool) -> Callable[[Any], Any]:
    fn = sampler()  # per-set preprocessing: once per program (per device)
    if not per_sample_keys:
        return fn
    return jax.vmap(lambda i: fn(jr.fold_in(key, i)))


@functools.partial(jax.jit, static_argnames=("config", "mesh", "axis_name", "finalize"))
def _moments_kernel(
    key: Key,
    chunk_inputs: Any,
    first_sample: Any,
    sampler: Any,
    *,
    config: MonteCarloConfig,
    mesh: Mesh | None,
    axis_name: AxisName | None,
    finalize: bool,
) -> Any:
    """Streamed moments of the chunks ``chunk_inputs`` (``[C, ...]``), sharded on a mesh;
    ``config.finalize`` applied to them when ``finalize``."""
    itype = jax.dtypes.canonicalize_dtype(jnp.int64)

    def local(key: Key, inputs: Any, first: Any, sampler: Any) -> SampleMoments:
        if first is None:  # one block: a constant 0 (lets XLA fold the sample mask)
            first = 0 if mesh is None else jnp.zeros((), itype)
        if mesh is not None:
            per_device = inputs.shape[0] * config.chunk_size
            first = first + jax.lax.axis_index(axis_name).astype(first.dtype) * per_device
        moments = stream_moments(
            _chunk_function(sampler, key, config.per_sample_keys),
            inputs,
            num_samples=config.num_samples,
            first_sample=first,
            statistics=config.statistics,
        )
        if mesh is not None:
            moments = pool_moments(moments, axis_name)
        return config.finalize(moments) if finalize else moments

    if mesh is None:
        return local(key, chunk_inputs, first_sample, sampler)
    # check_vma=False: samplers written for one device (while_loops with replicated
    # initial carries, as in the NNLS cone projection) need not be annotated as varying.
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(axis_name), P(), P()),
        out_specs=P(),
        check_vma=False,
    )(key, chunk_inputs, first_sample, sampler)


def _check_index_range(total: int) -> None:
    """Sample indices (padding included) must fit JAX's default int (int32 without x64)."""
    itype = jax.dtypes.canonicalize_dtype(jnp.int64)
    if total > jnp.iinfo(itype).max:
        raise ValueError(
            f"{total} sample indices (with padding) overflow {itype}; enable jax_enable_x64"
        )


def run_monte_carlo(
    key: Key,
    sampler: Any,
    config: MonteCarloConfig,
    *,
    mesh: Mesh | None = None,
    on_block: Callable[[int], Any] | None = None,
) -> SampleMoments:
    r"""Streamed moments of ``M`` Monte Carlo samples: one device, a mesh, or in blocks.

    Chunk ``j`` (of :math:`C = \lceil M/c \rceil`) draws from ``jr.split(key, C)[j]``
    (``per_sample_keys``: sample ``i`` from ``jr.fold_in(key, i)``); chunks are padded with
    dummy chunks to whole blocks and whole devices, whose samples (index :math:`\ge M`)
    are masked out. The result does not depend on the mesh or the blocks up to the order
    of the final floating-point sums.

    Args:
      key: PRNG key.
      sampler: a pytree with ``sampler() -> chunk_fn``, called once per program inside
        the jitted kernel: ``chunk_fn(chunk_key) -> pytree of [c, ...]`` per-sample values
        (``per_sample_keys``: ``chunk_fn(key) -> one sample``). Use
        ``jax.tree_util.Partial(factory, *arrays)`` with a hashable ``factory`` (a frozen
        dataclass or a module-level function), so that repeated calls reuse the
        compilation.
      config: :class:`MonteCarloConfig`.
      mesh: shard the chunks over this device mesh (``config.axis_name``).
      on_block: ``on_block(num_samples_in_block)`` after each block of
        ``config.chunks_per_block`` chunks (e.g. ``tqdm.update``).

    Returns:
      :class:`~mergetheory.width.moments.SampleMoments` of
      ``config.statistics(values)`` (with a mesh: pooled, replicated), or
      ``config.finalize`` of them.

    Example:
      >>> def chunk_fn(k):
      ...     return jr.normal(k, (256,)) ** 2
      >>> sampler = jax.tree_util.Partial(lambda: chunk_fn)
      >>> m = run_monte_carlo(jr.key(0), sampler, MonteCarloConfig(4096, 256))
      >>> float(m.mean)    # ~ 1
    """
    m, chunk = int(config.num_samples), int(config.chunk_size)
    num_chunks = -(-m // chunk)
    size, axis_name = 1, None
    if mesh is not None:
        axis_name, size = mesh_axes(mesh, config.axis_name)
    per_block = (
        num_chunks
        if on_block is None or config.chunks_per_block is None
        else (int(config.chunks_per_block))
    )
    per_block = -(-per_block // size) * size  # whole devices
    num_blocks = -(-num_chunks // per_block)
    total_chunks = num_blocks * per_block
    if config.per_sample_keys:
        _check_index_range(total_chunks * chunk)
        inputs = jnp.arange(total_chunks * chunk, dtype=jnp.uint32).reshape(total_chunks, chunk)
    else:
        if mesh is not None:
            _check_index_range(total_chunks * chunk)
        inputs = jr.split(key, num_chunks)
        if total_chunks > num_chunks:  # dummy chunks (one compiled block shape), masked out
            pad = jnp.broadcast_to(inputs[:1], (total_chunks - num_chunks,))
            inputs = jnp.concatenate([inputs, pad])
    kernel = functools.partial(_moments_kernel, config=config, mesh=mesh, axis_name=axis_name)
    itype = jax.dtypes.canonicalize_dtype(jnp.int64)
    if num_blocks == 1:
        finalize = config.finalize is not None
        total = kernel(key, inputs, None, sampler, finalize=finalize)
        if on_block is not None:
            on_block(m)
        return total
    total = None
    for b in range(num_blocks):
        first = b * per_block * chunk
        part = kernel(
            key,
            inputs[b * per_block : (b + 1) * per_block],
            np.asarray(first, itype),
            sampler,
            finalize=False,
        )
        total = part if total is None else total.merge(part)
        on_block(min(per_block * chunk, m - first))
    return total if config.finalize is None else config.finalize(total)


@functools.partial(jax.jit, static_argnames=("num_samples", "chunk_size", "method"))
def _paired_paths(key, sets, *, num_samples, chunk_size, method):
    keys = jr.split(key, -(-num_samples // chunk_size))
    samplers = [width_sampler(s, chunk_size=chunk_size, method=method) for s in sets]
    out = jax.lax.map(lambda k: tuple(f(k) for f in samplers), keys)  # [C, chunk] each
    return tuple(v.reshape((-1,) + v.shape[2:])[:num_samples] for v in out)


def paired_paths(
    key: Key,
    sets: Sequence[GeneratedSet],
    *,
    num_samples: int,
    chunk_size: int,
    method: str = "fast",
) -> tuple[jax.Array, ...]:
    r"""Per-path support values of several sets on the same draws (common random numbers).

    Chunk ``j`` of every set draws from the same chunk key ``jr.split(key, C)[j]``:
    on the fast path the same whitened :math:`h` (so nested sets, prefixes of one
    generator list, see the same :math:`z_{1:m}`), on the naive path the same
    :math:`g \in \mathbb{R}^D`. The chunks are evaluated one at a time (``lax.map``); the
    per-path values come back for paired statistics (differences, ratios per path).

    Args:
      key: PRNG key.
      sets: generated sets (the same ``n`` on the fast path; the same ``D`` on the naive).
      num_samples: paths ``M``.
      chunk_size: paths per chunk (part of the random stream).
      method: ``"fast"`` or ``"naive"``.

    Returns:
      one ``[M]`` array of per-path support values per set.

    Example:
      >>> a, b = paired_paths(jr.key(0), [hull.prefix(2), hull], num_samples=1000,
      ...                     chunk_size=256)
      >>> bool(jnp.all(b >= a))       # monotone per path
      True
    """
    return _paired_paths(
        key, tuple(sets), num_samples=int(num_samples), chunk_size=int(chunk_size), method=method
    )
