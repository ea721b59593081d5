"""Paired performance curves, Holm, concavity tests, n* on synthetic curves with known answers."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.analysis import (
    compare_n_star,
    concavity_test,
    holm,
    n_star,
    nested_subsets,
    normalized_performance,
    paired_curve,
    paired_difference,
    rescale_to_norm,
    width_paths,
)


def _paths(key, curve, *, num_paths=40, offset=1.0, noise=1e-3):
    """Paths = curve + a large per-path offset (cancels in paired differences) + noise."""
    rng = np.random.default_rng(int(jr.randint(key, (), 0, 2**30)))
    n = curve.size
    return (
        curve[None]
        + offset * rng.normal(size=(num_paths, 1))
        + noise * rng.normal(size=(num_paths, n))
    )


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max-accumulated 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def test_paired_second_differences_of_a_known_concave_curve(key):
    ns = np.arange(1, 11)
    curve = 2.0 * np.sqrt(ns)
    c = paired_curve(_paths(key, curve))
    exact_d2 = 2.0 * (np.sqrt(ns[2:]) - 2 * np.sqrt(ns[1:-1]) + np.sqrt(ns[:-2]))
    assert np.all(np.abs(c.diff2 - exact_d2) < 4 * c.diff2_stderr)
    # pairing: the per-path offsets (sd 1) dominate the levels, not the differences
    assert np.all(c.diff2_stderr < 0.01 * c.stderr[1:-1])
    t = concavity_test(c)
    assert t.verdict == "strictly concave"
    assert t.num_concave == 8 and t.num_convex == 0
    np.testing.assert_array_equal(t.ns, ns[1:-1])


def test_concavity_test_finds_a_convex_step_and_holm_is_stricter(key):
    curve = np.log(np.arange(1, 9.0))
    curve[5:] += 0.3  # a jump: convex step centred at n = 5
    t = concavity_test(paired_curve(_paths(key, curve)))
    assert t.verdict == "convex somewhere"
    assert t.ns[np.argmin(t.p_convex)] == 5
    # a flat curve with noise only: nothing significant after Holm
    flat = concavity_test(paired_curve(_paths(jr.fold_in(key, 1), np.zeros(8), noise=1.0)))
    assert flat.num_convex == 0 and flat.num_concave == 0
    assert flat.verdict == "inconclusive"


def test_n_star_of_a_performance_curve_with_known_answer(key):
    ns = np.arange(1, 11)
    perf = 1.0 - 0.5**ns  # gains g_n = 0.5^(n+1): g_1 = 0.25; g_3 = 0.0625 < 0.3 g_1 <= g_2
    paths = _paths(key, perf, noise=1e-5)
    c = paired_curve(paths)
    gr = n_star(c, "gain_ratio", kappa=0.3)
    assert gr.n_star == 3 and not gr.censored and gr.ci_low <= 3 <= gr.ci_high
    # utility P_n / g_1 - 0.3 n: 1.7, 2.4, 2.6, 2.55, 2.375, ... -> argmax n = 3
    ut = n_star(c, "utility", kappa=0.3)
    assert ut.n_star == 3
    # a width curve 1 - 0.8^n: g_n = 0.2 * 0.8^n, first below 0.3 g_1 at n = 7
    width = paired_curve(_paths(jr.fold_in(key, 1), 1.0 - 0.8**ns, noise=1e-5))
    cmp = compare_n_star(width, c, "gain_ratio", kappa=0.3)
    assert cmp.predicted.n_star == 7 and cmp.observed.n_star == 3
    assert cmp.difference == -4 and not cmp.overlap
    same = compare_n_star(c, c, "gain_ratio", kappa=0.3)
    assert same.overlap and same.difference == 0
    # a falling curve has no utility n* (first gain <= 0)
    falling = paired_curve(_paths(key, -np.sqrt(ns), noise=1e-5))
    assert compare_n_star(width, falling, "utility", kappa=0.3) is None
    with pytest.raises(ValueError, match="definition"):
        n_star(c, "kinematic", kappa=0.3)


def test_normalized_performance_by_hand():
    # loss: (base - merged) / (base - expert) = (2 - 1.5) / (2 - 1) = 0.5
    np.testing.assert_allclose(
        normalized_performance([[1.5, 3.0]], [2.0, 3.0], [1.0, 2.0], higher_is_better=False),
        [[0.5, 0.0]],
    )
    np.testing.assert_allclose(
        normalized_performance([0.45], [0.1], [0.9], higher_is_better=True), [0.5]
    )
    with pytest.raises(ValueError, match="no better than the base"):
        normalized_performance([1.0], [1.0], [1.2], higher_is_better=False)


def test_nested_subsets_are_stable_permutations(key):
    p = nested_subsets(key, num_tasks=7, num_paths=5)
    assert p.shape == (5, 7)
    assert all(sorted(row) == list(range(7)) for row in p)
    np.testing.assert_array_equal(nested_subsets(key, num_tasks=7, num_paths=9)[:5], p)
    assert len({tuple(r) for r in p}) > 1


def test_rescale_to_norm_batched():
    tree = {"a": jnp.array([[3.0, 0.0], [0.0, 0.0]]), "b": jnp.array([[4.0], [0.0]])}
    out = rescale_to_norm(tree, jnp.array([10.0, 2.0]))
    np.testing.assert_allclose(out["a"], [[6.0, 0.0], [0.0, 0.0]])  # norm 5 -> 10
    np.testing.assert_allclose(out["b"], [[8.0], [0.0]])  # the zero update stays zero


def test_paired_difference_by_hand():
    # two paths, three n: d = a - b = [[0, 1, 3], [0, 3, 1]] -> per-n means 0, 2, 2
    a = np.array([[1.0, 2.0, 4.0], [1.0, 4.0, 2.0]])
    b = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    d = paired_difference(a, b)
    np.testing.assert_allclose(d.mean, [0.0, 2.0, 2.0])
    np.testing.assert_allclose(d.stderr, [0.0, 1.0, 1.0])  # sd sqrt(2) / sqrt(2)
    assert d.avg == pytest.approx(2.0) and d.avg_stderr == pytest.approx(0.0)
    # z = 2 at n = 2, 3: one-sided p = 0.0228 each, Holm 0.0455 <= 0.05 -> both better
    assert d.num_better == 2 and d.num_worse == 0
    assert paired_difference(a, b, alpha=0.04).num_better == 0


def test_width_paths_on_orthonormal_experts_match_the_golden_table(key):
    """Gram = I: every path's hull0 width is E max(0, Z_1..Z_n) (Sources S2 values),
    whatever the order; the spread over paths is Monte Carlo error only."""
    golden = np.array([0.3989, 0.6810, 0.8881, 1.0458])
    paths = nested_subsets(key, num_tasks=6, num_paths=8)[:, :4]
    w = width_paths(key, np.eye(6), paths, num_samples=4000)
    assert w.shape == (8, 4)
    c = paired_curve(w)
    assert np.all(np.abs(c.mean - golden) < 4 * c.stderr + 1e-3)
    assert np.all(np.diff(w, axis=1) >= 0)  # nested sets, common random numbers
