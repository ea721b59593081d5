r"""The width engine across devices: shard ``D`` for the Gram pass, samples for Monte Carlo.

Both passes of the width engine (docs/width_engine.md) are embarrassingly parallel:

* **Gram pass.** :math:`G = \sum_{p=1}^{P} X_{:, S_p} X_{:, S_p}^\top` for any partition
  :math:`S_1, \dots, S_P` of the parameter axis. :func:`sharded_gram_matrix` shards the
  (flattened) parameter axis of every leaf over a mesh axis, each device computes the
  Gram of its columns, and one ``psum`` adds the ``[T, T]`` partial Grams. Columns are
  zero-padded to a multiple of the number of devices (zeros add nothing to ``G``).
* **Monte Carlo pass.** :func:`sharded_monte_carlo` shards the *sample* axis. Sample ``i``
  (a global index) draws its randomness from ``jr.fold_in(key, i)``, so the set of normals
  drawn does not depend on the number of devices, the chunk size, or where a sample runs:
  a run on 8 devices equals a run on 1 device up to the order of the final floating-point
  sums. Each device folds its chunks into running moments
  (:class:`mergetheory.width.SampleMoments`, one chunk alive at a time) and the devices'
  moments are pooled exactly with ``psum`` s (counts, weighted means, centred sums of
  squares).
* :func:`sharded_gaussian_width` is the Monte Carlo pass of
  :mod:`mergetheory.width` for the sets of :mod:`mergetheory.geometry` (hull, cone, span,
  zonotope, ..., e.g. built ``from_gram``) with its *chunk keys* sharded: the random
  stream of :func:`mergetheory.width.gaussian_width` is ``jr.split(key, C)``, one key per
  chunk of samples, so sharding the chunks (not the samples) keeps every draw, and the
  estimate equals the single-device one for the same ``(key, num_samples, chunk_size)``
  (fast path: :math:`z = L h \sim N(0, G)`, :math:`G = L L^\top`, the law of
  :math:`T g`).

Everything uses JAX's own SPMD machinery: a :class:`jax.sharding.Mesh`,
:class:`~jax.sharding.PartitionSpec` s and :func:`jax.shard_map`. Meshes may have several
axes; ``axis_name`` (a name or a tuple of names) says which ones to shard over.

Testing on one CPU: set ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` *before*
importing JAX (``tests/conftest.py`` does) to get 8 host devices.

Several hosts: start one process per host and call, before any other JAX call,

.. code-block:: python

   import jax
   jax.distributed.initialize(
       coordinator_address="10.0.0.1:1234",  # host 0's address, same on every host
       num_processes=4,                       # number of hosts
       process_id=k,                          # 0 .. num_processes - 1, this host
   )  # on TPU pods / SLURM / Open MPI the arguments are auto-detected: initialize()
   mesh = make_mesh()  # now spans jax.devices(), the devices of *all* hosts

then run the same program on every host (SPMD). Each host must feed its own shard of a
``D``-sharded input (e.g. ``jax.make_array_from_process_local_data`` or
``jax.make_array_from_callback``, reading only its own columns of the checkpoints); the
``[T, T]`` Gram and the width estimates come back replicated on every host. Nothing here
gathers to one host, so the code runs unchanged, input checks included (the NaN / Inf
check of a global array is one reduction on the devices; only its two counts reach the
host). ``tests/test_multiprocess.py`` runs this with two local processes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._types import Gram, Key, TaskVectors
from ..tree import check_dense, gram_2d, validate_task_vectors
from .engine import AxisName, MonteCarloConfig, mesh_axes, run_monte_carlo
from .estimators import NestedWidthEstimate, WidthEstimate, prepare_width, run_width
from .moments import SampleMoments

__all__ = [
    "DEFAULT_AXIS",
    "MonteCarloEstimate",
    "make_mesh",
    "shard_task_vectors",
    "sharded_gaussian_width",
    "sharded_gram_matrix",
    "sharded_monte_carlo",
]

DEFAULT_AXIS = "devices"
"""Name of the single axis of the default mesh built by :func:`make_mesh`."""


class MonteCarloEstimate(NamedTuple):
    r"""A Monte Carlo mean with its standard error.

    Attributes:
      mean: :math:`\bar f = M^{-1} \sum_i f(\xi_i)` (a pytree like ``sample_fn``'s output).
      stderr: :math:`\sqrt{\hat\sigma^2 / M}` with the unbiased sample variance.
      num_samples: :math:`M`.
    """

    mean: Any
    stderr: Any
    num_samples: int


def make_mesh(
    num_devices: int | None = None,
    axis_name: str = DEFAULT_AXIS,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A one-axis mesh over the first ``num_devices`` devices (all by default).

    Args:
      num_devices: how many of ``devices`` to use (None: all).
      axis_name: the mesh axis name.
      devices: devices to take them from (default ``jax.devices()``, all hosts).

    Returns:
      ``Mesh(devices[:num_devices], (axis_name,))``.
    """
    devs = list(jax.devices() if devices is None else devices)
    if num_devices is not None:
        if not 1 <= num_devices <= len(devs):
            raise ValueError(f"num_devices must be in [1, {len(devs)}], got {num_devices}")
        devs = devs[:num_devices]
    return Mesh(np.asarray(devs), (axis_name,))


def _resolve(mesh: Mesh | None, axis_name: AxisName | None) -> tuple[Mesh, AxisName, int]:
    if mesh is None:
        mesh = make_mesh(axis_name=axis_name if isinstance(axis_name, str) else DEFAULT_AXIS)
    axis_name, size = mesh_axes(mesh, axis_name)
    return mesh, axis_name, size


# --------------------------------------------------------------------------------------
# Gram pass: shard the parameter axis
# --------------------------------------------------------------------------------------


def _pad_columns(x: jax.Array, multiple: int) -> jax.Array:
    pad = (-x.shape[1]) % multiple
    return x if pad == 0 else jnp.pad(x, ((0, 0), (0, pad)))


def shard_task_vectors(
    task_vectors: TaskVectors | jax.Array,
    mesh: Mesh | None = None,
    *,
    axis_name: AxisName | None = None,
) -> list[jax.Array]:
    """Place a task-vector set on a mesh, its parameter axis sharded.

    Every leaf is flattened to ``[T, D_l]``, zero-padded to a multiple of the number of
    devices along ``axis_name`` and put with ``NamedSharding(mesh, P(None, axis_name))``.
    Do this once when the same vectors enter several sharded passes.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves, or a ``[T, D]`` array.
      mesh: device mesh (default: all devices, :func:`make_mesh`).
      axis_name: mesh axis (or axes) to shard over (default: all axes of ``mesh``).

    Returns:
      List of ``[T, D_l_padded]`` sharded arrays; their Gram matrix is the input's.
    """
    mesh, axis_name, size = _resolve(mesh, axis_name)
    num = validate_task_vectors(task_vectors)
    sharding = NamedSharding(mesh, P(None, axis_name))
    out = []
    for leaf in jtu.tree_leaves(task_vectors):
        x = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        x = x.reshape(num, -1)
        pad = (-x.shape[1]) % size
        if pad:
            x = (np if isinstance(x, np.ndarray) else jnp).pad(x, ((0, 0), (0, pad)))
        out.append(jax.device_put(x, sharding))
    return out


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "size", "precision"))
def _sharded_gram(
    leaves: list[jax.Array], mesh: Mesh, axis_name: AxisName, size: int, precision: Any
) -> jax.Array:
    num = leaves[0].shape[0]
    cols = [_pad_columns(leaf.reshape(num, -1), size) for leaf in leaves]

    def local_gram(*xs: jax.Array) -> jax.Array:
        acc = None
        for x in xs:
            g = gram_2d(x, precision=precision)  # column-blocked on CPU
            acc = g if acc is None else acc + g
        return jax.lax.psum(acc, axis_name)

    g = jax.shard_map(
        local_gram,
        mesh=mesh,
        in_specs=tuple(P(None, axis_name) for _ in cols),
        out_specs=P(),
        check_vma=False,  # the column-blocked CPU kernel scans with a replicated carry
    )(*cols)
    return 0.5 * (g + g.T)


