"""Tests for mergetheory.theory.scaling_law: exact 1/k law, simulation, fits."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.theory import scaling_law as sl

KS = tuple(range(1, 10))


@pytest.fixture
def problem(key):
    return sl.random_quadratic_problem(jr.fold_in(key, 7), 8, c=0.8)


def _pool(key, problem, size):
    root = sl._psd_sqrt(problem.cov)
    return problem.mean[None, :] + jr.normal(key, (size, problem.mean.shape[0])) @ root.T


def test_exact_formulas_by_hand(problem):
    h, s, c = problem.hessian, problem.cov, problem.c
    m = problem.theta_0 + c * problem.mean - problem.theta_star
    l_inf = 0.5 * m @ h @ m
    amp = 0.5 * c**2 * jnp.trace(h @ s)
    np.testing.assert_allclose(sl.limit_loss(problem), l_inf, rtol=1e-12)
    np.testing.assert_allclose(sl.expected_merge_loss(problem, 3), l_inf + amp / 3, rtol=1e-12)
    a = h @ m
    var3 = c**2 / 3 * a @ s @ a + c**4 / 18 * jnp.trace(h @ s @ h @ s)
    np.testing.assert_allclose(sl.merge_loss_variance(problem, 3), var3, rtol=1e-12)
    np.testing.assert_allclose(sl.finite_population_factor(jnp.array([1, 9]), 9), [1.0, 0.0])


def test_simulation_matches_exact_with_replacement(key, problem, assert_traced_once):
    keys = iter([key, jr.fold_in(key, 1)])
    # the entry point traces once per (shapes, static args)
    sim = assert_traced_once(
        lambda: sl.simulate_merge_loss(next(keys), problem, KS, num_draws=10_000)
    )
    exact = sl.expected_merge_loss(problem, sim.ks)
    assert np.all(np.abs(sim.mean - exact) < 5 * sim.stderr)
    var = sl.merge_loss_variance(problem, sim.ks)
    assert np.all(np.abs(sim.variance - var) < 5 * sim.variance_stderr)


def test_simulation_matches_finite_population_formula(key, problem):
    k_pool, k_sim = jr.split(key)
    pool = _pool(k_pool, problem, 9)
    sim = sl.simulate_merge_loss(k_sim, problem, KS, num_draws=10_000, pool=pool)
    exact = sl.expected_merge_loss_pool(problem, pool, sim.ks)
    ok = np.asarray(sim.stderr) > 1e-12 * np.abs(np.asarray(exact))
    assert not ok[-1] and ok[:-1].all()
    assert np.all(np.abs(sim.mean - exact)[ok] < 5 * sim.stderr[ok])
    # k = M: the full average, deterministic
    np.testing.assert_allclose(sim.mean[-1], exact[-1], rtol=1e-10)
    np.testing.assert_allclose(sim.variance[-1], 0.0, atol=1e-20)
    # the conditional curve is exactly L'_inf + A'/k
    l_p, a_p, _ = sl.pool_scaling_law_constants(problem, pool)
    np.testing.assert_allclose(exact, l_p + a_p / np.arange(1.0, 10.0), rtol=1e-10)
    with pytest.raises(ValueError, match="pool size"):
        sl.simulate_merge_loss(k_sim, problem, (10,), num_draws=10, pool=pool)


def test_pool_average_is_exact_and_literal_factor_is_not(key, problem):
    num_pools, m = 4000, 9
    pools = jax.vmap(lambda k_: _pool(k_, problem, m))(jr.split(key, num_pools))
    ks = jnp.arange(1, m + 1)
    cond = jax.vmap(lambda p: sl.expected_merge_loss_pool(problem, p, ks))(pools)
    mean = np.asarray(cond.mean(0))
    se = np.asarray(cond.std(0, ddof=1)) / np.sqrt(num_pools)
    exact = np.asarray(sl.expected_merge_loss(problem, ks))
    assert np.all(np.abs(mean - exact) < 5 * se)
    l_inf, amp, _ = sl.scaling_law_constants(problem)
    kf = np.arange(1.0, m + 1)
    literal = l_inf + sl.finite_population_factor(ks, m) * amp / kf
    z = (mean - np.asarray(literal)) / se
    assert np.max(np.abs(z)) > 5  # Sources S8 read literally is rejected on average


def test_variance_is_order_one_over_k(key, problem):
    sim = sl.simulate_merge_loss(key, problem, KS, num_draws=10_000)
    kf = np.arange(1.0, 10.0)
    kv = kf * np.asarray(sim.variance)
    assert kv.max() / kv.min() < 2.0  # Theta(1/k): k Var roughly constant
    opt = problem._replace(theta_star=problem.theta_0 + problem.c * problem.mean)
    sim0 = sl.simulate_merge_loss(key, opt, KS, num_draws=10_000)
    kv0 = kf * np.asarray(sim0.variance)
    k2v0 = kf * kv0
    assert kv0.max() / kv0.min() > 5.0  # a = 0: Theta(1/k^2), so k Var is not constant
    assert k2v0.max() / k2v0.min() < 1.5


@pytest.mark.parametrize("params", [(0.5, 0.3, 0.2), (0.18, 0.052, 0.0), (2.0, 1.5, 1.2)])
def test_fit_recovers_noiseless_parameters(params):
    ks = np.arange(1, 10.0)
    y = sl.scaling_law_curve(ks, *params)
    fit = sl.fit_scaling_law(ks, y)
    np.testing.assert_allclose([fit.l_inf, fit.a, fit.b], params, rtol=1e-6, atol=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(fit.weights, ks / ks.mean())  # weights proportional to k
    assert fit.b_at_bound == (params[2] == 0.0)


def test_fit_stderr_is_calibrated(key):
    ks = np.arange(1, 10.0)
    truth = (0.5, 0.3, 0.2)
    se = 0.002 / np.sqrt(ks)
    z = []
    for i in range(40):
        noise = np.asarray(jr.normal(jr.fold_in(key, i), (9,)))
        fit = sl.fit_scaling_law(ks, sl.scaling_law_curve(ks, *truth) + se * noise, stderr=se)
        z.append((fit.l_inf - truth[0]) / fit.l_inf_stderr)
    z = np.asarray(z)
    assert np.all(np.abs(z) < 5)
    assert 0.5 < np.std(z) < 1.6


def test_three_point_forecast(key, problem):
    ks = np.arange(1, 10.0)
    y = sl.scaling_law_curve(ks, 0.5, 0.3, 0.2)
    out = sl.three_point_forecast(ks, y)
    np.testing.assert_array_equal(out.fit_ks, [1, 2, 4])
    assert out.max_rel_error < 1e-8
    # on the exact quadratic law the three points determine the whole curve
    exact = np.asarray(sl.expected_merge_loss(problem, jnp.arange(1, 10)))
    out = sl.three_point_forecast(ks, exact)
    assert out.max_rel_error < 1e-8 and out.fit.b == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="not all in ks"):
        sl.three_point_forecast(ks[:3], y[:3], fit_ks=(1, 2, 8))


def test_check_scaling_law_verdicts(key, problem, monkeypatch):
    ev = sl.check_scaling_law(key, problem, KS, num_draws=10_000)
    assert ev.verdict == "holds"
    assert np.all(np.abs(ev.fit_z[:2]) < 5)
    # another problem is self-consistent: simulated and exact from the same (doubled) law
    wrong = problem._replace(cov=2.0 * problem.cov)
    ev_bad = sl.check_scaling_law(key, wrong, KS, num_draws=10_000)
    assert ev_bad.verdict == "holds"
    sim = ev.simulation
    exact_wrong = np.asarray(sl.expected_merge_loss(wrong, sim.ks))
    assert np.max(np.abs(sim.mean - exact_wrong) / sim.stderr) > 5
    # a wrong exact law is caught: simulate `problem`, but compare with the doubled law
    right_law = sl.expected_merge_loss
    monkeypatch.setattr(sl, "expected_merge_loss", lambda _p, ks: right_law(wrong, ks))
    ev_caught = sl.check_scaling_law(key, problem, KS, num_draws=10_000)
    assert ev_caught.verdict.startswith("fails"), ev_caught.verdict
