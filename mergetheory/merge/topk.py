r"""Exact magnitude top-k: ``k = floor(density * n)``, per-row thresholds and masks.

PEFT (``magnitude_based_pruning``) keeps the :math:`k = \lfloor \rho\, n \rfloor` largest
:math:`|x|` of a tensor. Here the kept set is :math:`\{ i : |x_i| \ge \theta_k \}` with
:math:`\theta_k` the :math:`k`-th largest magnitude,

.. math::
   \theta_k = \max\{\, t : c(t) \ge k \,\}, \qquad c(t) = \#\{ i : |x_i| \ge t \};

it has exactly :math:`k` elements unless several entries tie at :math:`\theta_k`, in which
case **all tied entries are kept** (the official TIES code does the same, ``>=``;
``torch.topk`` would break the tie arbitrarily). ``k = 0`` keeps nothing
(:math:`\theta = +\infty`). Magnitudes :math:`\le 2^{-100}` (:data:`MAGNITUDE_FLOOR`) are
ranked as ties with 0. Rows of at most ``2**15`` entries are sorted, longer rows searched
exactly on counts (:func:`mergetheory.merge.kernels.threshold_search`; both give the same
values bit for bit). :func:`leaf_thresholds` gives the eager merge entries the thresholds
of a tree's long leaves from one compiled search program for every leaf length;
:func:`blockwise_thresholds` the thresholds of rows read in blocks (a streamed merge).

Reference: PEFT ``merge_utils.magnitude_based_pruning``; ``docs/merge_kernels.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import is_concrete
from .kernels import (
    MAGNITUDE_FLOOR,
    compute_dtype,
    threshold_search,
    threshold_search_buffer,
    threshold_sort,
)

__all__ = [
    "MAGNITUDE_FLOOR",
    "blockwise_thresholds",
    "leaf_thresholds",
    "magnitude_threshold",
    "num_kept",
    "topk_mask",
]

_SORT_MAX = 1 << 15  # rows up to this many entries are sorted, longer ones searched
SEARCH_CHUNKS = (1 << 20, 1 << 16)
"""Piece lengths of the passes of :func:`leaf_thresholds`' shared search program."""


# --------------------------------------------------------------------------------------
# k = floor(density * n)
# --------------------------------------------------------------------------------------


def num_kept(density: Any, num: int) -> jax.Array:
    r"""Entries kept, :math:`k = \lfloor \rho\, n \rfloor` (PEFT's ``int(density * numel)``).

    A concrete ``density`` is converted with Python floats, exactly as PEFT does
    (``int(0.7 * 10) == 7``). A traced ``density`` is floored in its own dtype inside the
    trace; with a float32 ``density`` (x64 off) ``k`` can then differ by one from the
    float64 value when :math:`\rho n` is (nearly) an integer.

    Returns:
      int32 scalar (or the batch shape of a traced ``density``), clipped to ``[0, n]``.
    """
    if num >= 2**31:
        raise ValueError(f"top-k over {num} >= 2**31 entries per task is not supported")
    if is_concrete(density):
        return jnp.asarray(min(max(int(float(density) * num), 0), num), dtype=jnp.int32)
    d = jnp.asarray(density)
    return jnp.clip(jnp.floor(d * num), 0, num).astype(jnp.int32)