def sharded_gram_matrix(
    task_vectors: TaskVectors | jax.Array,
    mesh: Mesh | None = None,
    *,
    axis_name: AxisName | None = None,
    precision: Any = "highest",
    check: bool = True,
) -> Gram:
    r"""Gram matrix :math:`G_{ij} = \langle \tau_i, \tau_j \rangle` with ``D`` sharded.

    Each leaf, flattened to ``[T, D_l]`` and zero-padded to a multiple of the ``P``
    devices, is split into ``P`` column blocks; device ``p`` computes
    :math:`\sum_l X_{l,p} X_{l,p}^\top` and a ``psum`` adds the partial Grams. Cost
    :math:`O(T^2 D / P)` per device, one all-reduce of :math:`T^2` numbers.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves or a ``[T, D]`` array (already-sharded
        arrays from :func:`shard_task_vectors` avoid the transfer).
      mesh: device mesh (default: all devices, :func:`make_mesh`).
      axis_name: mesh axis (or tuple of axes) that shards ``D`` (default: every axis).
      precision: matmul precision.
      check: validate shapes and (for concrete arrays) finiteness first.

    Returns:
      ``[T, T]`` symmetric PSD matrix, replicated over the mesh; equal to
      :func:`mergetheory.tree.gram_matrix` up to the order of the float sums.

    Example:
      >>> x = jnp.ones((3, 1001))
      >>> sharded_gram_matrix(x, make_mesh(4))[0, 0]
      Array(1001., dtype=float32)
    """
    mesh, axis_name, size = _resolve(mesh, axis_name)
    if check:
        validate_task_vectors(task_vectors)  # includes check_dense
    else:
        check_dense(task_vectors, name="sharded_gram_matrix: task_vectors")
    leaves = list(jtu.tree_leaves(task_vectors))
    return _sharded_gram(leaves, mesh, axis_name, size, precision)


