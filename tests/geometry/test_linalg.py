"""Tests for mergetheory.linalg (Gram-form NNLS against SciPy) and the sets' own maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from mergetheory import geometry, linalg

_nnls = jax.jit(linalg.nnls_gram, static_argnames=("max_iter", "rtol", "return_converged"))


@pytest.mark.parametrize("num, dim", [(6, 10), (10, 10), (4, 30)])
def test_nnls_gram_matches_scipy_nnls(num, dim):
    """Full row rank T: the NNLS coefficients are unique, so they must match SciPy's."""
    rng = np.random.default_rng(num * dim)
    t = rng.standard_normal((num, dim))
    gram = jnp.asarray(t @ t.T)
    for _ in range(8):
        g = rng.standard_normal(dim)
        lam, converged = _nnls(gram, jnp.asarray(t @ g), return_converged=True)
        x, rnorm = scipy.optimize.nnls(t.T, g, maxiter=100 * num)
        assert bool(converged)
        np.testing.assert_allclose(np.asarray(lam), x, rtol=1e-8, atol=1e-10)
        resid = g - t.T @ np.asarray(lam)
        assert float(resid @ resid) == pytest.approx(rnorm**2, rel=1e-9, abs=1e-12)


def test_nnls_gram_rank_deficient_matches_scipy_projection():
    """Duplicated generators: lambda is not unique, the projection T^T lambda is."""
    rng = np.random.default_rng(3)
    t = rng.standard_normal((4, 7))
    t = np.concatenate([t, t[:2], 2.0 * t[1:2]])
    for _ in range(8):
        g = rng.standard_normal(7)
        lam = _nnls(jnp.asarray(t @ t.T), jnp.asarray(t @ g))
        x, _ = scipy.optimize.nnls(t.T, g, maxiter=100 * len(t))
        assert np.all(np.asarray(lam) >= 0)
        np.testing.assert_allclose(t.T @ np.asarray(lam), t.T @ x, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(geometry.SET_KINDS))
def test_subset_and_nested_support_agree_with_the_plain_support(kind):
    """Three code paths of a set's support: plain, masked subset, nested prefixes."""
    rng = np.random.default_rng(5)
    t = rng.standard_normal((4, 8))
    full = geometry.make_set(kind, t)
    sizes = (2, 4)  # two prefix sets (each its own program size), the last the full set
    prefixes = [geometry.make_set(kind, t[:m]) for m in sizes]

    @jax.jit
    def supports(z):
        masks = jnp.arange(4)[None, :] < jnp.asarray(sizes)[:, None]
        return (
            full.support_from_z(z),
            full.support_from_z(z, nested=True)[jnp.asarray(sizes) - 1],
            jnp.stack([p.support_from_z(z[:m]) for m, p in zip(sizes, prefixes, strict=True)]),
            jax.vmap(lambda mask: full.subset_support_from_z(z, mask))(masks),
        )

    whole, path, ref, subset = supports(jnp.asarray(t @ rng.standard_normal(8)))
    np.testing.assert_allclose(ref[-1], whole, rtol=1e-9)
    np.testing.assert_allclose(path, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(subset, ref, rtol=1e-9, atol=1e-12)
