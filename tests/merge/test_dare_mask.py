"""Tests for mergetheory.merge.dare_mask: DARE keep masks from a JAX key."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from mergetheory.merge import dare_keep_mask, dare_keep_masks

# --------------------------------------------------------------------------------------
# DARE masks
# --------------------------------------------------------------------------------------


def test_dare_mask_mean_matches_density(key):
    shape = (8, 250_000)
    for density in (0.1, 0.5, 0.9):
        m = np.asarray(dare_keep_mask(key, shape, density))
        n = m.size
        stderr = np.sqrt(density * (1 - density) / n)
        assert abs(m.mean() - density) < 5 * stderr
        # every task row is a fair draw too
        row_se = np.sqrt(density * (1 - density) / shape[1])
        assert np.all(np.abs(m.mean(axis=1) - density) < 5 * row_se)


def test_dare_masks_independent_across_keys_tasks_and_leaves(key):
    density = 0.3
    tree = {"a": jnp.zeros((2, 100_000)), "b": jnp.zeros((2, 100_000))}
    k1, k2 = jr.split(key)
    m1 = dare_keep_masks(k1, tree, density)
    m2 = dare_keep_masks(k2, tree, density)
    pairs = [
        (m1["a"][0], m1["a"][1]),  # tasks of one leaf
        (m1["a"][0], m1["b"][0]),  # same task, two leaves
        (m1["a"][0], m2["a"][0]),  # two keys
    ]
    n = 100_000
    for u, v in pairs:
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        corr = np.corrcoef(u, v)[0, 1]
        assert abs(corr) < 5 / np.sqrt(n)
    # the operators' per-leaf keys are fold_in(key, i) in flatten order
    np.testing.assert_array_equal(
        np.asarray(m1["b"]), np.asarray(dare_keep_mask(jr.fold_in(k1, 1), (2, 100_000), density))
    )


def test_dare_mask_reproducible_and_full_at_density_one(key):
    a = dare_keep_mask(key, (3, 1000), 0.5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(dare_keep_mask(key, (3, 1000), 0.5)))
    assert bool(jnp.all(dare_keep_mask(key, (3, 1000), 1.0)))


def test_dare_mask_accepts_raw_uint32_keys():
    raw = jr.PRNGKey(3)
    m = dare_keep_mask(raw, (4, 1000), 0.5)
    assert m.shape == (4, 1000) and 0.4 < float(m.mean()) < 0.6