# --------------------------------------------------------------------------------------
# Monte Carlo pass: shard the sample axis
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _BindArgs:
    """``make_sampler(*args) -> (key -> sample_fn(key, *args))``; hashable (a jit static)."""

    sample_fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Callable[[Key], Any]:
        return lambda k: self.sample_fn(k, *args)


def _mean_stderr(moments: SampleMoments) -> tuple[Any, Any]:
    return moments.mean, moments.stderr()


def sharded_monte_carlo(
    key: Key,
    sample_fn: Callable[..., Any],
    num_samples: int,
    mesh: Mesh | None = None,
    *,
    args: tuple[Any, ...] = (),
    axis_name: AxisName | None = None,
    chunk_size: int | None = None,
) -> MonteCarloEstimate:
    r"""Monte Carlo mean :math:`\mathbb{E} f(\xi)` with the sample axis sharded.

    Sample ``i`` (global index ``0 <= i < M``) is
    ``sample_fn(jr.fold_in(key, i), *args)``. Device ``p`` of ``P`` evaluates indices
    ``[p m, (p + 1) m)`` with :math:`m = \lceil M / P \rceil` rounded up to a whole number
    of chunks (indices ``>= M`` are computed and masked out), ``chunk_size`` samples at a
    time (a ``lax.scan`` of running moments, :func:`mergetheory.width.stream_moments`), so
    memory is set by the chunk. The draws are the same on any mesh: ``P`` devices give the
    one-device result up to the order of the final sums (the devices' moments are pooled
    with ``psum`` s).

    Args:
      key: PRNG key.
      sample_fn: ``sample_fn(key, *args) -> pytree of arrays``, one sample. It is a static
        argument of the jitted kernel: pass the same (module-level) function each time,
        or every call compiles again.
      num_samples: :math:`M \ge 2`.
      mesh: device mesh (default: all devices, :func:`make_mesh`).
      args: pytrees passed (replicated, traced) to ``sample_fn``.
      axis_name: mesh axis (or axes) for the sample axis (default: every axis).
      chunk_size: samples per vectorised chunk on each device (None: all at once).

    Returns:
      :class:`MonteCarloEstimate` with ``mean`` and ``stderr`` shaped like one sample
      (:math:`\hat\sigma / \sqrt{M}`, unbiased :math:`\hat\sigma^2`).

    Example:
      >>> def sq(k):
      ...     return jr.normal(k) ** 2
      >>> est = sharded_monte_carlo(jr.key(0), sq, 10_000, make_mesh(4))
      >>> bool(abs(est.mean - 1.0) < 5 * est.stderr)
      True
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    if num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples}")
    if num_samples > np.iinfo(np.uint32).max:
        raise ValueError(f"num_samples must be < 2**32, got {num_samples}")
    mesh, axis_name, size = _resolve(mesh, axis_name)
    per_device = -(-int(num_samples) // size)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk = per_device if chunk_size is None else min(int(chunk_size), per_device)
    config = MonteCarloConfig(
        num_samples=int(num_samples),
        chunk_size=chunk,
        per_sample_keys=True,
        axis_name=axis_name,
        finalize=_mean_stderr,
    )
    sampler = jtu.Partial(_BindArgs(sample_fn), *args)
    mean, stderr = run_monte_carlo(key, sampler, config, mesh=mesh)
    return MonteCarloEstimate(mean, stderr, int(num_samples))


# --------------------------------------------------------------------------------------
# Gaussian width and statistical dimension, sample axis sharded
# --------------------------------------------------------------------------------------


def sharded_gaussian_width(
    key: Key,
    set_: Any,
    *,
    num_samples: int,
    mesh: Mesh | None = None,
    axis_name: AxisName | None = None,
    chunk_size: int | None = None,
    method: str = "fast",
    quantity: str = "width",
    convention: str = "sup",
    nested: bool = False,
    rank_rtol: float | None = None,
    max_iter: int | None = None,
) -> WidthEstimate | NestedWidthEstimate:
    r"""Gaussian width (or statistical dimension) with the Monte Carlo sharded over devices.

    The sharded counterpart of :func:`mergetheory.width.gaussian_width`,
    :func:`~mergetheory.width.statistical_dimension` (``quantity="statdim"``) and
    :func:`~mergetheory.width.nested_width` (``nested=True``), with the same random
    stream: ``key`` is split into :math:`C = \lceil M / c \rceil` chunk keys
    (``jr.split(key, C)``, ``c = chunk_size``), chunk ``j`` draws its ``c`` samples with
    the one-chunk function :func:`mergetheory.width.width_sampler` (fast path:
    :math:`z = L h \sim N(0, G)`, :math:`G = L L^\top`), and the first ``M`` samples
    count. Here the *chunk keys* are sharded over the mesh (padded with dummy chunks to a
    multiple of the ``P`` devices, masked out), each device folds its chunks into running
    moments, and ``psum`` s pool them. So for the same
    ``(key, num_samples, chunk_size)`` the estimate equals the one-device estimate up to
    the order of the float sums. Cost per device :math:`O(M n^2 / P)` plus one
    factorisation of :math:`G`; balance needs :math:`C \ge P`, i.e. ``chunk_size <= M / P``.

    Args:
      key: PRNG key.
      set_: a set from :mod:`mergetheory.geometry`, e.g. ``ConvexHull.from_gram(G)`` with
        ``G`` from :func:`sharded_gram_matrix` or
        :func:`mergetheory.lora.lora_gram_matrix`.
      num_samples: :math:`M \ge 2`.
      mesh: device mesh (default: all devices).
      axis_name: mesh axis (or axes) for the chunks (default: every axis).
      chunk_size: samples per chunk (default as in
        :func:`~mergetheory.width.gaussian_width`); part of the random stream.
      method: ``"fast"`` or ``"naive"``.
      quantity: ``"width"`` or ``"statdim"`` (cones only).
      convention: ``"sup"`` or ``"symmetric"``.
      nested: widths of the prefix sets :math:`S_1 \subset \dots \subset S_N` with common
        random numbers, differences per sample path.
      rank_rtol: rank tolerance for spans.
      max_iter: NNLS outer iterations for cones.

    Returns:
      :class:`~mergetheory.width.WidthEstimate`, or
      :class:`~mergetheory.width.NestedWidthEstimate` when ``nested``.

    Example:
      >>> hull = ConvexHull.from_gram(sharded_gram_matrix(x))
      >>> est = sharded_gaussian_width(jr.key(0), hull, num_samples=10**6, chunk_size=4096)
    """
    set_, factor, config = prepare_width(
        key,
        set_,
        num_samples,
        chunk_size,
        method,
        quantity,
        convention,
        nested,
        rank_rtol,
        max_iter,
    )
    mesh, axis_name, _ = _resolve(mesh, axis_name)
    return run_width(key, set_, factor, config, mesh=mesh, axis_name=axis_name)
