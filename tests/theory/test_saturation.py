"""Tests for mergetheory.theory.saturation: the bounds, the correlated identity, the cap."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.geometry import ConvexHull
from mergetheory.geometry.closed_forms import expected_chi, expected_max_normal
from mergetheory.tasks import GaussianSpec, LoRASpec, sample_task_vectors
from mergetheory.theory import saturation as sat

N = 6
M = 4000


def test_bounds_are_tight_for_orthonormal_vectors():
    rho = 1.7
    gen = rho * jnp.eye(N)
    assert sat.min_pairwise_distance(gen) == pytest.approx(rho * math.sqrt(2), rel=1e-12)
    assert sat.min_pairwise_distance(gen, with_origin=True) == pytest.approx(rho, rel=1e-12)
    # Sudakov-Fernique is exact here: (rho sqrt2 / sqrt2) E_n = rho E_n = w
    assert sat.width_lower_bound(gen) == pytest.approx(rho * expected_max_normal(N), rel=1e-12)
    assert sat.width_upper_bound(gen) == pytest.approx(rho * math.sqrt(2 * math.log(N)))
    assert sat.width_upper_bound(gen, kind="hull0") == pytest.approx(
        rho * math.sqrt(2 * math.log(N + 1))
    )


def test_rank_cap_enters_the_upper_bound():
    """Many vectors in a 2-D subspace: U = R E chi_2 < R sqrt(2 log n)."""
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    gen = jnp.asarray(np.stack([np.cos(angles), np.sin(angles), np.zeros(40)], axis=1))
    assert sat.width_upper_bound(gen) == pytest.approx(expected_chi(2), rel=1e-12)


@pytest.mark.parametrize("kind", ["hull", "hull0"])
def test_measured_curve_respects_both_bounds(key, kind):
    k_tv, k_w = jr.split(key)
    tv = sample_task_vectors(k_tv, GaussianSpec(N), {"w": (3, 4)}, jnp.float64)
    ev = sat.check_width_bounds(k_w, tv, kind=kind, num_samples=M)
    assert ev.verdict == "holds", ev.verdict
    assert np.all(ev.curve.mean <= ev.upper + 5 * ev.curve.stderr)
    assert np.all(ev.curve.mean >= ev.lower - 5 * ev.curve.stderr)
    np.testing.assert_allclose(ev.coverage * ev.radius, ev.curve.mean, rtol=1e-12)
    assert np.all(np.diff(ev.radius) >= 0)


def test_lower_bound_is_tight_on_the_orthonormal_curve(key):
    ev = sat.check_width_bounds(key, ConvexHull.from_gram(jnp.eye(N)), kind="hull", num_samples=M)
    ok = ev.lower > 0
    assert np.all(np.abs(ev.curve.mean[ok] - ev.lower[ok]) < 5 * ev.curve.stderr[ok])


def test_check_width_bounds_on_lora_factors(key):
    k_tv, k_w = jr.split(key)
    factors = sample_task_vectors(k_tv, LoRASpec(N, rank=2), {"q": (8, 5)}, jnp.float64)
    ev = sat.check_width_bounds(k_w, factors, kind="hull", num_samples=M)
    assert ev.verdict == "holds"
    assert ev.rank[-1] == N


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9])
def test_correlated_shrinkage_is_exact_per_path(key, rho):
    """h_tau(g) = sqrt(rho) <g, c> + sqrt(1 - rho) h_eps(g) on every path."""
    ev = sat.check_correlated_shrinkage(key, num_tasks=N, rho=rho, dim=64, num_samples=M)
    assert ev.verdict == "holds", ev.verdict
    assert ev.identity_residual < 1e-12
    assert ev.predicted_coverage == pytest.approx(math.sqrt(1 - rho) * expected_max_normal(N))


def test_cap_is_approached_in_low_dimension(key):
    """d = 2: the hull of many unit vectors fills the disc, coverage -> E chi_2."""
    k_tv, k_w = jr.split(key)
    tv = sample_task_vectors(k_tv, GaussianSpec(48, exact_norm=True), {"w": (2,)}, jnp.float64)
    ev = sat.check_width_bounds(k_w, tv["w"], kind="hull", num_samples=M, method="naive")
    assert ev.verdict == "holds"
    assert ev.rank[-1] == 2
    assert 0.95 < ev.cap_fraction <= 1.0 + 5 * ev.curve.stderr[-1]


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        sat.width_upper_bound(jnp.eye(3), kind="span")
    with pytest.raises(ValueError, match="rho"):
        sat.check_correlated_shrinkage(jr.key(0), num_tasks=2, rho=1.5, dim=4, num_samples=4)


def test_correlated_shrinkage_traces_once(key, assert_traced_once):
    key2 = jr.fold_in(key, 1)  # eager ops outside the probed calls
    calls = iter(
        [
            lambda: sat.check_correlated_shrinkage(
                key, num_tasks=N, rho=0.2, dim=64, num_samples=M
            ),
            lambda: sat.check_correlated_shrinkage(
                key2, num_tasks=N, rho=0.7, dim=64, num_samples=M
            ),
        ]
    )
    assert_traced_once(lambda: next(calls)())
