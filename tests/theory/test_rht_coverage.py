"""Tests for mergetheory.theory.rht: norm ratio, decomposition identity, reparameterizations."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.tasks import CorrelatedSpec, GaussianSpec, sample_task_vectors
from mergetheory.theory import rht

N = 6
M = 4000
SHAPES = {"a": (16, 8), "b": (24,)}


def _experts(key, rho):
    spec = CorrelatedSpec(N, rho, exact_norm=True) if rho > 0 else GaussianSpec(N, exact_norm=True)
    return sample_task_vectors(key, spec, SHAPES, jnp.float64)


@pytest.mark.parametrize(("density", "golden"), [(0.7, 1.4182), (0.5, 1.9274), (0.3, 2.9503)])
def test_code_level_rht_norm_ratio(key, density, golden):
    """||RHT(x)|| / ||x|| on Gaussian entries (Sources S6), tolerance from the sample size."""
    num = 200_000
    x = jr.normal(key, (1, num), jnp.float64)
    y = rht.rht_reparameterize(x, None, density=density)
    x2, y2 = np.asarray(x[0] ** 2), np.asarray(y[0] ** 2)
    ratio = math.sqrt(y2.sum() / x2.sum())
    # delta-method standard error of the ratio estimator sqrt(mean y^2 / mean x^2)
    r2 = ratio**2
    se = np.std((y2 - r2 * x2) / x2.mean(), ddof=1) / math.sqrt(num) / (2 * ratio)
    assert abs(ratio - golden) < 5 * se + 1e-4  # golden values are quoted to 4 decimals
    assert rht.predicted_norm_ratio("rht", density) == pytest.approx(golden, abs=2e-4)
    # the tails get heavier (kurtosis with the pruned zeros included)
    assert np.mean(y2**2) / np.mean(y2) ** 2 > np.mean(x2**2) / np.mean(x2) ** 2


def test_rht_keeps_top_k_per_expert_and_tensor(key):
    tv = _experts(key, 0.0)
    out = rht.rht_reparameterize(tv, None, density=0.25)
    for name, x in tv.items():
        y = out[name]
        numel = math.prod(x.shape[1:])
        kept = np.asarray(jnp.sum(y != 0, axis=tuple(range(1, y.ndim))))
        np.testing.assert_array_equal(kept, int(0.25 * numel))
        mask = np.asarray(y != 0)
        np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(x)[mask] / 0.25, rtol=1e-12)


def test_heavy_tailed_keeps_norms_and_signs(key):
    k_tv, k_mix = jr.split(key)
    tv = _experts(k_tv, 0.5)
    out = rht.heavy_tailed_reparameterize(tv, k_mix, nu=3.0)

    def norms(t):
        return np.sqrt(sum(np.sum(np.asarray(v).reshape(N, -1) ** 2, axis=1) for v in t.values()))

    np.testing.assert_allclose(norms(out), norms(tv), rtol=1e-12)
    for name in tv:
        assert np.all(np.sign(out[name]) == np.sign(tv[name]))
    same = rht.heavy_tailed_reparameterize(tv, k_mix, nu=math.inf)
    for name in tv:
        np.testing.assert_allclose(same[name], tv[name], rtol=1e-12)


def test_mixing_factor_closed_forms():
    assert rht.student_t_mixing_factor(3.0) == pytest.approx(2 / math.pi, rel=1e-12)
    assert rht.student_t_mixing_factor(math.inf) == 1.0
    assert rht.student_t_mixing_factor(1e6) == pytest.approx(1.0, abs=1e-5)
    assert rht.predicted_correlation("dare", 0.5, 0.3) == pytest.approx(0.15)
    assert rht.predicted_correlation("rht", 0.5, 1.0) == pytest.approx(0.5)
    assert rht.predicted_geometry_gain("rht", 0.0, 0.3) == 0.0


def test_pruned_correlation_matches_simulation(key):
    """rho' after top-density magnitude pruning of two correlated Gaussian vectors."""
    rho, density, num = 0.6, 0.3, 400_000
    k1, k2 = jr.split(key)
    a = jr.normal(k1, (num,), jnp.float64)
    b = rho * a + math.sqrt(1 - rho**2) * jr.normal(k2, (num,), jnp.float64)
    y = rht.magnitude_prune_reparameterize(jnp.stack([a, b]), None, density=density)
    cos = float(jnp.dot(y[0], y[1]) / jnp.linalg.norm(y[0]) / jnp.linalg.norm(y[1]))
    assert cos == pytest.approx(rht.predicted_correlation("rht", rho, density), abs=0.01)


