"""Tests for mergetheory.merge.kernels: each XLA:CPU kernel against its plain reference."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.merge import kernels


def _data(shape, dtype, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_parts_matches_reference(dtype):
    x = _data((5, 301), dtype)
    parts = [x[t] for t in range(5)]
    w = jnp.asarray([0.5, -1.0, 2.0, 0.25, 3.0], dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for weights in (None, w):
        got = kernels.sum_parts(parts, weights)
        want = kernels.sum_parts_reference(parts, weights)
        assert got.dtype == want.dtype == dtype
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)
    # integer-valued entries: every summation order is exact, so the two agree bit for bit
    ints = [jnp.round(4 * p) for p in parts]
    np.testing.assert_array_equal(
        np.asarray(kernels.sum_parts(ints)), np.asarray(kernels.sum_parts_reference(ints))
    )


def test_max_tasks_matches_reference():
    x = _data((6, 7, 11), np.float32, seed=1)
    np.testing.assert_array_equal(
        np.asarray(kernels.max_tasks(x)), np.asarray(kernels.max_tasks_reference(x))
    )


def _bits(v, dtype):
    np_i = np.int64 if np.dtype(dtype).itemsize == 8 else np.int32
    return jnp.asarray(np.asarray(v, dtype=dtype).view(np_i))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_count_at_least_matches_reference(dtype, monkeypatch):
    mags = [jnp.abs(_data((n,), dtype, seed=n)) for n in (1000, 4001)]
    mags[0] = mags[0].at[:10].set(0.5)  # ties at a probe
    probes = [2.0**-99, 1e-3, 0.5, 1.0, 2.5, 1e6]
    for v in probes:
        b = _bits(v, dtype)
        want = int(kernels.count_at_least_reference(mags, b, np.dtype(dtype)))
        assert int(kernels.count_at_least(mags, b, np.dtype(dtype))) == want, v
    # rows longer than the exact-float-sum limit are counted in chunks (and a tail)
    monkeypatch.setattr(kernels, "_exact_sum_limit", lambda cdt: 700)
    for v in probes:
        b = _bits(v, dtype)
        want = int(kernels.count_at_least_reference(mags, b, np.dtype(dtype)))
        assert int(kernels.count_at_least(mags, b, np.dtype(dtype))) == want, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_search_matches_sort(dtype):
    x = np.array(_data((3, 40_000), dtype, seed=5))
    x[1] = np.round(x[1] * 4) / 4  # massive ties
    x[2, :20_000] *= 2.0**-110  # below the floor: ties with 0
    flat = [jnp.asarray(x[:, :15_000]), jnp.asarray(x[:, 15_000:])]
    cdt = kernels.compute_dtype(flat)
    search = jax.jit(lambda k: kernels.threshold_search(flat, k, cdt))
    for k in (0, 1, 977, 20_000, 39_999, 40_000):
        ks = jnp.full((3,), k, jnp.int32)
        np.testing.assert_array_equal(
            np.asarray(search(ks)), np.asarray(kernels.threshold_sort(flat, ks, cdt)), str(k)
        )


@pytest.mark.parametrize("max_chunk", [4096, 7001, 40_000])
def test_threshold_search_in_chunks_matches_sort(max_chunk):
    # rows materialized in chunks of at most max_chunk entries (the default is 2**24, the
    # exact-sum limit): thresholds equal the sort path's, ties and floor included
    x = np.array(_data((3, 40_000), np.float32, seed=6))
    x[1] = np.round(x[1] * 4) / 4
    x[2, :20_000] *= 2.0**-110
    flat = [jnp.asarray(x[:, :15_000]), jnp.asarray(x[:, 15_000:])]
    cdt = kernels.compute_dtype(flat)
    search = jax.jit(lambda k: kernels.threshold_search(flat, k, cdt, max_chunk=max_chunk))
    for k in (0, 1, 977, 20_000, 39_999, 40_000):
        ks = jnp.full((3,), k, jnp.int32)
        np.testing.assert_array_equal(
            np.asarray(search(ks)), np.asarray(kernels.threshold_sort(flat, ks, cdt)), str(k)
        )


def test_row_chunks_cover_the_row_in_near_equal_pieces():
    for num, limit in [(10, 3), (10, 10), (10, 11), (16_800_000, 1 << 24), (7, 1)]:
        chunks = kernels.row_chunks(num, limit)
        assert chunks[0][0] == 0 and chunks[-1][1] == num
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
        lengths = {hi - lo for lo, hi in chunks}
        assert max(lengths) <= limit and max(lengths) - min(lengths) <= 1
        assert len(chunks) == -(-num // limit)
    with pytest.raises(ValueError, match="max_chunk"):
        kernels.row_chunks(10, 0)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_hash_bits_match_numpy_reference(key, impl):
    k = jr.fold_in(key, 3) if impl == "threefry2x32" else jr.key(7, impl=impl)
    shape = (3, 1000)
    got = np.asarray(kernels.hash_uniform_bits(k, shape))
    assert got.dtype == np.uint32 and got.shape == shape
    np.testing.assert_array_equal(got, kernels.hash_uniform_bits_reference(k, shape))
    # the offset form continues the counter: row t equals the slice of the full draw
    row = np.asarray(kernels.hash_uniform_bits_offset(k, (1000,), 2000))
    np.testing.assert_array_equal(row, got[2])


# --------------------------------------------------------------------------------------
# statistics of the hash bits beyond the mean (the DARE masks use bits 8..31)
# --------------------------------------------------------------------------------------

_NUM = 1 << 20  # draws per stream


def _chi2_pvalue(counts, expected):
    from scipy import stats

    stat = float(np.sum((counts - expected) ** 2 / expected))
    return stats.chi2.sf(stat, counts.size - 1)


def test_hash_bits_each_position_is_fair(key):
    bits = np.asarray(kernels.hash_uniform_bits(key, (_NUM,)))
    ones = np.array([np.mean((bits >> np.uint32(j)) & np.uint32(1)) for j in range(32)])
    stderr = np.sqrt(0.25 / _NUM)
    assert np.all(np.abs(ones - 0.5) < 5 * stderr), np.abs(ones - 0.5).max() / stderr


@pytest.mark.parametrize("shift", [24, 16, 8])
def test_hash_bytes_uniform_chi_square(key, shift):
    bits = np.asarray(kernels.hash_uniform_bits(key, (_NUM,)))
    byte = (bits >> np.uint32(shift)) & np.uint32(255)
    counts = np.bincount(byte, minlength=256).astype(np.float64)
    assert _chi2_pvalue(counts, np.full(256, _NUM / 256)) > 1e-6


def _pair_pvalue(a, b):
    """Chi-square of the 16 x 16 table of the top nibbles of two streams against uniform."""
    cell = (a >> np.uint32(28)) * 16 + (b >> np.uint32(28))
    counts = np.bincount(cell.astype(np.int64), minlength=256).astype(np.float64)
    return _chi2_pvalue(counts, np.full(256, a.size / 256))


def test_hash_bits_pairwise_independent_across_positions_rows_and_keys(key):
    k0, k1 = jr.fold_in(key, 0), jr.fold_in(key, 1)
    full = np.asarray(kernels.hash_uniform_bits(k0, (2, _NUM)))
    other = np.asarray(kernels.hash_uniform_bits(k1, (_NUM,)))
    row = full[0]
    pvalues = {
        "adjacent positions": _pair_pvalue(row[:-1:2], row[1::2]),
        "positions 1000 apart": _pair_pvalue(row[: _NUM - 1000], row[1000:]),
        "two task rows": _pair_pvalue(full[0], full[1]),
        "two fold_in keys": _pair_pvalue(row, other),
    }
    for what, p in pvalues.items():
        assert p > 1e-6, (what, p)
    # the bits the masks use (8..31) are uncorrelated between neighbours: |r| < 5 / sqrt(n)
    u = (row >> np.uint32(8)).astype(np.float64)
    for lag in (1, 2, 7, 64):
        r = np.corrcoef(u[:-lag], u[lag:])[0, 1]
        assert abs(r) < 5 / np.sqrt(_NUM - lag), (lag, r)


def _kth_largest_partition(x, k):
    """NumPy reference: k-th largest |x| with magnitudes <= 2**-100 ranked as 0."""
    a = np.abs(x)
    a = np.where(a <= 2.0**-100, np.zeros_like(a), a)
    if k == 0:
        return np.inf
    return np.partition(a, a.size - k)[a.size - k]


def _padded(x, size, quantum, cdt):
    buf = np.full(size, 7.0, cdt)  # beyond the padding: never read
    buf[: -(-x.size // quantum) * quantum] = np.inf
    buf[: x.size] = np.abs(x)
    return jnp.asarray(buf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_search_buffer_matches_partition(dtype):
    # one compiled program for every row length: lengths at and around the piece edges
    # (64 and 16), ties, rows below the floor, all-zero rows
    chunks, size = (64, 16), 4096
    search = jax.jit(lambda b, n, k: kernels.threshold_search_buffer(b, n, k, chunks=chunks))
    rng = np.random.default_rng(11)
    lengths = [1, 2, 15, 16, 17, 63, 64, 65, 79, 80, 81, 127, 128, 129, 1000, 4095, 4096]
    for n in lengths:
        for kind in ("normal", "ties", "zeros", "floor"):
            x = rng.standard_normal(n).astype(dtype)
            if kind == "ties":
                x = np.round(x * 2) / 2
            elif kind == "zeros":
                x[:] = 0.0
            elif kind == "floor":
                x[: (n + 1) // 2] *= 2.0**-110
            buf = _padded(x, size, chunks[-1], dtype)
            for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
                got = float(search(buf, jnp.int32(n), jnp.int32(k)))
                assert got == _kth_largest_partition(x, k), (n, kind, k)


def test_threshold_search_buffer_rejects_pieces_above_the_exact_sum_limit():
    with pytest.raises(ValueError, match="exact-sum limit"):
        kernels.threshold_search_buffer(
            jnp.zeros(8, jnp.float32), 4, jnp.int32(1), chunks=(1 << 25, 1 << 16)
        )


def test_threshold_search_buffer_row_longer_than_2_24():
    # float32 counts are exact only up to 2**24 entries per sum: a longer row is counted
    # in pieces whose counts are added as integers
    n = (1 << 24) + 4099
    x = np.random.default_rng(12).standard_normal(n).astype(np.float32)
    x[:1000] = 0.5  # ties
    buf = _padded(x, 1 << 25, 1 << 16, np.float32)
    search = jax.jit(
        lambda b, k: kernels.threshold_search_buffer(b, n, k, chunks=(1 << 20, 1 << 16))
    )
    for k in (1, n // 5, n - 7):
        assert float(search(buf, jnp.int32(k))) == _kth_largest_partition(x, k), k
