"""Tests for mergetheory.merge.breadcrumbs (Model Breadcrumbs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.merge.breadcrumbs import breadcrumbs
from mergetheory.merge.breadcrumbs import breadcrumbs_mask as _breadcrumbs_mask

# the mask helper is not jitted itself; eager op-by-op dispatch costs more than one compile
breadcrumbs_mask = jax.jit(_breadcrumbs_mask, static_argnames=("scope",))


def _normal(seed, *shape):
    # NumPy draws: jax.random would compile a sampler per shape, which dominates here
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _official_row(x, beta, gamma):
    """NumPy emulation of rezazzr/breadcrumbs TaskVectorMiddleKeep (remove_first=True)."""
    x = np.array(x)
    n = x.shape[-1]
    flat = x.reshape(-1, n).copy()
    for row in flat:
        row[np.argsort(-np.abs(row), kind="stable")[: int(n * gamma)]] = 0
        keep = np.zeros(n, bool)
        keep[np.argsort(-np.abs(row), kind="stable")[: int(n * beta)]] = True
        row[~keep] = 0
    return flat.reshape(x.shape)


def _mergekit_tensor(x, density, gamma):
    """NumPy emulation of mergekit sparsify.magnitude_outliers (mask only, n_top > 0)."""
    x = np.array(x)
    num = x.size
    target, n_top = int(density * num), int(gamma * num)
    n_bot = num - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    order = np.argsort(np.abs(x).ravel(), kind="stable")
    mask = np.zeros(num)
    mask[order[n_bot : num - n_top]] = 1
    return (x.ravel() * mask).reshape(x.shape)


def test_row_scope_matches_official_code(key):
    tv = {
        "w": _normal(0, 3, 6, 200),
        "conv": _normal(1, 3, 2, 3, 150),
        "b": _normal(2, 3, 500),
    }
    beta, gamma = 0.15, 0.02
    merged = breadcrumbs(tv, key, beta=beta, gamma=gamma, scale=0.2)
    masks = jax.jit(
        lambda t: jax.tree.map(lambda x: _breadcrumbs_mask(x, beta=beta, gamma=gamma), t)
    )(tv)
    for name, x in tv.items():
        want = np.stack([_official_row(x[t], beta, gamma) for t in range(3)])
        np.testing.assert_array_equal(np.where(masks[name], x, 0.0), want)
        np.testing.assert_allclose(merged[name], 0.2 * want.sum(0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("density", "gamma", "shape"),
    [(0.15, 0.01, (2, 30, 40)), (0.9, 0.3, (2, 30, 40)), (0.2, 0.05, (2, 200, 200))],
)
def test_tensor_scope_matches_mergekit_mask(density, gamma, shape):
    # 40 000 entries per task > 2**15: exercises the count-search threshold path
    x = _normal(3, *shape)
    got = np.where(breadcrumbs_mask(x, beta=density, gamma=gamma, scope="tensor"), x, 0.0)
    want = np.stack([_mergekit_tensor(x[t], density, gamma) for t in range(2)])
    np.testing.assert_array_equal(got, want)


def test_identity_weights_and_scalar_leaves(key):
    tv = {"w": _normal(4, 3, 4, 50), "s": _normal(5, 3)}
    one = jax.tree.map(lambda x: x[:1], tv)
    out = breadcrumbs(one, key, beta=1.0, gamma=0.0, scale=1.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[0]), out, one)
    w = jnp.array([0.5, -1.0, 2.0])
    got = breadcrumbs(tv, key, weights=w)
    mask = breadcrumbs_mask(tv["w"])
    want = 0.2 * jnp.einsum("t,t...->...", w, jnp.where(mask, tv["w"], 0.0))
    np.testing.assert_allclose(got["w"], want, rtol=1e-12)
    # scalar-per-task leaves are not sparsified (the official code skips 0-d tensors)
    np.testing.assert_allclose(got["s"], 0.2 * jnp.dot(w, tv["s"]), rtol=1e-12)


def test_traced_hyperparameters_vmap_and_trace_once(key):
    x = _normal(6, 2, 3, 100)
    betas = jnp.array([0.1, 0.2, 0.5])
    counts = jax.vmap(lambda b: breadcrumbs_mask(x, beta=b, gamma=0.01).sum())(betas)
    np.testing.assert_array_equal(counts, 2 * 3 * np.array([10, 20, 50]))
    traces = []

    @jax.jit
    def run(tv, k, beta):
        traces.append(1)
        return breadcrumbs(tv, k, beta=beta)

    run({"w": x}, key, 0.15)
    run({"w": x + 1.0}, key, 0.2)
    assert len(traces) == 1
