"""Tests for mergetheory.merge.ties: TIES-Merging and magnitude pruning."""

import importlib

import _peft_reference as peft
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.merge import magnitude_prune, ties, ties_array
from mergetheory.tree import TaskVectorError

# Hand example, n = 6 entries, density 0.5 -> k = 3 kept per task.
#   tau1 = [ 4, -2,  1,  0.5, 3,  -0.2]  -> trimmed [ 4, -2,  0, 0, 3, 0]
#   tau2 = [-3,  1,  2, -0.1, 5,   0.3]  -> trimmed [-3,  0,  2, 0, 5, 0]
#   tau3 = [ 1, -1, -3,  2,   0.5, 4  ]  -> trimmed [ 0,  0, -3, 2, 0, 4]
#   mass  = [ 1, -2, -1,  2,   8,   4  ]  -> elected [+, -, -, +, +, +]
TAUS = np.array(
    [
        [4.0, -2.0, 1.0, 0.5, 3.0, -0.2],
        [-3.0, 1.0, 2.0, -0.1, 5.0, 0.3],
        [1.0, -1.0, -3.0, 2.0, 0.5, 4.0],
    ]
)
WEIGHTS = np.array([0.5, 1.0, 2.0])


def _tv(x=TAUS):
    return {"v": jnp.asarray(x)}


def test_hand_example_disjoint_mean(key):
    # agreeing entries: {4}, {-2}, {-3}, {2}, {3, 5}, {4}
    out = ties(_tv(), key, density=0.5)["v"]
    np.testing.assert_allclose(out, [4.0, -2.0, -3.0, 2.0, 4.0, 4.0], rtol=1e-12)


def test_hand_example_aggregates(key):
    out = ties(_tv(), key, density=0.5, aggregate="sum")["v"]
    np.testing.assert_allclose(out, [4.0, -2.0, -3.0, 2.0, 8.0, 4.0], rtol=1e-12)
    out = ties(_tv(), key, density=0.5, aggregate="max")["v"]
    np.testing.assert_allclose(out, [4.0, -2.0, -3.0, 2.0, 5.0, 4.0], rtol=1e-12)
    out = ties(_tv(), key, density=0.5, scale=0.5)["v"]
    np.testing.assert_allclose(out, [2.0, -1.0, -1.5, 1.0, 2.0, 2.0], rtol=1e-12)


def test_hand_example_weights_after_election_peft(key):
    # unweighted election as above; weighted sum over agreeing entries / their count:
    # 0.5*4, 0.5*-2, 2*-3, 2*2, (0.5*3 + 1*5)/2, 2*4
    out = ties(_tv(), key, density=0.5, weights=jnp.asarray(WEIGHTS))["v"]
    np.testing.assert_allclose(out, [2.0, -1.0, -6.0, 4.0, 3.25, 8.0], rtol=1e-12)


def test_hand_example_weights_before_election_mergekit_474(key):
    # weighted mass = [2 - 3, -1, 2 - 6, 4, 1.5 + 5, 8] -> signs [-, -, -, +, +, +]:
    # entry 0 flips from +2 (Algorithm 1) to -3 (mergekit issue #474)
    w = jnp.asarray(WEIGHTS)
    out = ties(_tv(), key, density=0.5, weights=w, weights_before_election=True)["v"]
    np.testing.assert_allclose(out, [-3.0, -1.0, -6.0, 4.0, 3.25, 8.0], rtol=1e-12)
    # mergekit normalize=True: divide by the agreeing weights, 6.5 / 1.5 at entry 4
    out = ties(
        _tv(),
        key,
        density=0.5,
        weights=w,
        weights_before_election=True,
        aggregate="weighted_mean",
    )["v"]
    np.testing.assert_allclose(out, [-3.0, -2.0, -3.0, 2.0, 6.5 / 1.5, 4.0], rtol=1e-12)


