r"""XLA:CPU kernels of the merge operators, each beside a plain reference version.

The merge operators spend their time in a few memory-bound passes. On XLA:CPU (jax 0.10)
the obvious ``jax.numpy`` form of some of these passes is much slower than a memory pass,
so this module holds the rewritten forms, one place for all of them, each next to the
plain version it must agree with (``tests/merge/test_kernels.py`` compares them). Why each
rewrite is needed, and the measurements, are in ``docs/merge_kernels.md``.

* :func:`sum_parts` / :func:`max_tasks`: reductions over the task axis unrolled over
  ``T`` on per-task *parts* (reference: :func:`sum_parts_reference`,
  :func:`max_tasks_reference`).
* :func:`count_at_least`: the exact count :math:`\#\{i : a_i \ge t\}` from
  ``min`` / ``max`` / ``sub`` / ``add`` only (reference: :func:`count_at_least_reference`).
  The count is :math:`c(t) = \frac{1}{u} \sum_i \max(\min(a_i, t) - t^-, 0)` where
  :math:`t^-` is the float just below :math:`t` and :math:`u = t - t^-` (exact by
  Sterbenz' lemma): each term is exactly :math:`0` or :math:`u`, so every partial sum is an
  exact multiple of :math:`u` while it stays below :math:`2^{24} u` (float32); longer rows
  are summed in chunks whose counts are added as integers.
* :func:`threshold_search`: the exact :math:`k`-th largest magnitude of each row,

  .. math::
     \theta_k = \max\{\, t : c(t) \ge k \,\}, \qquad c(t) = \#\{ i : |x_i| \ge t \},

  by a search on counts over the integer bit patterns of non-negative floats (monotone in
  the value) with the invariant ``c(lo) >= k > c(hi)``: first probe from a sorted
  stratified sample, then Newton / secant / regula-falsi steps, a jump to the largest
  value below ``hi`` and bisection when steps stall (worst case ``4 * 31 + 2`` passes).
  Reference: :func:`threshold_sort` (a sort of each row). To keep :math:`u` a normal float,
  **magnitudes** :math:`\le 2^{-100}` (:data:`MAGNITUDE_FLOOR`) **are ranked as ties with
  0**, in both versions.
* :func:`threshold_search_buffer`: the same search on one row held in a padded buffer,
  with the row length traced, so one compiled program serves every row length (the eager
  merge entries share it across a tree's leaves); the search core is
  :func:`search_threshold` on a :class:`RowAccess`.
* :func:`hash_uniform_bits`: counter-based uint32 random bits
  :math:`h(h(i \oplus s_0) + s_1)` (``lowbias32`` hash :math:`h`, key words
  :math:`s_0, s_1`) for the DARE masks (reference: :func:`hash_uniform_bits_reference`,
  the same hash in NumPy). They live in :mod:`mergetheory.random_bits` (the LoRA
  sampler below the merge layer uses them too) and are re-exported here.

Reference: docs/width_engine.md; ``docs/merge_kernels.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import tree as mtree
from ..random_bits import hash_uniform_bits, hash_uniform_bits_offset, hash_uniform_bits_reference

__all__ = [
    "MAGNITUDE_FLOOR",
    "compute_dtype",
    "count_at_least",
    "count_at_least_reference",
    "hash_uniform_bits",
    "hash_uniform_bits_offset",
    "hash_uniform_bits_reference",
    "max_tasks",
    "max_tasks_reference",
    "row_chunks",
    "sum_parts",
    "sum_parts_reference",
    "RowAccess",
    "search_threshold",
    "threshold_search",
    "threshold_search_buffer",
    "threshold_sort",
]

MAGNITUDE_FLOOR = 2.0**-100
"""Magnitudes at or below this value are ranked as ties with 0 by the top-k search."""

_NUM_SAMPLES = 1 << 14  # sample size for the first two probes of the search


# --------------------------------------------------------------------------------------
# task-axis reductions on per-task parts
# --------------------------------------------------------------------------------------


def sum_parts(parts: Sequence[jax.Array], weights: jax.Array | None = None) -> jax.Array:
    r""":math:`\sum_t w_t p_t` over a list of per-task parts, unrolled over ``T``.

    ``tree.sum_tasks(jnp.stack(parts))``: XLA:CPU fuses the stack away and evaluates each
    output entry from the ``T`` inputs in one pass (the same maths with a ``[T, ...]``
    ``where`` before the sum runs several times slower; ``docs/merge_kernels.md``).
    """
    return mtree.sum_tasks(jnp.stack(parts), weights)


def sum_parts_reference(parts: Sequence[jax.Array], weights: jax.Array | None = None) -> jax.Array:
    """Plain ``jnp.sum`` over the stacked parts (same value up to summation order)."""
    x = jnp.stack(parts)
    if weights is not None:
        x = x * weights.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sum(x, axis=0)


def max_tasks(x: jax.Array) -> jax.Array:
    """Maximum over the task axis of ``x`` ``[T, ...]``, unrolled like ``tree.sum_tasks``."""
    acc = x[0]
    for t in range(1, x.shape[0]):
        acc = jnp.maximum(acc, x[t])
    return acc


def max_tasks_reference(x: jax.Array) -> jax.Array:
    """Plain ``jnp.max(x, axis=0)``."""
    return jnp.max(x, axis=0)


# --------------------------------------------------------------------------------------
# top-k threshold: bit patterns, exact counts, search and sort
# --------------------------------------------------------------------------------------


def compute_dtype(leaves: Sequence[jax.Array]) -> Any:
    """The float dtype the magnitudes are ranked in: the widest leaf dtype, >= float32."""
    size = max(max(jnp.dtype(x.dtype).itemsize for x in leaves), 4)
    return jnp.dtype(jnp.float64) if size >= 8 else jnp.dtype(jnp.float32)


def _int_dtype(cdt: Any) -> Any:
    return jnp.dtype(jnp.int64) if jnp.dtype(cdt).itemsize == 8 else jnp.dtype(jnp.int32)


def _float_bits(v: float, cdt: Any) -> int:
    np_f = np.float64 if jnp.dtype(cdt).itemsize == 8 else np.float32
    np_i = np.int64 if jnp.dtype(cdt).itemsize == 8 else np.int32
    return int(np.array(v, dtype=np_f).view(np_i))


def _to_bits(a: jax.Array, cdt: Any) -> jax.Array:
    return jax.lax.bitcast_convert_type(a.astype(cdt), _int_dtype(cdt))


def _from_bits(b: jax.Array, cdt: Any) -> jax.Array:
    return jax.lax.bitcast_convert_type(b.astype(_int_dtype(cdt)), jnp.dtype(cdt))


def _magnitude(x: jax.Array, cdt: Any) -> jax.Array:
    return jnp.abs(x).astype(cdt)


def _lump(a: jax.Array) -> jax.Array:
    """Rank magnitudes <= MAGNITUDE_FLOOR as 0 (see the module docstring)."""
    return jnp.where(a <= MAGNITUDE_FLOOR, jnp.zeros_like(a), a)


# --------------------------------------------------------------------------------------
# exact count pass
# --------------------------------------------------------------------------------------


def _exact_sum_limit(cdt: Any) -> int:
    return 1 << 24 if jnp.dtype(cdt).itemsize == 4 else 1 << 52


@functools.cache
def _chunk_len(num: int, limit: int) -> int:
    """Largest divisor of ``num`` not above ``limit`` (0 if only small ones exist)."""
    if num <= limit:
        return num
    for num_chunks in range(-(-num // limit), num + 1):
        if num % num_chunks == 0:
            length = num // num_chunks
            return length if length >= limit // 16 else 0
    return 0  # pragma: no cover


def count_at_least(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    r"""Exact :math:`\#\{i : a_i \ge t\}`, :math:`t = \mathrm{float}(b)`, over ``mags``.

    Computed as :math:`\frac{1}{u}\sum_i \max(\min(|x_i|, t) - t^-, 0)` with :math:`t^-` the
    float below :math:`t` and :math:`u = t - t^-` (see the module docstring): only
    ``min`` / ``max`` / ``sub`` / ``add``, which XLA:CPU fuses into one vectorized reduction
    (a sum of a comparison is split into slow reduce-window trees for long rows).
    Requires ``b >= floor bits`` so that :math:`u` is a normal float. Each array's scalars
    ``t``, ``t^-`` and ``0`` are selected on the running total (``total < 0``, always
    false): without this, XLA merges the scalar broadcasts of same-shaped arrays (e.g. the
    chunks of one long row) and writes them out as full arrays, which made two 8e6-entry
    counts 10-20x slower than one 1.6e7-entry count.
    """
    t0 = _from_bits(b, cdt)
    tp0 = _from_bits(b - 1, cdt)
    u = t0 - tp0
    limit = _exact_sum_limit(cdt)
    total = jnp.asarray(0, jnp.int32)
    for a in mags:
        never = total < 0
        t, tp, zero = (jnp.where(never, jnp.asarray(jnp.nan, cdt), v) for v in (t0, tp0, 0))
        num = a.shape[0]
        if num > limit:
            length = _chunk_len(num, limit)
            if length:
                pieces = [a.reshape(num // length, length)]
            else:
                main = (num // limit) * limit
                pieces = [a[:main].reshape(-1, limit), a[main:]]
        else:
            pieces = [a]
        for p in pieces:
            s = jnp.sum(jnp.maximum(jnp.minimum(p, t) - tp, zero), axis=-1)
            c = (s / u).astype(jnp.int32)
            total = total + (jnp.sum(c, dtype=jnp.int32) if c.ndim else c)
    return total


def count_at_least_reference(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    r"""Plain ``sum(a >= t)`` over ``mags`` with :math:`t = \mathrm{float}(b)` (int32)."""
    t = _from_bits(b, cdt)
    return sum(jnp.sum(a >= t, dtype=jnp.int32) for a in mags)


def _max_below(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    """``max{a_i : a_i < float(b)}`` over the magnitudes ``mags`` (-1 if none).

    Scalars selected on the running result (never NaN), as in :func:`count_at_least`.
    """
    t0 = _from_bits(b, cdt)
    nan = jnp.asarray(jnp.nan, cdt)
    acc = jnp.asarray(-1, cdt)
    for a in mags:
        never = jnp.isnan(acc)
        t, neg = (jnp.where(never, nan, v) for v in (t0, -1))
        acc = jnp.maximum(acc, jnp.max(jnp.where(a < t, a, neg)))
    return acc


def _min_at_least(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    """``min{a_i : a_i >= float(b)}`` over the magnitudes ``mags`` (+inf if none)."""
    t0 = _from_bits(b, cdt)
    nan = jnp.asarray(jnp.nan, cdt)
    acc = jnp.asarray(jnp.inf, cdt)
    for a in mags:
        never = jnp.isnan(acc)
        t, inf = (jnp.where(never, nan, v) for v in (t0, jnp.inf))
        acc = jnp.minimum(acc, jnp.min(jnp.where(a >= t, a, inf)))
    return acc


# --------------------------------------------------------------------------------------
# threshold: sort path and search path
# --------------------------------------------------------------------------------------


@functools.cache
def _sample_index(num: int, size: int) -> np.ndarray:
    """Fixed stratified sample of ``size`` positions in ``range(num)`` (one per stratum)."""
    rng = np.random.default_rng(num)
    edges = (np.arange(size + 1, dtype=np.int64) * num) // size
    return (edges[:-1] + (rng.random(size) * (edges[1:] - edges[:-1])).astype(np.int64)).astype(
        np.int32
    )


def threshold_sort(flat: Sequence[jax.Array], k: jax.Array, cdt: Any) -> jax.Array:
    r"""Reference :math:`k`-th largest magnitude of each row by a sort (``+inf`` where ``k = 0``).

    Args:
      flat: arrays ``[R, n_l]``; row ``r`` is the concatenation of every ``flat[l][r]``.
      k: ``[R]`` int32.
      cdt: the ranking dtype (:func:`compute_dtype`).

    Returns:
      ``[R]`` thresholds in ``cdt``; magnitudes :math:`\le` :data:`MAGNITUDE_FLOOR` rank as 0.
    """
    a = jnp.concatenate([_lump(_magnitude(f, cdt)) for f in flat], axis=1)
    num = a.shape[1]
    # non-negative floats sort like their bit patterns; integer sorts are much faster
    s = _from_bits(jnp.sort(_to_bits(a, cdt), axis=1), cdt)
    idx = jnp.clip(num - k, 0, num - 1)
    thr = jnp.take_along_axis(s, idx[:, None], axis=1)[:, 0]
    return jnp.where(k <= 0, jnp.asarray(jnp.inf, cdt), thr)


class RowAccess(NamedTuple):
    """What the threshold search needs from one row of magnitudes (``cdt`` entries).

    ``num``: entries in the row (int, or a traced int32 scalar); ``sample``: a fixed
    stratified sample of the magnitudes (1-D); ``count(b)``, ``max_below(b)``,
    ``min_at_least(b)``: :func:`count_at_least` and the max / min passes at the float of
    bit pattern ``b`` (a max below of ``-1`` or ``0`` where nothing lies below is fine;
    ``min_at_least(0)`` is the smallest magnitude).
    """

    num: Any
    sample: jax.Array
    count: Callable[[jax.Array], jax.Array]
    max_below: Callable[[jax.Array], jax.Array]
    min_at_least: Callable[[jax.Array], jax.Array]


def _search_row(row: Sequence[jax.Array], k: jax.Array, cdt: Any) -> jax.Array:
    """Exact k-th largest of the magnitudes ``row`` (1-D ``cdt`` arrays: one task's leaves)."""
    num = sum(f.shape[0] for f in row)
    parts = []
    for f in row:
        n_l = f.shape[0]
        m_l = min(n_l, max(1, round(_NUM_SAMPLES * n_l / num)))
        parts.append(f[_sample_index(n_l, m_l)])
    access = RowAccess(
        num=num,
        sample=jnp.concatenate(parts),
        count=lambda b: count_at_least(row, b, cdt),
        max_below=lambda b: _max_below(row, b, cdt),
        min_at_least=lambda b: _min_at_least(row, b, cdt),
    )
    return search_threshold(access, k, cdt)


def search_threshold(row: RowAccess, k: jax.Array, cdt: Any) -> jax.Array:
    r"""Exact :math:`k`-th largest magnitude of one row by a search on counts.

    The search of :func:`threshold_search` (module docstring) on any row layout: ``row``
    gives the row's passes (:class:`RowAccess`). Returns ``+inf`` where ``k <= 0``;
    magnitudes :math:`\le` :data:`MAGNITUDE_FLOOR` rank as 0.
    """
    idt = _int_dtype(cdt)
    num = row.num
    numf = num if isinstance(num, int) else num.astype(cdt)
    floor_b = _float_bits(MAGNITUDE_FLOOR, cdt) + 1
    inf_b = _float_bits(np.inf, cdt)
    nbits = 8 * jnp.dtype(cdt).itemsize - 1
    max_iter = 4 * nbits + 8

    # -- first probe and a slope estimate from a sorted stratified sample -----------------
    s = jnp.sort(_to_bits(_lump(row.sample), cdt))
    m = s.shape[0]
    kf = k.astype(cdt)
    q = kf / numf
    j = jnp.clip(m - jnp.ceil(q * m).astype(jnp.int32), 0, m - 1)
    delta = jnp.ceil(3.0 * jnp.sqrt(m * q * (1.0 - q))).astype(jnp.int32) + 2
    j_lo, j_hi = jnp.clip(j - delta, 0, m - 1), jnp.clip(j + delta, 0, m - 1)
    guess = s[j]
    # counts per bit step near the guess (counts fall as the bit pattern grows)
    slope = ((j_hi - j_lo).astype(cdt) * (numf / m) + 1) / jnp.maximum(s[j_hi] - s[j_lo], 1).astype(
        cdt
    )

    # -- search on the invariant c(lo) >= k > c(hi) ---------------------------------------
    def settled(lo: jax.Array, hi: jax.Array) -> jax.Array:
        return (hi - lo <= 1) | ((lo == 0) & (hi <= floor_b))

    def cond(st: dict) -> jax.Array:
        done = (k <= 0) | settled(st["lo"], st["hi"]) | (st["c_hi"] == k - 1) | (st["c_lo"] == k)
        return ~done & (st["it"] < max_iter)

    def body(st: dict) -> dict:
        lo, hi, c_lo, c_hi, it = st["lo"], st["hi"], st["c_lo"], st["c_hi"], st["it"]
        width = hi - lo
        wf = width.astype(cdt)
        target = kf - 0.5
        # Candidate offsets above lo are computed in floating point (bit patterns are not
        # exact in float32; offsets only need to be roughly right, counts decide).
        # Secant through the last two probes, or regula falsi on the bracket if the
        # secant leaves it.
        p1, c1, p0, c0 = st["p_last"], st["c_last"], st["p_prev"], st["c_prev"]
        dc = (c1 - c0).astype(cdt)
        off_secant = (p1 - lo).astype(cdt) + (c1.astype(cdt) - target) * (p1 - p0).astype(
            cdt
        ) / jnp.where(dc == 0, 1, dc)
        secant_ok = (dc != 0) & (off_secant > 0) & (off_secant < wf)
        off_falsi = (c_lo.astype(cdt) - target) / jnp.maximum(c_lo - c_hi, 1).astype(cdt) * wf
        off = jnp.where(secant_ok, off_secant, off_falsi)
        # second probe: a Newton step from the first with the sample's slope
        off_newton = (p1 - lo).astype(cdt) + (c1.astype(cdt) - target) / slope
        off = jnp.where(it == 1, off_newton, off)
        off = jnp.where(jnp.isfinite(off), off, 0.5 * wf)
        cand = lo + jnp.clip(jnp.floor(off), 1, jnp.maximum(wf - 1, 1)).astype(idt)
        # after two steps that did not halve the bracket: one jump to the largest value
        # below hi (settles a tie at once), then bisection until the bracket halves
        stall = st["stall"]
        cand = jnp.where(stall > 2, lo + width // 2, cand)
        use_max = (stall == 2) & (it >= 2)
        cand = jnp.where(it == 0, guess, cand)
        cand = jax.lax.cond(
            use_max,
            lambda: _to_bits(jnp.maximum(row.max_below(hi), 0), cdt),
            lambda: cand,
        )
        cand = jnp.clip(cand, jnp.maximum(lo + 1, floor_b), hi - 1)
        c = row.count(cand)
        up = c >= k
        lo2, c_lo2 = jnp.where(up, cand, lo), jnp.where(up, c, c_lo)
        hi2, c_hi2 = jnp.where(up, hi, cand), jnp.where(up, c_hi, c)
        # a jump to the largest value v below hi with c(v) >= k pins the answer: v
        hi2 = jnp.where(use_max & up, lo2 + 1, hi2)
        halved = (hi2 - lo2) <= width // 2
        return dict(
            lo=lo2,
            hi=hi2,
            c_lo=c_lo2,
            c_hi=c_hi2,
            p_prev=p1,
            c_prev=c1,
            p_last=cand,
            c_last=c,
            stall=jnp.where(halved | (it < 2), 0, stall + 1),
            it=it + 1,
        )

    init = dict(
        lo=jnp.asarray(0, idt),
        hi=jnp.asarray(inf_b, idt),
        c_lo=jnp.asarray(num, jnp.int32),
        c_hi=jnp.asarray(0, jnp.int32),
        p_prev=jnp.asarray(0, idt),
        c_prev=jnp.asarray(num, jnp.int32),
        p_last=jnp.asarray(inf_b, idt),
        c_last=jnp.asarray(0, jnp.int32),
        stall=jnp.asarray(0, jnp.int32),
        it=jnp.asarray(0, jnp.int32),
    )
    st = jax.lax.while_loop(cond, body, init)
    lo, hi = st["lo"], st["hi"]

    # -- exact finish: one max / min pass when the bracket pins the k-th value ------------
    by_max = ~settled(lo, hi) & (st["c_hi"] == k - 1)  # the k-th largest: largest below hi
    by_min = ~settled(lo, hi) & ~by_max & (st["c_lo"] == k)  # ... smallest at or above lo
    thr = _from_bits(lo, cdt)
    thr = jax.lax.cond(by_max, lambda: row.max_below(hi), lambda: thr)
    thr = jax.lax.cond(by_min, lambda: row.min_at_least(lo), lambda: thr)
    thr = _lump(thr)
    return jnp.where(k <= 0, jnp.asarray(jnp.inf, cdt), thr)


def row_chunks(num: int, max_chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``ceil(num / max_chunk)`` near-equal consecutive chunks of a row.

    Chunk lengths differ by at most one, so a row compiles at most two reduction shapes.
    """
    if max_chunk < 1:
        raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
    num_chunks = max(1, -(-num // max_chunk))
    edges = [(i * num) // num_chunks for i in range(num_chunks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def threshold_search(
    flat: Sequence[jax.Array], k: jax.Array, cdt: Any, *, max_chunk: int | None = None
) -> jax.Array:
    """The same thresholds as :func:`threshold_sort` by a search on counts, row by row.

    The rows run one after another in a ``lax.map``: each row's magnitudes are materialized
    once, so a finished row stops costing passes and a row stays in cache for all its
    passes, and the search is compiled once whatever the number of rows
    (``docs/merge_kernels.md``). Each leaf's row is materialized in consecutive chunks of at
    most ``max_chunk`` entries (default ``2**24`` for float32: the longest run whose count
    :func:`count_at_least` sums exactly in one reduction), each its own buffer, so every
    count pass is a whole-array reduction (XLA:CPU runs those at memory bandwidth; a
    reduction over a reshaped or sliced row ran 5-20x slower). Arguments and result as
    :func:`threshold_sort`; the chunking changes no value.
    """
    limit = _exact_sum_limit(cdt) if max_chunk is None else min(max_chunk, _exact_sum_limit(cdt))

    def one_row(r: jax.Array) -> jax.Array:
        mags = [
            _magnitude(jax.lax.dynamic_slice_in_dim(f, r, 1, axis=0)[0, lo:hi], cdt)
            for f in flat
            for lo, hi in row_chunks(f.shape[1], limit)
        ]
        return _search_row(mags, k[r], cdt)

    return jax.lax.map(one_row, jnp.arange(k.shape[0]))


# --------------------------------------------------------------------------------------
# one search program for every row length: a padded row buffer
# --------------------------------------------------------------------------------------

_SAMPLE_U = np.random.default_rng(0).random(_NUM_SAMPLES).astype(np.float32)


def _fold_chunks(
    buf: jax.Array, num: jax.Array, chunks: tuple[int, ...], fn: Any, init: Any
) -> Any:
    """``fn(acc, piece)`` over consecutive pieces of ``buf`` covering its first ``num`` entries.

    Level ``j`` takes pieces of ``chunks[j]`` entries while a whole one fits; the last level
    covers the rest up to a multiple of ``chunks[-1]`` (padding in ``buf``). Every piece is
    a whole-array reduction of a static length, so one program serves every ``num``.
    """
    start, rest, acc = jnp.asarray(0, jnp.int32), num, init
    for level, size in enumerate(chunks):
        cnt = (rest + size - 1) // size if level == len(chunks) - 1 else rest // size

        def body(i: jax.Array, a: Any, start: jax.Array = start, size: int = size) -> Any:
            return fn(a, jax.lax.dynamic_slice_in_dim(buf, start + i * size, size))

        acc = jax.lax.fori_loop(0, cnt, body, acc)
        start, rest = start + cnt * size, rest - cnt * size
    return acc


def _sample_positions(num: jax.Array, m: int) -> jax.Array:
    """One position per stratum of ``range(num)`` (``m`` strata), from fixed uniforms."""
    i = jnp.arange(m, dtype=jnp.int32)
    w, r = num // m, num % m
    off = jnp.floor(jnp.asarray(_SAMPLE_U[:m]) * w.astype(jnp.float32)).astype(jnp.int32)
    return i * w + (i * r) // m + jnp.clip(off, 0, jnp.maximum(w - 1, 0))


def threshold_search_buffer(
    buf: jax.Array, num: Any, k: jax.Array, *, chunks: tuple[int, ...]
) -> jax.Array:
    r"""Exact :math:`k`-th largest of the first ``num`` entries of ``buf`` (magnitudes).

    The search of :func:`threshold_search` with ``num`` a traced value: ``buf`` ``[B]``
    holds one row's magnitudes (in the ranking dtype, :func:`compute_dtype`) followed by
    ``+inf`` up to a multiple of ``chunks[-1]`` (every count counts each of them, and is
    corrected; no max below and no minimum changes), so one compiled program serves every
    row length up to ``B``. Each pass runs over pieces of
    ``chunks`` entries (each at most the exact-sum limit, e.g. ``(2**20, 2**16)``), never
    over the padding beyond.

    Args:
      buf: ``[B]`` float32 / float64 magnitudes, ``+inf``-padded.
      num: the row length (int32 scalar, traceable), ``1 <= num <= B``.
      k: int32 scalar, ``0 <= k <= num``.
      chunks: decreasing piece lengths, each a multiple of the next.

    Returns:
      The threshold (``+inf`` where ``k = 0``), equal to :func:`threshold_sort`'s.

    Example:
      >>> buf = jnp.array([3.0, 1.0, 2.0, jnp.inf])
      >>> threshold_search_buffer(buf, 3, jnp.int32(2), chunks=(2,))
      Array(2., dtype=float32)
    """
    cdt = buf.dtype
    if any(c > _exact_sum_limit(cdt) for c in chunks):
        raise ValueError(f"chunks {chunks} exceed the exact-sum limit {_exact_sum_limit(cdt)}")
    num = jnp.asarray(num, jnp.int32)
    num_pad = (num + chunks[-1] - 1) // chunks[-1] * chunks[-1] - num

    def count(b: jax.Array) -> jax.Array:
        def add(tot: jax.Array, a: jax.Array) -> jax.Array:
            return tot + count_at_least([a], b, cdt)

        return _fold_chunks(buf, num, chunks, add, jnp.asarray(0, jnp.int32)) - num_pad

    def max_below(b: jax.Array) -> jax.Array:
        def mx(acc: jax.Array, a: jax.Array) -> jax.Array:
            return jnp.maximum(acc, _max_below([a], b, cdt))

        return _fold_chunks(buf, num, chunks, mx, jnp.asarray(-1, cdt))

    def min_at_least(b: jax.Array) -> jax.Array:
        def mn(acc: jax.Array, a: jax.Array) -> jax.Array:
            return jnp.minimum(acc, _min_at_least([a], b, cdt))

        return _fold_chunks(buf, num, chunks, mn, jnp.asarray(jnp.inf, cdt))

    access = RowAccess(
        num=num,
        sample=buf[_sample_positions(num, _NUM_SAMPLES)],
        count=count,
        max_below=max_below,
        min_at_least=min_at_least,
    )
    return search_threshold(access, k, cdt)
