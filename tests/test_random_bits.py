"""Tests for mergetheory.random_bits.hash_normal (the hash bits are tested in tests/merge/)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import special, stats

from mergetheory.random_bits import hash_normal, hash_uniform_bits_reference

_NUM = 1 << 18


def test_float32_is_the_inverse_cdf_of_the_reference_bits(key):
    """Recomputed from the NumPy hash in float64: u on the 23-bit grid, sqrt(2) erfinv(u)."""
    k = jr.fold_in(key, 5)
    got = np.asarray(hash_normal(k, (3, 1000)))
    assert got.dtype == np.float32 and got.shape == (3, 1000)
    m = (hash_uniform_bits_reference(k, (3, 1000)) >> np.uint32(9)).astype(np.float64)
    want = np.sqrt(2.0) * special.erfinv((m + 0.5) * 2.0**-22 - 1.0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_law_is_standard_normal(key, dtype):
    z = np.asarray(hash_normal(key, (_NUM,), dtype), np.float64)
    assert z.dtype == np.float64 and np.all(np.isfinite(z))
    if dtype == jnp.float32:
        assert np.abs(z).max() < 5.3  # the 23-bit grid's ends: sqrt(2) erfinv(1 - 2^-23)
    se = 1.0 / np.sqrt(_NUM)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0) * se  # var of z^2 is 2
    assert abs(stats.skew(z)) < 5 * np.sqrt(6.0) * se
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24.0) * se
    assert stats.kstest(z, "norm").pvalue > 1e-6
    tail = 4.0  # P(|Z| > 4) = 6.3e-5: about 17 of 2^18 draws
    p = 2 * stats.norm.sf(tail)
    count = int(np.sum(np.abs(z) > tail))
    assert abs(count - _NUM * p) < 5 * np.sqrt(_NUM * p) + 1


def test_float64_uses_more_than_float32_bits(key):
    z64 = np.asarray(hash_normal(key, (4096,), jnp.float64))
    z32 = np.asarray(hash_normal(key, (4096,), jnp.float32), np.float64)
    # the high 23 bits agree: the CDF values (1 + u) / 2 differ by less than 2^-23, but
    # float64 has its own low bits
    np.testing.assert_allclose(stats.norm.cdf(z64), stats.norm.cdf(z32), rtol=0, atol=2e-7)
    assert not np.array_equal(z64, z32)


def test_keys_positions_and_shapes(key):
    k0, k1 = jr.split(key)
    a = np.asarray(hash_normal(k0, (_NUM,)))
    np.testing.assert_array_equal(a, np.asarray(hash_normal(k0, (_NUM,))))  # reproducible
    b = np.asarray(hash_normal(k1, (_NUM,)))
    for x, y, what in [(a, b, "two keys"), (a[:-1], a[1:], "neighbours")]:
        r = np.corrcoef(x, y)[0, 1]
        assert abs(r) < 5 / np.sqrt(x.size), (what, r)
    # the value of an entry depends on its flat index only, not on the shape
    np.testing.assert_array_equal(np.asarray(hash_normal(k0, (64, 4096))).ravel(), a)
    half = np.asarray(hash_normal(k0, (4,), jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(np.float32), a[:4], rtol=1e-2, atol=1e-2)


def test_rejects_bad_arguments(key):
    with pytest.raises(ValueError, match="floating"):
        hash_normal(key, (3,), jnp.int32)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        hash_normal(key, (1 << 16, 1 << 16))