def magnitude_threshold(
    x: jax.Array | Sequence[jax.Array],
    k: Any,
    *,
    method: str = "auto",
) -> jax.Array:
    r"""Per-row magnitude threshold of exact top-k: the :math:`k`-th largest :math:`|x_{r,\cdot}|`.

    Row ``r`` is ``x[r]`` flattened; with a list of arrays (all ``[R, ...]``), row ``r`` is
    the concatenation of every ``x_l[r]`` (used for TIES' whole-model "global" trim).

    Keeping :math:`\{|x_{r,i}| \ge \theta_r\}` keeps the :math:`k` largest magnitudes, plus
    any entries tied with the :math:`k`-th (see the module docstring, also for the
    :math:`2^{-100}` floor).

    Args:
      x: array ``[R, ...]`` or a sequence of arrays with the same leading ``R``.
      k: int scalar or ``[R]`` ints (traced is fine), ``0 <= k <= n``.
      method: ``"auto"`` (sort rows of at most ``2**15`` entries, search longer ones),
        ``"sort"`` or ``"search"``; all three return the same values.

    Returns:
      ``[R]`` thresholds in float32 (float64 for float64 input); ``+inf`` where ``k = 0``.

    Example:
      >>> x = jnp.array([[3.0, -1.0, 2.0, 0.5]])
      >>> magnitude_threshold(x, 2)
      Array([2.], dtype=float32)
    """
    leaves = [x] if isinstance(x, jax.Array | np.ndarray) else list(x)
    rows = leaves[0].shape[0]
    flat = [jnp.asarray(leaf).reshape(rows, -1) for leaf in leaves]
    cdt = compute_dtype(flat)
    num = sum(f.shape[1] for f in flat)
    if num >= 2**31:
        raise ValueError(f"top-k over {num} >= 2**31 entries per row is not supported")
    k = jnp.broadcast_to(jnp.asarray(k).astype(jnp.int32), (rows,))
    if method == "auto":
        method = "sort" if num <= _SORT_MAX else "search"
    if method == "sort":
        return threshold_sort(flat, k, cdt)
    if method == "search":
        if len(flat) == 1 and num > _SORT_MAX and is_concrete((flat[0], k)):
            # eager: the shared program (an eager lax.map would compile again every call)
            return leaf_thresholds(flat, [k])[0]
        return threshold_search(flat, k, cdt)
    raise ValueError(f"method must be 'auto', 'sort' or 'search', got {method!r}")


def topk_mask(x: jax.Array, k: Any, *, method: str = "auto") -> jax.Array:
    r"""Boolean mask of the top-k magnitudes of each row ``x[r]`` (``>= k`` kept on ties).

    Args:
      x: ``[R, ...]``; the top-k is taken over each ``x[r]`` flattened.
      k: int scalar or ``[R]``.
      method: see :func:`magnitude_threshold`.

    Returns:
      bool array shaped like ``x``.
    """
    thr = magnitude_threshold(x, k, method=method)
    return jnp.abs(x).astype(thr.dtype) >= thr.reshape(thr.shape + (1,) * (x.ndim - 1))


# --------------------------------------------------------------------------------------
# eager per-leaf thresholds: one compiled search program for every leaf length
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cdt", "quantum"), donate_argnums=0)
def _put_row(buf: jax.Array, x: jax.Array, r: jax.Array, *, cdt: Any, quantum: int) -> jax.Array:
    """``buf`` with row ``r`` of ``x``'s magnitudes first, ``+inf``-padded to ``quantum``."""
    row = jnp.abs(jax.lax.dynamic_index_in_dim(x, r, keepdims=False).reshape(-1)).astype(cdt)
    row = jnp.pad(row, (0, -row.shape[0] % quantum), constant_values=jnp.inf)
    return jax.lax.dynamic_update_slice_in_dim(buf, row, 0, axis=0)


@functools.partial(jax.jit, static_argnames=("chunks",), donate_argnums=(0, 1))
def _search_into(
    buf: jax.Array, out: jax.Array, num: jax.Array, k: jax.Array, r: jax.Array, *, chunks: tuple
) -> tuple[jax.Array, jax.Array]:
    """``out`` with entry ``r`` set to the threshold of ``buf``'s row (the shared program)."""
    kr = k if k.ndim == 0 else k[r]
    return buf, out.at[r].set(threshold_search_buffer(buf, num, kr, chunks=chunks))


