"""Tests for mergetheory.merge.dare: DARE-linear and DARE-TIES."""

import _peft_reference as peft
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.merge import (
    dare_keep_masks,
    dare_linear,
    dare_linear_array,
    dare_ties,
    dare_ties_array,
)
from mergetheory.tree import TaskVectorError

# Hand example: density 0.5, explicit keep masks.
#   x1 = [2, -4,  6], m1 = [1, 0, 1] -> x1~ = [4, 0, 12]
#   x2 = [1,  3, -5], m2 = [1, 1, 1] -> x2~ = [2, 6, -10]
X = np.array([[2.0, -4.0, 6.0], [1.0, 3.0, -5.0]])
MASK = np.array([[True, False, True], [True, True, True]])


def test_hand_example_dare_linear():
    out = dare_linear_array(jnp.asarray(X), None, density=0.5, keep_mask=MASK)
    np.testing.assert_allclose(out, [6.0, 6.0, 2.0], rtol=1e-12)
    out = dare_linear_array(
        jnp.asarray(X), None, density=0.5, keep_mask=MASK, weights=jnp.asarray([1.0, 0.5])
    )
    np.testing.assert_allclose(out, [5.0, 3.0, 7.0], rtol=1e-12)


def test_hand_example_dare_ties():
    # sum [6, 6, 2] -> all +; agreeing: {4, 2}, {6}, {12} -> mean [3, 6, 12]
    out = dare_ties_array(jnp.asarray(X), None, density=0.5, keep_mask=MASK)
    np.testing.assert_allclose(out, [3.0, 6.0, 12.0], rtol=1e-12)
    # weights [1, 0.5]: (4 + 1) / 2, 0.5 * 6, 12
    out = dare_ties_array(
        jnp.asarray(X), None, density=0.5, keep_mask=MASK, weights=jnp.asarray([1.0, 0.5])
    )
    np.testing.assert_allclose(out, [2.5, 3.0, 12.0], rtol=1e-12)


def _tree(seed, num=3):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((num, 9, 7)), "b": rng.standard_normal((num, 11))}


@pytest.mark.parametrize("density", [0.3, 0.8])
def test_matches_peft_with_the_same_masks(density, key):
    tree = _tree(1)
    w = np.array([0.4, 1.0, 1.7])
    tv = jax.tree.map(jnp.asarray, tree)
    masks = dare_keep_masks(key, tv, density)
    lin = dare_linear(tv, key, density=density, weights=jnp.asarray(w))
    tie = dare_ties(tv, key, density=density, weights=jnp.asarray(w))
    for name in tree:
        x, m = tree[name], np.asarray(masks[name])
        np.testing.assert_allclose(
            lin[name], peft.dare_linear(list(x), w, density, list(m)), rtol=1e-12
        )
        np.testing.assert_allclose(
            tie[name], peft.dare_ties(list(x), w, density, list(m)), rtol=1e-12
        )


def test_dare_is_unbiased_monte_carlo(key):
    # E[dare_linear] = sum_t w_t tau_t; per-entry variance sum_t w_t^2 tau_t^2 (1 - rho) / rho
    tree = {"w": jnp.asarray(_tree(2)["w"][:, :3, :4]), "z": jnp.zeros((3, 5))}
    w = jnp.asarray([0.5, 1.0, -2.0])
    density, num = 0.3, 4000
    keys = jr.split(key, num)
    samples = jax.jit(jax.vmap(lambda k: dare_linear(tree, k, density=density, weights=w)))(keys)
    s = np.asarray(samples["w"])
    mean, stderr = s.mean(0), s.std(0, ddof=1) / np.sqrt(num)
    exact = np.tensordot(np.asarray(w), np.asarray(tree["w"]), axes=1)
    assert np.all(np.abs(mean - exact) < 5 * stderr)
    var_exact = np.tensordot(np.asarray(w) ** 2, np.asarray(tree["w"]) ** 2, axes=1)
    var_exact *= (1 - density) / density
    dev2 = (s - mean) ** 2
    var_se = np.sqrt(dev2.var(0, ddof=1) / num)
    assert np.all(np.abs(s.var(0, ddof=1) - var_exact) < 5 * var_se)
    assert np.all(np.asarray(samples["z"]) == 0.0)


def test_keys_per_leaf_and_reproducibility(key):
    tv = jax.tree.map(jnp.asarray, _tree(3))
    a = dare_linear(tv, key, density=0.5)
    b = dare_linear(tv, key, density=0.5)
    c = dare_linear(tv, jr.fold_in(key, 7), density=0.5)
    for name in tv:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])


def test_dare_linear_is_ta_in_expectation_and_exact_at_density_one(key):
    tv = jax.tree.map(jnp.asarray, _tree(4))
    out = dare_linear(tv, key, density=1.0, scale=0.5)
    for name in tv:
        np.testing.assert_allclose(
            out[name], 0.5 * np.sum(np.asarray(tv[name]), axis=0), rtol=1e-12
        )


def test_traced_once(key, assert_traced_once):
    tv = {"x": jnp.ones((2, 13))}  # fresh shape
    calls = iter([(key, {"density": 0.4}), (jr.fold_in(key, 1), {"density": 0.9, "scale": 3.0})])

    def call():
        k, hp = next(calls)
        return dare_ties(tv, k, **hp)

    assert_traced_once(call, expect_first_trace=True)


def test_bad_inputs(key):
    tv = {"x": jnp.ones((2, 4))}
    with pytest.raises(ValueError, match="density"):
        dare_linear(tv, key, density=-0.1)
    with pytest.raises(ValueError, match="density"):
        dare_ties(tv, key, density=1.01)
    with pytest.raises(TaskVectorError, match="weights has shape"):
        dare_linear(tv, key, weights=jnp.ones(3))
    with pytest.raises(TaskVectorError, match="Inf"):
        dare_ties({"x": jnp.asarray([[1.0, np.inf], [0.0, 1.0]])}, key)
    with pytest.raises(ValueError, match="election"):
        dare_ties(tv, key, election="vote")
    with pytest.raises(ValueError, match="PRNG key"):
        dare_linear_array(jnp.ones((2, 3)), None, density=0.5)


def test_per_leaf_keys_merge_a_leaf_as_in_the_tree():
    rng = np.random.default_rng(8)
    tv = {k: jnp.asarray(rng.normal(size=(3, 5, 4))) for k in ("a", "b", "c")}
    key = jr.key(2)
    for fn in (dare_linear, dare_ties):
        whole = fn(tv, key, density=0.5)
        for i, k in enumerate(sorted(tv)):
            alone = fn({k: tv[k]}, {k: jr.fold_in(key, i)}, density=0.5)[k]
            np.testing.assert_array_equal(np.asarray(alone), np.asarray(whole[k]))
        # the same key for every leaf alone would repeat leaf 0's mask (what per-leaf keys avoid)
        assert not np.array_equal(
            np.asarray(fn({"b": tv["b"]}, key, density=0.5)["b"]), np.asarray(whole["b"])
        )


@pytest.mark.parametrize(
    "keys",
    [
        {"a": "KEY", "z": "KEY"},  # another name
        {"a": "KEY"},  # a leaf missing
        ["KEY", "KEY"],  # another container
    ],
)
def test_per_leaf_keys_of_another_structure_are_refused(keys):
    tv = {k: jnp.ones((2, 3)) for k in ("a", "b")}
    keys = jax.tree.map(lambda _: jr.key(0), keys)
    with pytest.raises(ValueError, match="per-leaf keys have the structure"):
        dare_linear(tv, keys)
