"""Tests for mergetheory.theory.threshold: the three definitions of n* and their checks."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from mergetheory.theory import threshold as th

# Sources S2, column E0_n = E max(0, Z_1..Z_n), typed in as the oracle.
E0_TABLE = [
    0.3989, 0.6810, 0.8881, 1.0458, 1.1697, 1.2701,
    0.0, 1.4242, 1.4853, 1.5389, 1.5865, 1.6293,
]  # fmt: skip
E0_TABLE[6] = 1.3534
# Sources S5: n* of definition (i) on the E0 curve.
N_STAR_TABLE = {0.5: 4, 0.4: 5, 0.3: 6, 0.25: 8}


def _e0_exact(num):
    """E max(0, Z_1..Z_n) = int_0^inf (1 - Phi(x)^n) dx, by quadrature (independent of the
    library's closed forms)."""
    return np.array(
        [
            scipy.integrate.quad(
                lambda x, n=n: 1.0 - scipy.stats.norm.cdf(x) ** n, 0, np.inf, epsabs=1e-13
            )[0]
            for n in range(1, num + 1)
        ]
    )


E0 = _e0_exact(12)


def test_quadrature_matches_theory_table():
    np.testing.assert_allclose(E0, E0_TABLE, atol=6e-5)
    assert E0[0] == pytest.approx(1.0 / math.sqrt(2.0 * math.pi), rel=1e-10)


@pytest.mark.parametrize("kappa,expected", sorted(N_STAR_TABLE.items()))
def test_gain_ratio_reproduces_theory_table(kappa, expected):
    out = th.threshold_gain_ratio(E0, kappa=kappa)
    assert out.n_star == expected
    assert (out.ci_low, out.ci_high) == (expected, expected)  # exact curve: zero stderr
    assert out.unique and not out.censored and out.num_crossings == 1
    assert out.verdict == "holds"
    # the rounded table itself gives the same answers
    assert th.threshold_gain_ratio(np.asarray(E0_TABLE), kappa=kappa).n_star == expected


def test_gain_ratio_censored_beyond_range():
    out = th.threshold_gain_ratio(E0, kappa=0.1)  # the report's Sources section: n* > 12
    assert out.censored and out.n_star == 12  # n* >= 12 with gains up to g_11
    assert out.verdict == "holds under stated assumptions"


CONCAVE = {
    "log": np.log1p(np.arange(1, 21.0)),
    "sqrt": np.sqrt(np.arange(1, 21.0)),
    "exp": 1.0 - np.exp(-np.arange(1, 21.0) / 3.0),
    "e0": E0,
}


@pytest.mark.parametrize("name", sorted(CONCAVE))
@pytest.mark.parametrize("kappa", [0.7, 0.5, 0.3])
def test_unique_on_strictly_concave_curves(name, kappa):
    w = CONCAVE[name]
    assert np.all(np.diff(w, 2) < 0)
    out = th.threshold_gain_ratio(w, kappa=kappa)
    g = np.diff(w)
    brute = [n for n in range(1, g.size + 1) if g[n - 1] < kappa * g[0]]
    if not brute:
        assert out.censored
        return
    assert out.n_star == brute[0]
    assert brute == list(range(brute[0], g.size + 1))  # a tail: the crossing is unique
    assert out.unique and out.num_crossings == 1 and out.verdict == "holds"


def _bumpy():
    # gains 0.4, 0.3, 0.1, 0.05, 0.25, 0.04, 0.02: falls below 0.5 * 0.4, then recovers
    return np.concatenate([[0.0], np.cumsum([0.4, 0.3, 0.1, 0.05, 0.25, 0.04, 0.02])])


def test_gain_ratio_detects_non_uniqueness():
    out = th.threshold_gain_ratio(_bumpy(), kappa=0.5)
    assert out.n_star == 3
    assert not out.unique and out.significant_violation and out.num_crossings == 3
    assert out.verdict.startswith("fails")
    assert "n = 3" in out.verdict and "n = 5" in out.verdict


def test_noise_level_re_crossing_is_not_a_failure():
    w = _bumpy()
    curve = th.WidthCurve.from_arrays(
        np.arange(1, w.size + 1),
        w,
        np.full(w.size, 0.2),
        np.diff(w),
        np.full(w.size - 1, 0.2),  # gains are all within noise of each other
        np.diff(w, 2),
        np.full(w.size - 2, 0.3),
    )
    out = th.threshold_gain_ratio(curve, kappa=0.5)
    assert not out.significant_violation and not out.unique
    assert out.verdict == "holds under stated assumptions"
    assert out.ci_low <= out.n_star <= out.ci_high


def test_confidence_set_from_stderr_brackets_truth():
    g = np.diff(E0)
    se = np.full(g.size, 0.01)
    curve = th.WidthCurve.from_arrays(np.arange(1, 13), E0, np.zeros(12), g, se, np.diff(g), se[1:])
    out = th.threshold_gain_ratio(curve, kappa=0.5)
    assert out.n_star == 4
    assert out.ci_low <= 4 <= out.ci_high
    assert out.ci_high > out.ci_low  # a real interval at this noise level
    # the statistic's stderr is the conservative sum se(g_n) + kappa se(g_1)
    np.testing.assert_allclose(out.statistic_stderr[1:], 0.01 * 1.5)


def test_nested_width_curve_and_bootstrap_agree_with_oracle(key, assert_traced_once):
    from mergetheory.width import nested_width

    k_w, k_boot = jr.split(key)
    est = nested_width(k_w, jnp.eye(12), kind="hull0", num_samples=8_000)
    out = th.threshold_gain_ratio(est, kappa=0.5)
    assert out.ci_low <= 4 <= out.ci_high
    assert out.verdict in ("holds", "holds under stated assumptions")
    # bootstrap over per-sample paths sup_{T_n} <g, t> = max(0, z_1..z_n), z iid N(0, 1)
    z = np.random.default_rng(0).standard_normal((8_000, 12))
    paths = np.maximum.accumulate(np.maximum(z, 0.0), axis=1)
    boot_keys = iter([k_boot, jr.fold_in(k_boot, 1)])
    boot, samples = assert_traced_once(  # traced once
        lambda: th.threshold_gain_ratio_bootstrap(
            next(boot_keys), paths, kappa=0.5, num_bootstrap=200
        )
    )
    assert boot.ci_low <= 4 <= boot.ci_high
    assert samples.shape == (200,)


def test_utility_matches_gain_ratio_for_identity_utility():
    # U = id and c = kappa g_1: J increases while g_n > c, so argmax J = n*_kappa
    for kappa, expected in N_STAR_TABLE.items():
        c = kappa * (E0[1] - E0[0])
        out = th.threshold_utility(E0, utility_fn=lambda w: w, cost=c)
        assert out.n_star == expected
        assert out.unique and out.verdict == "holds"


def test_utility_log_cost_and_non_uniqueness():
    out = th.threshold_utility(E0, utility_fn=np.log, cost=0.05)
    rel = np.log(E0[1:] / E0[:-1])
    assert out.n_star == 1 + int(np.argmax(rel < 0.05))  # first n with log-gain < c
    assert out.unique
    bad = th.threshold_utility(_bumpy()[1:], utility_fn=lambda w: w, cost=0.15)
    assert not bad.unique and bad.significant_violation and bad.verdict.startswith("fails")


def test_utility_censored_at_range_end():
    out = th.threshold_utility(np.sqrt(np.arange(1, 6.0)), utility_fn=lambda w: w, cost=0.01)
    assert out.censored and out.n_star == 5
    assert out.verdict == "holds under stated assumptions"


def test_kinematic_crossing_linear_delta():
    dim, m, eta = 64, 20, 0.5
    delta = 0.5 * np.arange(1, 129)  # an orthant-like sequence delta(C_n) = n / 2
    out = th.threshold_kinematic(delta, m=m, ambient_dim=dim, eta=eta)
    a = math.sqrt(8.0 * math.log(4.0 / eta))
    assert out.a_eta == pytest.approx(a)
    lower = dim - a * math.sqrt(dim)
    assert out.threshold.n_star == math.ceil(2.0 * (lower - m))
    assert out.n_center == 2 * (dim - m)
    assert out.n_upper == -1  # delta <= 32 never reaches D + a sqrt(D) - m
    assert out.threshold.unique and out.monotone and out.threshold.verdict == "holds"


def test_kinematic_crossing_flags_decreasing_delta():
    delta = np.array([1.0, 2.0, 3.0, 1.0, 5.0, 6.0])
    out = th.threshold_kinematic(delta, m=2.0, ambient_dim=9, eta=0.9)
    assert not out.monotone and out.threshold.verdict.startswith("fails")


def test_input_validation():
    with pytest.raises(ValueError, match="kappa"):
        th.threshold_gain_ratio(E0, kappa=1.5)
    with pytest.raises(ValueError, match="ns = 1..N"):
        th.threshold_gain_ratio(th.width_curve(E0[:4], ns=[1, 2, 4, 8]), kappa=0.5)
    with pytest.raises(ValueError, match="at least 2"):
        th.width_curve(np.ones(1))