def leaf_thresholds(leaves: Sequence[Any], ks: Sequence[Any]) -> list[jax.Array | None]:
    r"""Each long leaf's per-task top-k thresholds, from one compiled search program.

    For every concrete leaf ``x`` ``[T, ...]`` of more than ``2**15`` entries per task,
    row ``t``'s magnitudes are written into one ``+inf``-padded buffer (``2**p`` entries, the
    longest row rounded up) and searched by :func:`threshold_search_buffer`, whose
    program depends only on that buffer, not on the leaf's shape: a tree compiles one
    search however many leaf lengths it has, plus a small copy kernel per shape. The
    values equal :func:`magnitude_threshold`'s bit for bit.

    Args:
      leaves: arrays ``[T, ...]``.
      ks: one entry count per leaf (int scalar or ``[T]``).

    Returns:
      Per leaf, ``[T]`` thresholds (as :func:`magnitude_threshold`), or ``None`` for a
      leaf that is traced or short (sorted inside the caller's per-leaf kernel instead).

    Example:
      >>> x = jnp.arange(2 * 40_000, dtype=jnp.float32).reshape(2, 40_000)
      >>> leaf_thresholds([x, x[:, :5]], [jnp.int32(1), jnp.int32(1)])
      [Array([39999., 79999.], dtype=float32), None]
    """
    todo = [
        i
        for i, x in enumerate(leaves)
        if is_concrete((x, ks[i])) and math.prod(x.shape[1:]) > _SORT_MAX
    ]
    out: list[jax.Array | None] = [None] * len(leaves)
    quantum = SEARCH_CHUNKS[-1]
    by_dtype: dict[Any, list[int]] = {}
    for i in todo:
        by_dtype.setdefault(compute_dtype([leaves[i]]), []).append(i)
    for cdt, idx in by_dtype.items():
        longest = max(math.prod(leaves[i].shape[1:]) for i in idx)
        if longest >= 2**31:
            raise ValueError(f"top-k over {longest} >= 2**31 entries per row is not supported")
        size = max(SEARCH_CHUNKS[0], 1 << (-(-longest // quantum) * quantum - 1).bit_length())
        buf = jnp.zeros(size, cdt)
        for i in idx:
            x, k = leaves[i], jnp.asarray(ks[i], jnp.int32)
            thr = jnp.zeros(x.shape[0], cdt)
            num = math.prod(x.shape[1:])
            for r in range(x.shape[0]):
                buf = _put_row(buf, x, r, cdt=cdt, quantum=quantum)
                buf, thr = _search_into(buf, thr, num, k, r, chunks=SEARCH_CHUNKS)
            out[i] = thr
    return out


@functools.partial(jax.jit, static_argnames=("cdt",), donate_argnums=0)
def _put_block(buf: jax.Array, block: jax.Array, start: jax.Array, *, cdt: Any) -> jax.Array:
    """``buf`` with ``block``'s magnitudes written from entry ``start`` on (in place)."""
    mags = jnp.abs(block.reshape(-1)).astype(cdt)
    return jax.lax.dynamic_update_slice_in_dim(buf, mags, start, axis=0)


def blockwise_thresholds(rows: Sequence[Iterable[Any]], num: int, k: Any, dtype: Any) -> jax.Array:
    r"""Top-k thresholds of rows given as consecutive blocks, with one row buffer in memory.

    Row ``r`` is the concatenation of the blocks ``rows[r]`` yields (arrays of any shape,
    flattened; ``num`` entries in all). Each block's magnitudes are written into one
    ``+inf``-padded buffer (``num`` rounded up to a multiple of ``2**20`` entries, reused
    for every row), which :func:`threshold_search_buffer` then searches; one block and the
    buffer are held at a time, never a whole row of the input. The values equal
    :func:`magnitude_threshold`'s of the whole rows bit for bit.

    Args:
      rows: one iterable of blocks per row (e.g. generators reading a tensor's rows from
        disk), consumed one row after another.
      num: entries per row, ``1 <= num < 2**31``.
      k: entries kept per row (int scalar, concrete), ``0 <= k <= num``.
      dtype: the blocks' dtype (magnitudes are ranked in :func:`compute_dtype` of it).

    Returns:
      ``[len(rows)]`` thresholds (``+inf`` where ``k = 0``).

    Example:
      >>> x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
      >>> blockwise_thresholds([iter([x[:1], x[1:]]), iter([-x])], 6, 2, np.float32)
      Array([4., 4.], dtype=float32)
    """
    if not 1 <= num < 2**31:
        raise ValueError(f"top-k over {num} entries per row is not supported (1 <= n < 2**31)")
    cdt = compute_dtype([jnp.zeros(0, dtype)])
    size = -(-num // SEARCH_CHUNKS[0]) * SEARCH_CHUNKS[0]
    buf = jnp.full(size, jnp.inf, cdt)
    out = jnp.zeros(len(rows), cdt)
    k = jnp.asarray(k, jnp.int32)
    for r, blocks in enumerate(rows):
        start = 0
        for block in blocks:
            # waits for the previous step, so that blocks are not read ahead of the search
            buf = _put_block(buf, block, np.int32(start), cdt=cdt).block_until_ready()
            start += math.prod(np.shape(block))
        if start != num:
            raise ValueError(f"row {r} has {start} entries in its blocks, expected {num}")
        buf, out = _search_into(buf, out, num, k, r, chunks=SEARCH_CHUNKS)
    return out