@pytest.mark.parametrize("name", ["rht", "dare", "heavy_tailed"])
def test_decomposition_identity_is_exact(key, name):
    """log total gain = log norm ratio + log normalized-width ratio, on the estimator."""
    k_tv, k_gain = jr.split(key)
    tv = _experts(k_tv, 0.5)
    param = {"nu": 3.0} if name == "heavy_tailed" else {"density": 0.5}
    ev = rht.coverage_gain(k_gain, tv, name, num_samples=M, **param)
    # w(T~ / s) from the engine equals w(T~) / s path by path (positive homogeneity)
    assert ev.identity_residual < 1e-12
    ratio = (ev.coverage_after[0]) / (ev.coverage_before[0])
    assert ev.log_total_gain == pytest.approx(ev.log_rescale_gain + math.log(ratio), abs=1e-12)
    assert ev.log_rescale_gain == pytest.approx(
        math.log(ev.radius_after / ev.radius_before), abs=1e-14
    )
    if name == "heavy_tailed":
        assert ev.log_rescale_gain == pytest.approx(0.0, abs=1e-12)


def test_rht_and_magnitude_prune_share_their_geometry(key):
    k_tv, k_gain = jr.split(key)
    tv = _experts(k_tv, 0.5)
    a = rht.coverage_gain(k_gain, tv, "rht", num_samples=M, density=0.3)
    b = rht.coverage_gain(k_gain, tv, "magnitude_prune", num_samples=M, density=0.3)
    assert a.log_geometry_gain == pytest.approx(b.log_geometry_gain, abs=1e-12)
    assert a.log_rescale_gain - b.log_rescale_gain == pytest.approx(math.log(1 / 0.3), abs=1e-12)


def test_isotropic_rht_gain_is_rescaling(key):
    """No shared component: the geometric part is ~0, the gain is the 1/density rescale."""
    k_tv, k_gain = jr.split(key)
    tv = sample_task_vectors(k_tv, GaussianSpec(N, exact_norm=True), {"w": (64, 64)}, jnp.float64)
    ev = rht.coverage_gain(k_gain, tv, "rht", num_samples=M, density=0.7)
    assert abs(ev.log_geometry_gain) < 0.01
    assert ev.verdict.startswith("fails")
    assert math.exp(ev.log_rescale_gain) == pytest.approx(1.4182, abs=0.02)


def test_unknown_reparameterization(key):
    with pytest.raises(ValueError, match="unknown reparameterization"):
        rht.coverage_gain(key, jnp.eye(3), "nope", num_samples=10, density=0.5)
    with pytest.raises(ValueError, match="takes exactly density"):
        rht.coverage_gain(key, jnp.eye(3), "rht", num_samples=10, nu=3.0)


def test_single_expert_registry_rht_is_the_reparameterization(key):
    """With one expert the code-level RHT merge reduces to prune + rescale (Sources S6)."""
    from mergetheory.merge import MERGE_OPERATORS as ops

    x = jr.normal(key, (1, 40, 30), jnp.float64)
    op = ops["rht"]
    hp = {**dict(op.default_hparams), "density": 0.7}
    merged = op.fn(x, key, **hp)
    expected = rht.rht_reparameterize(x, None, density=0.7)[0]
    np.testing.assert_allclose(merged, expected, rtol=1e-12, atol=1e-15)


def test_coverage_gain_traces_once(key, assert_traced_once):
    k_tv, k_gain = jr.split(key)
    tv = _experts(k_tv, 0.5)
    k_gain2 = jr.fold_in(k_gain, 1)  # eager ops outside the probed calls
    calls = iter(
        [
            lambda: rht.coverage_gain(k_gain, tv, "rht", num_samples=M, density=0.5),
            lambda: rht.coverage_gain(k_gain2, tv, "rht", num_samples=M, density=0.3),
        ]
    )
    assert_traced_once(lambda: next(calls)())
