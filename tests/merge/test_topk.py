"""Tests for mergetheory.merge.topk: exact top-k threshold, ``num_kept``, masks."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.merge import kernels, magnitude_threshold, num_kept, topk_mask
from mergetheory.merge.topk import blockwise_thresholds, leaf_thresholds


def _ref_threshold(rows, k):
    """Sort-based reference: the k-th largest |x| per row (magnitudes <= 2**-100 count as 0)."""
    a = np.abs(np.asarray(rows, dtype=np.float64)).reshape(len(rows), -1)
    a = np.where(a <= 2.0**-100, 0.0, a)
    s = -np.sort(-a, axis=1)
    if k == 0:
        return np.full(len(rows), np.inf)
    return s[:, k - 1]


def _rows(kind, num, dtype, seed=0, num_rows=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_rows, num))
    if kind == "ties":  # few distinct values: massive ties at any threshold
        x = np.round(x * 4) / 4
    elif kind == "zeros":  # 60% exact zeros, as in already-sparse task vectors
        x[:, : (6 * num) // 10] = 0.0
    elif kind == "lognormal":  # magnitudes spread over many binades
        x = rng.lognormal(0.0, 4.0, x.shape) * np.sign(x)
    elif kind == "tiny":  # values below the 2**-100 floor tie with 0
        x[:, : num // 2] *= 2.0**-110
    return x.astype(dtype)


@pytest.fixture(scope="module")
def search_fn():
    return jax.jit(lambda x, k: magnitude_threshold(x, k, method="search"))


# jitted entry points: eager calls would re-trace the search loop for every k
_threshold = jax.jit(magnitude_threshold, static_argnames=("method",))
_topk_mask = jax.jit(topk_mask, static_argnames=("method",))


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "lognormal", "tiny"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_search_matches_sort_reference(kind, dtype, search_fn):
    num = 40_000  # above the 2**15 sort cutoff, so "auto" would search too
    x = _rows(kind, num, dtype)
    for k in [0, 1, 7, num // 100, num // 5, num // 2, (7 * num) // 10, num - 1, num]:
        got = np.asarray(search_fn(jnp.asarray(x), jnp.int32(k)))
        np.testing.assert_array_equal(got, _ref_threshold(x, k).astype(dtype), err_msg=f"k={k}")


@pytest.mark.parametrize("kind", ["ties", "zeros", "tiny"])
def test_eager_search_of_long_rows_matches_reference(kind):
    # eager calls on long rows go through the shared search program (leaf_thresholds)
    num = 40_000
    x = _rows(kind, num, np.float32, seed=3, num_rows=3)
    for k in [0, 1, num // 5, num]:
        for method in ("auto", "search"):
            got = np.asarray(magnitude_threshold(jnp.asarray(x), k, method=method))
            np.testing.assert_array_equal(got, _ref_threshold(x, k).astype(np.float32))
    ks = np.array([0, 7, num])  # one k per row
    got = np.asarray(magnitude_threshold(jnp.asarray(x), jnp.asarray(ks)))
    want = [_ref_threshold(x[r : r + 1], int(ks[r]))[0] for r in range(3)]
    np.testing.assert_array_equal(got, np.asarray(want, np.float32))


@pytest.mark.parametrize("kind", ["normal", "ties", "tiny"])
def test_sort_path_matches_reference(kind):
    x = _rows(kind, 500, np.float64, seed=1)
    for k in [0, 1, 100, 499, 500]:
        got = _threshold(jnp.asarray(x), k, method="sort")
        np.testing.assert_array_equal(np.asarray(got), _ref_threshold(x, k))


def test_ties_at_threshold_are_all_kept():
    # |x| = 3, 2, 2, 2, 1: the 2nd largest is 2 and all three 2s are kept (>= k kept)
    x = jnp.asarray([[3.0, -2.0, 2.0, -2.0, 1.0]])
    for method in ("sort", "search"):
        thr = _threshold(x, 2, method=method)
        assert float(thr[0]) == 2.0
        mask = _topk_mask(x, 2, method=method)
        np.testing.assert_array_equal(np.asarray(mask), [[True, True, True, True, False]])


def test_kept_count_is_exactly_k_without_ties(key):
    x = jr.normal(key, (2, 50_000))
    for k in [1, 10_000, 35_000]:
        mask = _topk_mask(x, k)
        np.testing.assert_array_equal(np.asarray(mask.sum(axis=1)), [k, k])


def test_global_threshold_over_several_leaves():
    rng = np.random.default_rng(2)
    leaves = [rng.standard_normal((2, 300, 70)), rng.standard_normal((2, 9_000))]
    flat = np.concatenate([leaf.reshape(2, -1) for leaf in leaves], axis=1)
    for method in ("sort", "search"):
        for k in [1, 5_000, 20_000]:
            got = _threshold([jnp.asarray(v) for v in leaves], k, method=method)
            np.testing.assert_array_equal(np.asarray(got), _ref_threshold(flat, k))


def test_chunked_exact_counts(monkeypatch):
    # Rows longer than the exact-float-sum limit are counted in chunks (and a tail when
    # the length has no suitable divisor); shrink the limit to exercise both paths.
    monkeypatch.setattr(kernels, "_exact_sum_limit", lambda cdt: 1_000)
    fn = jax.jit(lambda x, k: magnitude_threshold(x, k, method="search"))  # fresh trace
    for num in (40_000, 40_009):  # 40_009 is prime: main part + tail
        x = _rows("normal", num, np.float32, seed=3)
        for k in (1, num // 3):
            got = fn(jnp.asarray(x), k)
            np.testing.assert_array_equal(np.asarray(got), _ref_threshold(x, k).astype(np.float32))


def test_num_kept_follows_peft_rule():
    assert int(num_kept(0.7, 10)) == 7  # int(0.7 * 10) == 7 in float64
    assert int(num_kept(0.2, 12)) == 2
    assert int(num_kept(1.0, 5)) == 5
    assert int(num_kept(0.01, 50)) == 0
    # traced density (float64 under x64): same floor
    ks = jax.vmap(lambda d: num_kept(d, 1234))(jnp.asarray([0.1, 0.5, 0.7, 1.0]))
    np.testing.assert_array_equal(np.asarray(ks), [int(d * 1234) for d in (0.1, 0.5, 0.7, 1.0)])


def test_threshold_with_traced_k_under_vmap():
    x = jnp.asarray(_rows("normal", 40_000, np.float32, seed=4, num_rows=1))
    ks = jnp.asarray([10, 20_000, 39_999], jnp.int32)
    got = jax.vmap(lambda k: magnitude_threshold(x, k))(ks)
    for i, k in enumerate([10, 20_000, 39_999]):
        np.testing.assert_array_equal(np.asarray(got[i]), _ref_threshold(np.asarray(x), k))


def test_bad_method_is_named():
    with pytest.raises(ValueError, match="method"):
        magnitude_threshold(jnp.ones((1, 4)), 2, method="quickselect")


def test_leaf_thresholds_share_one_search_and_match_the_reference():
    # leaves of several lengths (around the 2**16 piece edge, and 2**20 + 1 over the big
    # piece), several dtypes and per-task k: one buffer, the same values as a sort
    shapes = [(3, 40_000), (2, 256, 256), (2, 65_537), (2, 65_535), (2, 1 << 20 | 1)]
    kinds = ["ties", "normal", "zeros", "tiny", "lognormal"]
    leaves = [
        jnp.asarray(_rows(kind, int(np.prod(s[1:])), np.float32, seed=i, num_rows=s[0])).reshape(s)
        for i, (s, kind) in enumerate(zip(shapes, kinds, strict=True))
    ]
    leaves.append(jnp.asarray(_rows("normal", 50_000, np.float64, seed=9)))
    leaves.append(jnp.asarray(_rows("normal", 50_000, np.float32, seed=10)).astype(jnp.bfloat16))
    ks = [jnp.int32(int(0.2 * np.prod(x.shape[1:]))) for x in leaves]
    ks[0] = jnp.asarray([0, 1, 40_000], jnp.int32)  # per task, both ends
    ks[2] = jnp.int32(65_537)  # keep everything: the smallest magnitude
    got = leaf_thresholds(leaves, ks)
    for x, k, thr in zip(leaves, ks, got, strict=True):
        rows = np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)
        rows = rows.reshape(x.shape[0], -1)
        want = [
            _ref_threshold(r[None], int(kk))[0]
            for r, kk in zip(rows, np.broadcast_to(k, (x.shape[0],)), strict=True)
        ]
        assert thr.dtype == magnitude_threshold(x, k).dtype
        np.testing.assert_array_equal(np.asarray(thr, np.float64), np.asarray(want))


def test_leaf_thresholds_leave_short_and_traced_leaves_to_the_caller():
    x = jnp.ones((2, 40_000))
    assert leaf_thresholds([jnp.ones((2, 100))], [jnp.int32(3)]) == [None]
    out = jax.jit(lambda x: jnp.stack([leaf_thresholds([x], [jnp.int32(3)])[0] is None]))(x)
    assert bool(out[0])


def _blocks(row, block):
    for i in range(0, row.shape[0], block):
        yield np.asarray(row[i : i + block])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16"])
def test_blockwise_thresholds_match_np_partition_and_the_whole_row(dtype):
    # rows fed in blocks of 1 entry up to blocks longer than the 2**16 pass piece, lengths
    # around the piece edges and 2**20 + 1 (over one buffer quantum), ties, sub-floor values
    # and zeros; one buffer reused for all rows of a call
    bf16 = dtype == "bfloat16"
    for num, block, kind in [
        (1, 1, "normal"),
        (7, 1, "ties"),
        (65_535, 4096, "zeros"),
        (65_537, 65_537, "tiny"),
        (500, 3, "lognormal"),
        ((1 << 20) + 1, 300_000, "normal"),  # a second buffer size: float32 only
    ]:
        if num > 1 << 20 and dtype != np.float32:
            continue
        x = _rows(kind, num, np.float32 if bf16 else dtype, seed=num, num_rows=3)
        x = jnp.asarray(x).astype(jnp.bfloat16) if bf16 else x
        rows = np.asarray(jnp.asarray(x).astype(jnp.float32)) if bf16 else x
        for k in sorted({0, 1, num // 5, num}):
            feed = [_blocks(r, block) for r in x]
            got = blockwise_thresholds(feed, num, k, x.dtype)
            assert got.dtype == magnitude_threshold(jnp.asarray(x), k).dtype
            mags = np.abs(rows.astype(np.float64))
            mags = np.where(mags <= 2.0**-100, 0.0, mags)
            want = [np.inf if k == 0 else np.partition(m, num - k)[num - k] for m in mags]
            np.testing.assert_array_equal(np.asarray(got, np.float64), want, err_msg=(num, k))
            if k == num // 5 and dtype == np.float32:  # the same as the whole rows' ones
                np.testing.assert_array_equal(
                    np.asarray(got), np.asarray(magnitude_threshold(jnp.asarray(x), k))
                )


def test_blockwise_thresholds_reject_bad_rows():
    with pytest.raises(ValueError, match="entries in its blocks, expected 6"):
        blockwise_thresholds([iter([np.ones(4)])], 6, 1, np.float32)
    with pytest.raises(ValueError, match="not supported"):
        blockwise_thresholds([iter([])], 0, 0, np.float32)
