"""Tests for mergetheory.merge.model_stock (Model Stock)."""

import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ms = importlib.import_module("mergetheory.merge.model_stock")  # attr is the function

model_stock = ms.model_stock


def _normal(seed, *shape):
    # NumPy draws: jax.random would compile a sampler per shape, which dominates here
    return np.random.default_rng(seed).standard_normal(shape)


def _closed_form(cos, k):
    return k * cos / (1 + (k - 1) * cos)


@pytest.mark.parametrize("phi", [0.3, 1.0, 1.4])
def test_two_vectors_at_known_angle(phi):
    """t = 2 cos(phi) / (1 + cos(phi)); merged = t * mean; norms do not matter."""
    rot = np.linalg.qr(_normal(0, 5, 5))[0]
    a = 2.0 * rot[0]
    b = 0.5 * (np.cos(phi) * rot[0] + np.sin(phi) * rot[1])
    tv = {"w": jnp.asarray(np.stack([a, b]).reshape(2, 5, 1))}
    out = model_stock(tv, None)["w"][:, 0]
    t = 2 * np.cos(phi) / (1 + np.cos(phi))
    np.testing.assert_allclose(out, t * (a + b) / 2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ms.model_stock_ratio(np.cos(phi), 2), t, rtol=1e-15)


def test_cosine_vs_angle_averaging_for_three_models():
    x = _normal(1, 3, 4, 6)
    flat = x.reshape(3, -1)
    cos = [
        flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
        for i, j in itertools.combinations(range(3), 2)
    ]
    tv = {"w": jnp.asarray(x)}
    mean = x.mean(0)
    got_c = model_stock(tv, None, cosine_average="cosines")["w"]
    got_a = model_stock(tv, None, cosine_average="angles")["w"]
    np.testing.assert_allclose(got_c, _closed_form(np.mean(cos), 3) * mean, rtol=1e-12)
    angle = np.deg2rad(np.mean(np.rad2deg(np.arccos(cos))))  # FusionBench: mean in degrees
    np.testing.assert_allclose(got_a, _closed_form(np.cos(angle), 3) * mean, rtol=1e-12)
    assert not np.allclose(got_a, got_c)


def test_granularities_and_identity():
    x, b = _normal(2, 4, 3, 5), _normal(3, 4, 5)
    tv = {"w": jnp.asarray(x), "b": jnp.asarray(b)}

    def ratio(rows):  # rows [T, D]
        g = rows @ rows.T
        n = np.sqrt(np.diag(g))
        c = np.mean([g[i, j] / n[i] / n[j] for i, j in itertools.combinations(range(4), 2)])
        return _closed_form(c, 4)

    row = model_stock(tv, None, granularity="row")
    want_w = np.stack([ratio(x[:, r]) * x[:, r].mean(0) for r in range(3)])
    np.testing.assert_allclose(row["w"], want_w, rtol=1e-12)
    np.testing.assert_allclose(row["b"], ratio(b) * b.mean(0), rtol=1e-12)
    glob = model_stock(tv, None, granularity="global")
    t = ratio(np.concatenate([b, x.reshape(4, -1)], axis=1))
    np.testing.assert_allclose(glob["w"], t * x.mean(0), rtol=1e-12)
    one = jax.tree.map(lambda v: v[:1], tv)
    for g in ("tensor", "row", "global"):
        out = model_stock(one, None, granularity=g)
        jax.tree.map(lambda a, v: np.testing.assert_array_equal(a, v[0]), out, one)


def test_zero_task_vector_is_orthogonal_and_trace_once():
    x = np.stack([_normal(4, 6), np.zeros(6)])
    out = model_stock({"w": jnp.asarray(x)}, None)["w"]
    np.testing.assert_array_equal(out, np.zeros(6))  # cos = 0 -> t = 0, not NaN
    traces = []

    @jax.jit
    def run(tv):
        traces.append(1)
        return ms.model_stock(tv, None)

    run({"w": jnp.asarray(x)})
    run({"w": jnp.asarray(x + 1.0)})
    assert len(traces) == 1
