"""Tests for mergetheory.merge.rht: the code-level RHT of arXiv 2505.21226."""

import _peft_reference as peft
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mergetheory.merge import rht, rht_array, ties
from mergetheory.tree import TaskVectorError


def test_hand_example(key):
    # density 0.6 -> k = int(0.6 * 5) = 3 kept, then / 0.6
    #   x1 = [ 4, -1, 2, 0.5, -3  ] -> [ 4, 0, 2, 0, -3  ] / 0.6 = [20/3, 0, 10/3, 0, -5]
    #   x2 = [-2,  3, 1, 0.2, -1.5] -> [-2, 3, 0, 0, -1.5] / 0.6 = [-10/3, 5, 0, 0, -2.5]
    #   unweighted sum [10/3, 5, 10/3, 0, -7.5] -> signs [+, +, +, + (tie), -]
    #   c = [1, 3] / 4; agreeing: {x1}, {x2}, {x1}, {}, {x1, x2}
    x = jnp.asarray([[4.0, -1.0, 2.0, 0.5, -3.0], [-2.0, 3.0, 1.0, 0.2, -1.5]])
    out = rht({"x": x}, key, weights=jnp.asarray([1.0, 3.0]), density=0.6)["x"]
    expected = [0.25 * 20 / 3, 0.75 * 5, 0.25 * 10 / 3, 0.0, (0.25 * -5 + 0.75 * -2.5) / 2]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("density", [0.3, 0.7, 1.0])
def test_matches_seed_code(density, key):
    rng = np.random.default_rng(1)
    tree = {"a": rng.standard_normal((3, 16, 8)), "b": rng.standard_normal((3, 8, 16))}
    c = np.array([0.2, 0.5, 0.9])
    out = rht(jax.tree.map(jnp.asarray, tree), key, weights=jnp.asarray(c), density=density)
    for name, x in tree.items():
        expected = peft.process_dare_ties_magnitude_with_rescaler(list(x), c / c.sum(), density)
        np.testing.assert_allclose(out[name], expected, rtol=1e-12)


def test_is_peft_ties_on_rescaled_inputs(key):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 50)))
    c = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    a = rht_array(x, key, weights=c, density=0.7)
    b = ties({"x": x / 0.7}, key, weights=c / c.sum(), density=0.7)["x"]
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_long_leaf_matches_seed_code(key):
    # 3 x 40_000 entries: the eager entry's thresholds come from the shared search program
    x = np.random.default_rng(3).standard_normal((3, 200, 200))
    c = np.array([0.2, 0.5, 0.9])
    out = rht({"x": jnp.asarray(x)}, key, weights=jnp.asarray(c), density=0.3)["x"]
    expected = peft.process_dare_ties_magnitude_with_rescaler(list(x), c / c.sum(), 0.3)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def _gaussian_ratio(rho):
    c = stats.norm.ppf(1 - rho / 2)
    return np.sqrt(2 * (c * stats.norm.pdf(c) + stats.norm.sf(c))) / rho


def test_population_norm_ratio_matches_theory_table(key):
    # Sources S6: 1.4182 (rho 0.7), 1.9274 (0.5), 2.9503 (0.3), measured on 2e6 Gaussian
    # entries, so each carries a Monte Carlo error of a few 1e-4; the closed form gives
    # 1.41814, 1.92735, 2.95015. The operator runs on the Gaussian quantile grid
    # Phi^-1((i + 1/2) / n), a deterministic stand-in for the population (grid error
    # O(log(n) / n), well below the table's 3e-4).
    num = 1 << 20
    grid = stats.norm.ppf((np.arange(num) + 0.5) / num)
    x = jnp.asarray(grid[None, :])
    for rho, value in [(0.7, 1.4182), (0.5, 1.9274), (0.3, 2.9503)]:
        y = np.asarray(rht({"x": x}, key, density=rho)["x"])
        ratio = np.linalg.norm(y) / np.linalg.norm(grid)
        assert abs(_gaussian_ratio(rho) - value) < 3e-4
        assert abs(ratio - value) < 3e-4
        assert abs(ratio - _gaussian_ratio(rho)) < 1e-4


def test_norm_ratio_and_heavier_tails_monte_carlo(key):
    rho, num = 0.7, 1 << 20
    x = jax.random.normal(key, (1, num))
    y = np.asarray(rht({"x": x}, key, density=rho)["x"], dtype=np.float64)
    x = np.asarray(x[0], dtype=np.float64)
    ratio = np.linalg.norm(y) / np.linalg.norm(x)
    # delta-method stderr of sqrt(A / B) / rho, A = mean(x^2 1[kept]), B = mean(x^2), with
    # the influence of the estimated threshold c on A: -c^2 (1[kept] - rho)
    kept = y != 0
    c = np.abs(x[kept]).min()
    a, b = np.mean(x**2 * kept), np.mean(x**2)
    infl_a = x**2 * kept - a - c**2 * (kept - rho)
    infl_b = x**2 - b
    infl_log = 0.5 * (infl_a / a - infl_b / b)
    stderr = ratio * infl_log.std() / np.sqrt(num)
    assert abs(ratio - _gaussian_ratio(rho)) < 5 * stderr
    assert abs(ratio - 1.4182) < 5 * stderr + 3e-4
    # tails get heavier (Sources S6: kurtosis 3.00 -> 3.09), pruned zeros included
    k_before = stats.kurtosis(x, fisher=False)
    k_after = stats.kurtosis(y, fisher=False)
    assert k_after > k_before + 0.05  # sampling sd of each kurtosis ~ sqrt(24 / n) = 0.005


def test_traced_once(key, assert_traced_once):
    tv = {"x": jnp.ones((2, 19))}
    calls = iter([{"density": 0.7}, {"density": 0.5, "weights": None}])
    assert_traced_once(lambda: rht(tv, key, **next(calls)), expect_first_trace=True)


def test_bad_inputs(key):
    tv = {"x": jnp.ones((2, 4))}
    with pytest.raises(ValueError, match="density"):
        rht(tv, key, density=2.0)
    with pytest.raises(TaskVectorError, match="weights has shape"):
        rht(tv, key, weights=jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="sum to 0"):
        rht(tv, key, weights=jnp.asarray([1.0, -1.0]))
