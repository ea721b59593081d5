"""SLQ of Hessians against a dense eigendecomposition; the sublevel effective dimension."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mergetheory.analysis import (
    hessian_spectrum,
    hvp_matvec,
    slq,
    sublevel_statistical_dimension,
    trace_estimate,
)


def _tiny_problem(key):
    """A 2-layer tanh network (D = 3*4 + 4 + 4*2 = 24) and its cross-entropy."""
    k1, k2, k3, k4 = jr.split(key, 4)
    params = {
        "w1": jr.normal(k1, (3, 4), jnp.float64),
        "b1": 0.1 * jr.normal(k2, (4,), jnp.float64),
        "w2": jr.normal(k3, (4, 2), jnp.float64),
    }
    x = jr.normal(k4, (16, 3), jnp.float64)
    y = (x[:, 0] > 0).astype(jnp.int32)

    def loss(p):
        logits = jnp.tanh(x @ p["w1"] + p["b1"][None, :]) @ p["w2"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return params, loss


def _dense_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat))


def test_hvp_matches_dense_hessian(key):
    params, loss = _tiny_problem(key)
    h = _dense_hessian(loss, params)
    matvec, dim = hvp_matvec(loss, params)
    assert dim == 24
    v = jr.normal(jr.fold_in(key, 7), (dim,), jnp.float64)
    np.testing.assert_allclose(np.asarray(matvec(v)), h @ np.asarray(v), rtol=1e-10, atol=1e-12)


def test_full_lanczos_recovers_the_eigenvalues_and_weights(key):
    params, loss = _tiny_problem(key)
    h = _dense_hessian(loss, params)
    lam, q = np.linalg.eigh(h)
    spec = hessian_spectrum(key, loss, params, num_probes=1, num_steps=24)
    np.testing.assert_allclose(np.sort(spec.nodes[0]), lam, atol=1e-8 * np.abs(lam).max())
    # the quadrature reproduces v0' f(H) v0 for the (normalised) probe; per-eigenvector
    # weights are not identifiable in the Hessian's degenerate null space, these sums are
    v0 = np.asarray(jr.normal(jr.fold_in(key, 0), (24,), jnp.float64))
    v0 = v0 / np.linalg.norm(v0)
    c2 = (q.T @ v0) ** 2
    for f in (np.exp, lambda t: t**3, lambda t: 1.0 / (1.0 + np.abs(t))):
        np.testing.assert_allclose(
            np.sum(spec.weights[0] * f(spec.nodes[0])), np.sum(c2 * f(lam)), rtol=1e-8
        )


def test_short_lanczos_trace_of_a_polynomial_is_unbiased(key):
    """tr(H^2) with m = 6 < D steps: Gauss quadrature is exact for degree < 12 per probe,
    so the only error is the probes' randomness (checked against their own stderr)."""
    params, loss = _tiny_problem(key)
    h = _dense_hessian(loss, params)
    exact = float(np.trace(h @ h))
    matvec, dim = hvp_matvec(loss, params)
    spec = slq(jr.fold_in(key, 1), matvec, dim, num_probes=40, num_steps=6, dtype=jnp.float64)
    est = trace_estimate(spec, lambda t: t**2)
    assert est.num_probes == 40
    assert abs(est.mean - exact) < 4 * est.stderr
    assert est.stderr < 0.5 * exact  # the estimate is informative


def test_sublevel_dimension_counts_flat_directions(key):
    """H = diag(0 x 5, 1e6 x 15), eps = 0.5, R = 1: f = 1 on the 5 flat directions and
    1/(1 + 1e6) elsewhere, so tr f(H) = 5 + 15/(1 + 1e6); a repeated spectrum also
    exercises the Lanczos restart after an invariant subspace."""
    lam = jnp.concatenate([jnp.zeros(5), jnp.full(15, 1e6)]).astype(jnp.float64)
    spec = slq(key, lambda v: lam * v, 20, num_probes=60, num_steps=20, dtype=jnp.float64)
    exact = 5 + 15 / (1 + 1e6)
    m = sublevel_statistical_dimension(spec, eps=0.5, radius=1.0)
    assert abs(m.mean - exact) < 4 * m.stderr
    assert 0 < m.mean < 20
    # the Ritz values never leave the spectrum's hull
    assert spec.nodes.min() > -1e-6 and spec.nodes.max() < 1e6 * (1 + 1e-9)
    with pytest.raises(ValueError, match="eps and radius"):
        sublevel_statistical_dimension(spec, eps=0.0, radius=1.0)