def test_hand_example_count_election(key):
    # sign counts [0, -1, 0, +1, +2, +1] -> zero goes to + -> entry 2 keeps tau2's +2
    out = ties(_tv(), key, density=0.5, election="count")["v"]
    np.testing.assert_allclose(out, [4.0, -2.0, 2.0, 2.0, 4.0, 4.0], rtol=1e-12)


def test_zero_sign_majority_vs_positive(key):
    # entry 0 cancels exactly (2 - 2 = 0); the other elected signs are -, so the
    # official majority rule picks -, PEFT's rule picks +
    tv = {"v": jnp.asarray([[2.0, -1.0, -1.0], [-2.0, -1.0, -1.0]])}
    pos = ties(tv, key, density=1.0)["v"]
    maj = ties(tv, key, density=1.0, zero_sign="majority")["v"]
    np.testing.assert_allclose(pos, [2.0, -1.0, -1.0])
    np.testing.assert_allclose(maj, [-2.0, -1.0, -1.0])


def test_keep_rule_official_keeps_one_more(key):
    # k = int(0.5 * 6) = 3; the official kthvalue(6 - 3) threshold keeps 4 entries:
    # tau1 keeps |1| too, tau2 keeps |1|, tau3 keeps |1| (tie: |1| twice -> both kept)
    out = magnitude_prune(_tv(), key, density=0.5, keep_rule="official")["v"]
    t1 = [4.0, -2.0, 1.0, 0.0, 3.0, 0.0]
    t2 = [-3.0, 1.0, 2.0, 0.0, 5.0, 0.0]
    t3 = [1.0, -1.0, -3.0, 2.0, 0.0, 4.0]
    np.testing.assert_allclose(out, np.sum([t1, t2, t3], axis=0), rtol=1e-12)


def test_magnitude_prune_hand_example(key):
    # trimmed rows as in the header, weighted sum with WEIGHTS
    out = magnitude_prune(_tv(), key, density=0.5, weights=jnp.asarray(WEIGHTS))["v"]
    expected = (
        0.5 * np.array([4.0, -2.0, 0, 0, 3.0, 0])
        + 1.0 * np.array([-3.0, 0, 2.0, 0, 5.0, 0])
        + 2.0 * np.array([0, 0, -3.0, 2.0, 0, 4.0])
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12)


# --------------------------------------------------------------------------------------
# agreement with PEFT (NumPy transcription of peft/utils/merge_utils.py)
# --------------------------------------------------------------------------------------


def _random_tree(seed, num=4):
    rng = np.random.default_rng(seed)
    return {
        "attn": {"q": rng.standard_normal((num, 12, 10)), "bias": rng.standard_normal((num, 7))},
        "mlp": rng.standard_normal((num, 3, 5, 4)),
    }


