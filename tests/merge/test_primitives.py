"""Tests for mergetheory.merge.primitives: trim, DARE drop, sign election, disjoint merge."""

import _peft_reference as peft
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.merge import (
    dare_drop_parts,
    dare_rescale,
    disjoint_merge,
    elect_and_merge,
    elect_sign,
    magnitude_threshold,
    prune_by_threshold,
    task_parts,
    trim_parts,
    trim_top_k,
)

X = np.array([[3.0, -1.0, 0.5, -2.0], [2.0, 2.0, -0.4, 1.0], [-1.0, 0.5, 0.3, -3.0]])


def test_trim_hand_example_and_forms_agree():
    # k = 2 per task: |3|, |-2| ; |2|, |2| ; |-1|... and |-3|
    want = [[3.0, 0.0, 0.0, -2.0], [2.0, 2.0, 0.0, 0.0], [-1.0, 0.0, 0.0, -3.0]]
    x = jnp.asarray(X)
    np.testing.assert_array_equal(np.asarray(trim_top_k(x, 2)), want)
    thr = magnitude_threshold(x, 2)
    np.testing.assert_array_equal(np.asarray(prune_by_threshold(x, thr)), want)
    np.testing.assert_array_equal(np.stack([np.asarray(p) for p in trim_parts(x, thr)]), want)
    for t, p in enumerate(task_parts(x)):
        np.testing.assert_array_equal(np.asarray(p), X[t])


def test_trim_matches_peft_magnitude_pruning():
    x = np.random.default_rng(0).standard_normal((3, 50))
    got = np.asarray(trim_top_k(jnp.asarray(x), int(0.3 * 50)))
    want = np.stack([peft.magnitude_based_pruning(row, 0.3) for row in x])
    np.testing.assert_array_equal(got, want)


def test_dare_drop_hand_example():
    mask = np.array([[True, False, True, True], [False, True, True, False], [True] * 4])
    parts = dare_drop_parts(None, jnp.asarray(X), 0.5, keep_mask=mask)
    np.testing.assert_array_equal(np.stack([np.asarray(p) for p in parts]), 2.0 * X * mask)
    np.testing.assert_array_equal(
        np.asarray(dare_rescale(jnp.asarray(X), jnp.asarray(mask), 0.5)), 2.0 * X * mask
    )
    with pytest.raises(ValueError, match="PRNG key"):
        dare_drop_parts(None, jnp.asarray(X), 0.5)


def test_elect_sign_and_disjoint_merge_match_peft():
    trimmed = np.asarray(trim_top_k(jnp.asarray(X), 2))
    sign = elect_sign(jnp.asarray(trimmed))
    want_mask = peft.calculate_majority_sign_mask(trimmed)  # per task: sign == elected
    np.testing.assert_array_equal(np.sign(trimmed) == np.asarray(sign), want_mask)
    got = np.asarray(disjoint_merge(jnp.asarray(trimmed), sign))
    np.testing.assert_allclose(got, peft.disjoint_merge(trimmed, want_mask), rtol=1e-12)


def test_elect_sign_count_and_majority_hand_example():
    # column sums of signs: [1, 1, 1, -1]; masses: [4, 1.5, 0.4, -4]
    s = np.asarray(elect_sign(jnp.asarray(X), election="count"))
    np.testing.assert_array_equal(s, [1.0, 1.0, 1.0, -1.0])
    # a zero score takes the majority elected sign of the array (official TIES)
    z = jnp.asarray([[1.0, -1.0, -2.0], [-1.0, 2.0, -1.0]])  # scores [0, 1, -3]
    np.testing.assert_array_equal(np.asarray(elect_sign(z, zero_sign="positive")), [1, 1, -1])
    np.testing.assert_array_equal(np.asarray(elect_sign(z, zero_sign="majority")), [1, 1, -1])
    z2 = jnp.asarray([[1.0, -1.0, -2.0, -1.0], [-1.0, 2.0, -1.0, -1.0]])  # [0, 1, -3, -2]
    np.testing.assert_array_equal(np.asarray(elect_sign(z2, zero_sign="majority")), [-1, 1, -1, -1])


def test_disjoint_aggregates_hand_example():
    x = jnp.asarray([[2.0, -1.0], [4.0, 3.0], [-1.0, 0.0]])
    sign = jnp.asarray([1.0, 1.0])
    w = jnp.asarray([1.0, 0.5, 2.0])
    # agreeing: column 0 tasks 0, 1 (values 2, 4); column 1 task 1 (value 3)
    np.testing.assert_allclose(disjoint_merge(x, sign), [3.0, 3.0])
    np.testing.assert_allclose(disjoint_merge(x, sign, w, aggregate="sum"), [4.0, 1.5])
    np.testing.assert_allclose(disjoint_merge(x, sign, w), [2.0, 1.5])  # sum / count
    np.testing.assert_allclose(
        disjoint_merge(x, sign, w, aggregate="weighted_mean"), [4.0 / 1.5, 3.0]
    )
    np.testing.assert_allclose(disjoint_merge(x, sign, w, aggregate="max"), [2.0, 1.5])
    with pytest.raises(ValueError, match="aggregate"):
        disjoint_merge(x, sign, aggregate="median")


def test_elect_and_merge_equals_the_array_primitives():
    trimmed = trim_top_k(jnp.asarray(X), 2)
    w = jnp.asarray([1.0, 2.0, 0.5])
    (got,) = elect_and_merge([task_parts(trimmed)], w, jnp.asarray(3.0), aggregate="sum")
    want = 3.0 * np.asarray(disjoint_merge(trimmed, elect_sign(trimmed), w, aggregate="sum"))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
