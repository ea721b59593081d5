r"""Sparsifiers shared by the TIES / DARE / RHT families: exact magnitude top-k and DARE masks.

**Magnitude top-k.** PEFT (``magnitude_based_pruning``) keeps the
:math:`k = \lfloor \rho\, n \rfloor` largest :math:`|x|` of a tensor with ``torch.topk``.
Sorting (or ``jax.lax.top_k``) a ``1e7``-entry row costs 20+ s on XLA:CPU
(DESIGN.md section 8), so the threshold is found by *search on counts* instead:

.. math::
   \theta_k = \max\{\, t : c(t) \ge k \,\}, \qquad c(t) = \#\{ i : |x_i| \ge t \},

which is the :math:`k`-th largest magnitude. The kept set is
:math:`\{ i : |x_i| \ge \theta_k \}`; it has exactly :math:`k` elements unless several
entries tie at :math:`\theta_k`, in which case **all tied entries are kept** (``>= k`` kept;
the official TIES code does the same, ``>=``; ``torch.topk`` would break the tie
arbitrarily). ``k = 0`` keeps nothing (:math:`\theta = +\infty`), as ``torch.topk(k=0)``.

How the search works (exact; the tolerance-free invariant decides, heuristics only pick
where to look):

* For non-negative IEEE floats the bit pattern, read as an integer, is monotone in the
  value, so :math:`\theta_k` is found by a search over integers ``b`` (31 bits for float32,
  63 for float64) on the invariant ``c(lo) >= k > c(hi)``. It ends when ``hi = lo + 1``
  (then :math:`\theta_k` is the float with bits ``lo``), or when ``c(hi) = k - 1`` (then
  :math:`\theta_k` is the largest magnitude below ``hi``: one max pass), or when
  ``c(lo) = k`` (the smallest magnitude at or above ``lo``: one min pass).
* Each probe is one pass over the task's row. A plain bisection needs 31 passes; here the
  first probe is the matching quantile of a sorted stratified sample of ``2**14``
  magnitudes, the second a Newton step with the sample's slope, later ones secant steps
  through the last two probes (regula falsi on the bracket when the secant leaves it).
  After two steps that fail to halve the bracket, one probe jumps to the largest magnitude
  below ``hi`` (this settles a tie at the threshold at once) and then bisection runs until
  the bracket halves. Worst case ``4 * 31 + 2`` passes; on smooth data about 5-8 (measured
  in simulation over normal, Laplace, t3, log-normal, quantized and sparse rows).
* Rows (tasks) are searched one after another, each in its own ``while_loop`` on its own
  materialized magnitudes, so a finished row stops costing passes and a row stays in
  cache for all its passes (see :func:`_threshold_search`). Measured on the shared 2-core
  CPU: TIES on ``[8, 1e7]`` float32 (threshold search included) about 9x the NumPy
  ``X.sum(0)`` probe, and 13-16x on ``[8, 1e6]`` (where the probe runs from cache);
  ``np.partition`` alone takes about 30x, PEFT's ``torch.topk`` TIES 232x.
* A count pass must run at memory bandwidth. XLA:CPU (jax 0.10) vectorizes a float sum
  with fused ``min`` / ``max`` / ``sub`` but splits a long sum of a comparison
  (``sum(a >= t)``) into slow reduce-window trees, so the count is computed as
  :math:`c(t) = \frac{1}{u} \sum_i \max(\min(|x_i|, t) - t^-, 0)` where :math:`t^-` is the
  float just below :math:`t` and :math:`u = t - t^-` (exact by Sterbenz' lemma). Each term
  is exactly :math:`0` or :math:`u`, so every partial sum is an exact multiple of :math:`u`
  while it stays below :math:`2^{24} u` (float32): rows longer than :math:`2^{24}` are
  summed in chunks, the chunk counts added as integers.
* To keep :math:`u` a normal float (CPUs flush subnormals to zero), probes stay at or
  above :math:`2^{-100}`: **magnitudes** :math:`\le 2^{-100}` **are ranked as ties with
  0** (if the :math:`k`-th largest magnitude is that small, the threshold is 0 and every
  entry is kept). Task vectors never hold such values in practice; the sort path below
  applies the same rule so that both paths agree bit for bit.
* Rows with at most ``2**15`` entries (all leaves together) are simply sorted.

**DARE masks.** :func:`dare_keep_mask` draws :math:`m \sim \mathrm{Bernoulli}(\rho)`
(``rho`` = keep probability = PEFT's ``density``) for a whole ``[T, ...]`` leaf from one key.
Pytree operators give leaf ``i`` the key ``fold_in(key, i)`` (:func:`dare_keep_masks`).
The bits come from a counter-based hash of the key (:func:`hash_uniform_bits`), not from
``jax.random``'s threefry, which costs 200x a memory pass on XLA:CPU; the masks are still
a deterministic function of the JAX key, and their mean, independence across tasks /
leaves / keys and DARE's unbiasedness are tested by Monte Carlo.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._types import Key
from ._common import is_concrete, leaf_keys

__all__ = [
    "MAGNITUDE_FLOOR",
    "dare_keep_mask",
    "dare_keep_mask_rows",
    "dare_keep_masks",
    "hash_uniform_bits",
    "magnitude_threshold",
    "num_kept",
    "topk_mask",
]

MAGNITUDE_FLOOR = 2.0**-100
"""Magnitudes at or below this value are ranked as ties with 0 by the top-k search."""

_SORT_MAX = 1 << 15  # rows up to this many entries are sorted, longer ones searched
_NUM_SAMPLES = 1 << 14  # sample size for the first two probes of the search


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


# --------------------------------------------------------------------------------------
# dtypes and bit patterns
# --------------------------------------------------------------------------------------


def _compute_dtype(leaves: Sequence[jax.Array]) -> Any:
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


def _count_ge(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    r"""Exact :math:`\#\{i : a_i \ge t\}`, :math:`t = \mathrm{float}(b)`, over ``mags``.

    Computed as :math:`\frac{1}{u}\sum_i \max(\min(|x_i|, t) - t^-, 0)` with :math:`t^-` the
    float below :math:`t` and :math:`u = t - t^-` (see the module docstring): only
    ``min`` / ``max`` / ``sub`` / ``add``, which XLA:CPU fuses into one vectorized reduction
    (a sum of a comparison is split into slow reduce-window trees for long rows).
    Requires ``b >= floor bits`` so that :math:`u` is a normal float.
    """
    t = _from_bits(b, cdt)
    tp = _from_bits(b - 1, cdt)
    u = t - tp
    limit = _exact_sum_limit(cdt)
    total = jnp.asarray(0, jnp.int32)
    for a in mags:
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
            s = jnp.sum(jnp.maximum(jnp.minimum(p, t) - tp, 0), axis=-1)
            c = (s / u).astype(jnp.int32)
            total = total + (jnp.sum(c, dtype=jnp.int32) if c.ndim else c)
    return total


def _max_below(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    """``max{a_i : a_i < float(b)}`` over the magnitudes ``mags`` (-1 if none)."""
    t = _from_bits(b, cdt)
    neg = jnp.asarray(-1, cdt)
    return jnp.max(jnp.stack([jnp.max(jnp.where(a < t, a, neg)) for a in mags]))


def _min_at_least(mags: Sequence[jax.Array], b: jax.Array, cdt: Any) -> jax.Array:
    """``min{a_i : a_i >= float(b)}`` over the magnitudes ``mags`` (+inf if none)."""
    t = _from_bits(b, cdt)
    inf = jnp.asarray(jnp.inf, cdt)
    return jnp.min(jnp.stack([jnp.min(jnp.where(a >= t, a, inf)) for a in mags]))


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


def _threshold_sort(flat: Sequence[jax.Array], k: jax.Array, cdt: Any) -> jax.Array:
    a = jnp.concatenate([_lump(_magnitude(f, cdt)) for f in flat], axis=1)
    num = a.shape[1]
    # non-negative floats sort like their bit patterns; integer sorts are much faster
    s = _from_bits(jnp.sort(_to_bits(a, cdt), axis=1), cdt)
    idx = jnp.clip(num - k, 0, num - 1)
    thr = jnp.take_along_axis(s, idx[:, None], axis=1)[:, 0]
    return jnp.where(k <= 0, jnp.asarray(jnp.inf, cdt), thr)


def _search_row(row: Sequence[jax.Array], k: jax.Array, cdt: Any) -> jax.Array:
    """Exact k-th largest of the magnitudes ``row`` (1-D ``cdt`` arrays: one task's leaves)."""
    idt = _int_dtype(cdt)
    num = sum(f.shape[0] for f in row)
    floor_b = _float_bits(MAGNITUDE_FLOOR, cdt) + 1
    inf_b = _float_bits(np.inf, cdt)
    nbits = 8 * jnp.dtype(cdt).itemsize - 1
    max_iter = 4 * nbits + 8

    # -- first probe and a slope estimate from a sorted stratified sample -----------------
    parts = []
    for f in row:
        n_l = f.shape[0]
        m_l = min(n_l, max(1, round(_NUM_SAMPLES * n_l / num)))
        parts.append(f[_sample_index(n_l, m_l)])
    s = jnp.sort(_to_bits(_lump(jnp.concatenate(parts)), cdt))
    m = s.shape[0]
    kf = k.astype(cdt)
    q = kf / num
    j = jnp.clip(m - jnp.ceil(q * m).astype(jnp.int32), 0, m - 1)
    delta = jnp.ceil(3.0 * jnp.sqrt(m * q * (1.0 - q))).astype(jnp.int32) + 2
    j_lo, j_hi = jnp.clip(j - delta, 0, m - 1), jnp.clip(j + delta, 0, m - 1)
    guess = s[j]
    # counts per bit step near the guess (counts fall as the bit pattern grows)
    slope = ((j_hi - j_lo).astype(cdt) * (num / m) + 1) / jnp.maximum(s[j_hi] - s[j_lo], 1).astype(
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
            lambda: _to_bits(jnp.maximum(_max_below(row, hi, cdt), 0), cdt),
            lambda: cand,
        )
        cand = jnp.clip(cand, jnp.maximum(lo + 1, floor_b), hi - 1)
        c = _count_ge(row, cand, cdt)
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
    thr = jax.lax.cond(by_max, lambda: _max_below(row, hi, cdt), lambda: thr)
    thr = jax.lax.cond(
        by_min,
        lambda: jax.lax.cond(
            lo == 0,
            lambda: jnp.min(jnp.stack([jnp.min(a) for a in row])),
            lambda: _min_at_least(row, lo, cdt),
        ),
        lambda: thr,
    )
    thr = _lump(thr)
    return jnp.where(k <= 0, jnp.asarray(jnp.inf, cdt), thr)


def _threshold_search(flat: Sequence[jax.Array], k: jax.Array, cdt: Any) -> jax.Array:
    """One independent search per row (a finished row stops costing passes).

    Row ``r``'s magnitudes are materialized once (XLA:CPU's vectorized reduction cannot
    read a slice in place) by a select on a flag computed from row ``r - 1``'s result
    (always false): this data dependency makes XLA run the rows one after another, so a
    row's magnitudes stay in cache for all its passes instead of all rows' copies being
    made up front (measured 3-4x faster on ``[8, 1e6]``).
    """
    out = []
    after_prev = jnp.asarray(False)
    nan = jnp.asarray(jnp.nan, cdt)
    for r in range(k.shape[0]):
        mags = [jnp.where(after_prev, nan, _magnitude(f[r], cdt)) for f in flat]
        thr = _search_row(mags, k[r], cdt)
        after_prev = jnp.isnan(thr)
        out.append(thr)
    return jnp.stack(out)


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
    cdt = _compute_dtype(flat)
    num = sum(f.shape[1] for f in flat)
    if num >= 2**31:
        raise ValueError(f"top-k over {num} >= 2**31 entries per row is not supported")
    k = jnp.broadcast_to(jnp.asarray(k).astype(jnp.int32), (rows,))
    if method == "auto":
        method = "sort" if num <= _SORT_MAX else "search"
    if method == "sort":
        return _threshold_sort(flat, k, cdt)
    if method == "search":
        return _threshold_search(flat, k, cdt)
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
# DARE
# --------------------------------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
    """C. Wellons' ``lowbias32`` integer hash (a bijection of uint32, full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _key_words(key: Key) -> tuple[jax.Array, jax.Array]:
    """Two uint32 seed words from a typed or raw (``uint32[2]``) PRNG key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jr.key_data(key)
    else:
        data = jnp.asarray(key)
    data = data.astype(jnp.uint32).reshape(-1)
    s0, s1 = data[0], data[-1]
    for i in range(1, data.shape[0] - 1):  # wider keys (rbg): fold the middle words in
        s0 = _mix32(s0 ^ data[i])
    return s0, s1


def _hash_bits(key: Key, shape: tuple[int, ...], offset: int) -> jax.Array:
    num = int(np.prod(shape, dtype=np.int64))
    s0, s1 = _key_words(key)
    idx = jax.lax.iota(jnp.uint32, num).reshape(shape)
    if offset:
        idx = idx + jnp.uint32(offset)
    return _mix32(_mix32(idx ^ s0) + s1)


def _keep_from_bits(bits: jax.Array, density: Any) -> jax.Array:
    u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    return u < jnp.asarray(density).astype(jnp.float32)


def hash_uniform_bits(key: Key, shape: tuple[int, ...]) -> jax.Array:
    r"""Counter-based uint32 random bits: :math:`h(h(i \oplus s_0) + s_1)`, :math:`i` = flat index.

    :math:`h` is the ``lowbias32`` hash, :math:`(s_0, s_1)` the key's two words. Unlike
    ``jax.random.bits`` (threefry), it costs about one memory pass and compiles in a
    fraction of a second on XLA:CPU (``jr.bernoulli`` on ``[8, 1e6]`` measured 200x a
    NumPy ``X.sum(0)`` pass and 1.7-2.7 s to compile). Use keys derived with ``fold_in`` /
    ``split`` (well-mixed words), as the operators do.
    """
    num = int(np.prod(shape, dtype=np.int64))
    if num >= 2**32:
        raise ValueError(f"hash_uniform_bits: {num} >= 2**32 draws from one key")
    return _hash_bits(key, shape, 0)


def dare_keep_mask(key: Key, shape: tuple[int, ...], density: Any) -> jax.Array:
    r"""DARE keep mask :math:`m \sim \mathrm{Bernoulli}(\rho)` of ``shape`` from one key.

    ``density`` :math:`\rho` is the keep probability (PEFT / mergekit ``density``; the DARE
    paper's drop rate is :math:`p = 1 - \rho`). Entry :math:`i` is kept iff
    :math:`u_i < \rho` with :math:`u_i = \lfloor b_i / 2^8 \rfloor 2^{-24}` a float32
    uniform on a :math:`2^{-24}` grid and :math:`b_i` the bits of
    :func:`hash_uniform_bits` (so :math:`P(\text{keep}) = \lceil 2^{24}\rho \rceil / 2^{24}`,
    within :math:`6\cdot10^{-8}` of :math:`\rho`; ``density = 1`` keeps everything).
    """
    return _keep_from_bits(hash_uniform_bits(key, shape), density)


def dare_keep_mask_rows(key: Key, shape: tuple[int, ...], density: Any) -> list[jax.Array]:
    """``dare_keep_mask(key, shape, density)`` as a list of its rows ``[0], [1], ...``.

    Drawn row by row (the counter of row ``t`` starts at ``t * prod(shape[1:])``), so the
    rows are bit-identical to the slices of the full mask; the kernels use this form.
    """
    num = int(np.prod(shape, dtype=np.int64))
    if num >= 2**32:
        raise ValueError(f"dare_keep_mask_rows: {num} >= 2**32 draws from one key")
    row = int(np.prod(shape[1:], dtype=np.int64))
    return [
        _keep_from_bits(_hash_bits(key, tuple(shape[1:]), t * row), density)
        for t in range(shape[0])
    ]


def dare_keep_masks(key: Key, task_vectors: Any, density: Any) -> Any:
    """The DARE operators' masks: leaf ``i`` uses ``fold_in(key, i)``, one ``[T, ...]`` draw."""
    keys = leaf_keys(key, task_vectors)
    return jtu.tree_map(lambda kk, x: dare_keep_mask(kk, x.shape, density), keys, task_vectors)