@pytest.mark.parametrize("density", [0.2, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_ties_matches_peft(density, weighted, key):
    tree = _random_tree(1)
    w = np.array([0.3, 1.2, 0.7, 2.0]) if weighted else np.ones(4)
    out = ties(jax.tree.map(jnp.asarray, tree), key, density=density, weights=jnp.asarray(w))
    for got, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        np.testing.assert_allclose(got, peft.ties(list(x), w, density), rtol=1e-12, atol=1e-15)


def test_ties_unweighted_default_is_peft_with_unit_weights(key):
    tree = _random_tree(2)
    out = ties(jax.tree.map(jnp.asarray, tree), key, density=0.3)
    for got, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        np.testing.assert_allclose(got, peft.ties(list(x), np.ones(4), 0.3), rtol=1e-12)


def test_ties_count_election_matches_peft_frequency(key):
    tree = _random_tree(3)
    w = np.array([0.3, 1.2, 0.7, 2.0])
    out = ties(
        jax.tree.map(jnp.asarray, tree), key, density=0.4, weights=jnp.asarray(w), election="count"
    )
    for got, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        np.testing.assert_allclose(got, peft.ties(list(x), w, 0.4, "frequency"), rtol=1e-12)


@pytest.mark.parametrize("density", [0.2, 0.9])
def test_magnitude_prune_matches_peft(density, key):
    tree = _random_tree(4)
    w = np.array([0.3, -1.2, 0.7, 2.0])
    out = magnitude_prune(jax.tree.map(jnp.asarray, tree), key, density=density, weights=w)
    for got, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        np.testing.assert_allclose(got, peft.magnitude_prune(list(x), w, density), rtol=1e-12)


def test_global_trim_matches_whole_model_reference(key):
    # official code: flatten the whole model per task, one top-k over everything
    tree = _random_tree(5)
    leaves = jax.tree.leaves(tree)
    flat = np.concatenate([x.reshape(4, -1) for x in leaves], axis=1)
    k = int(0.2 * flat.shape[1])
    thr = -np.sort(-np.abs(flat), axis=1)[:, k - 1]
    trimmed = np.where(np.abs(flat) >= thr[:, None], flat, 0.0)
    mask = peft.calculate_majority_sign_mask(trimmed)
    expected_flat = peft.disjoint_merge(trimmed, mask)
    out = ties(jax.tree.map(jnp.asarray, tree), key, density=0.2, trim="global")
    got_flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)])
    np.testing.assert_allclose(got_flat, expected_flat, rtol=1e-12)


def test_ties_array_equals_pytree_operator(key):
    x = jnp.asarray(_random_tree(6)["attn"]["q"])
    np.testing.assert_allclose(
        ties_array(x, key, density=0.3, scale=1.3), ties({"x": x}, key, density=0.3, scale=1.3)["x"]
    )


def test_search_path_agrees_with_peft_on_a_large_leaf(key):
    # 3 x 40_000 entries: the threshold comes from the search path, not a sort
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 200, 200))
    out = ties({"x": jnp.asarray(x)}, key, density=0.2)["x"]
    np.testing.assert_allclose(out, peft.ties(list(x), np.ones(3), 0.2), rtol=1e-12)


# --------------------------------------------------------------------------------------
# tracing and errors
# --------------------------------------------------------------------------------------


def test_public_entry_traces_once_for_new_hparam_values(key, assert_traced_once):
    tv = {"v": jnp.asarray(np.random.default_rng(8).standard_normal((3, 17)))}  # fresh shape
    for op, hparams in [
        (ties, [{"density": 0.3, "scale": 1.0}, {"density": 0.6, "scale": 2.0, "weights": None}]),
        (magnitude_prune, [{"density": 0.3}, {"density": 0.8, "scale": 0.5}]),
    ]:
        calls = iter(hparams)
        assert_traced_once(lambda op=op, c=calls: op(tv, key, **next(c)), expect_first_trace=True)


def test_bad_inputs_name_the_problem(key):
    tv = _tv()
    with pytest.raises(ValueError, match="density"):
        ties(tv, key, density=1.5)
    with pytest.raises(ValueError, match="density"):
        ties(tv, key, density=0.0)
    with pytest.raises(TaskVectorError, match="weights has shape"):
        ties(tv, key, weights=jnp.ones(2))
    with pytest.raises(TaskVectorError, match="NaN"):
        ties({"v": jnp.asarray([[1.0, np.nan], [0.0, 1.0]])}, key)
    with pytest.raises(TaskVectorError, match="task axis"):
        ties({"a": jnp.ones((3, 2)), "b": jnp.ones((2, 2))}, key)
    with pytest.raises(ValueError, match="aggregate"):
        ties(tv, key, aggregate="median")
    with pytest.raises(ValueError, match="trim"):
        magnitude_prune(tv, key, trim="layer")
    with pytest.raises(ValueError, match="keep_rule"):
        ties(tv, key, keep_rule="torch")


def test_module_exports():
    # the package re-exports the function `ties`, which shadows the submodule attribute
    ties_module = importlib.import_module("mergetheory.merge.ties")
    for name in ties_module.__all__:
        assert hasattr(ties_module, name)
