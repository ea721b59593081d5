"""Tests for mergetheory.stats: ranks, correlations, the G-test and its log tail, verdicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from hypothesis.extra import numpy as hnp
from scipy import stats

from mergetheory import stats as st


def test_chi2_tail_asymptotics_match_scipy_where_both_are_finite(monkeypatch):
    exact = {x: stats.chi2.logsf(x, 9) / np.log(10) for x in (200.0, 1400.0)}
    monkeypatch.setattr(stats.chi2, "logsf", lambda x, k: -np.inf)  # force the expansion
    for x, val in exact.items():
        assert st.chi2_log10_sf(x, 9) == pytest.approx(val, rel=1e-4)


def test_ranks_and_correlations_match_scipy():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, 30).astype(np.float64)  # ties
    y = x + rng.normal(size=30)
    np.testing.assert_allclose(st.rankdata(x), stats.rankdata(x), rtol=1e-12)
    np.testing.assert_allclose(st.spearman_correlation(x, y), stats.spearmanr(x, y)[0], rtol=1e-10)
    np.testing.assert_allclose(st.pearson_correlation(x, y), np.corrcoef(x, y)[0, 1], rtol=1e-10)
    assert np.isnan(st.pearson_correlation(np.ones(5), np.arange(5.0)))
    # mixed float widths (and ints) are fine under strict dtype promotion
    r32 = st.spearman_correlation(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float64))
    np.testing.assert_allclose(r32, stats.spearmanr(x, y)[0], rtol=1e-6)
    assert st.pearson_correlation(np.arange(5), np.arange(5.0) ** 2).dtype == jnp.float64


def test_hypothesis_verdict():
    assert st.hypothesis_verdict(0.1, 0.5, predicted_sign=1) == "holds"
    assert st.hypothesis_verdict(-0.5, -0.1, predicted_sign=1) == "fails"
    assert st.hypothesis_verdict(-0.1, 0.5, predicted_sign=1) == "inconclusive"
    assert st.hypothesis_verdict(-0.5, -0.1, predicted_sign=-1) == "holds"
    assert st.hypothesis_verdict(float("nan"), 0.5, predicted_sign=-1) == "inconclusive"


# --------------------------------------------------------------------------------------
# rankdata: jax.scipy.stats.rankdata along the last axis against scipy's
# --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, (3, 11), elements=st_.integers(0, 4)))  # many ties
def test_rankdata_matches_scipy_on_ties(x):
    got = np.asarray(st.rankdata(x.astype(np.float64)))
    np.testing.assert_array_equal(got, stats.rankdata(x, axis=-1))
    # integers rank in the default float dtype, the same ranks
    np.testing.assert_array_equal(np.asarray(st.rankdata(x)), got)


def test_rankdata_keeps_float32_and_is_traceable():
    x = jnp.asarray([[3.0, 1.0, 3.0, 2.0], [0.5, 0.5, 0.5, -1.0]], jnp.float32)
    r = jax.jit(jax.vmap(st.rankdata))(x)
    assert r.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(r), stats.rankdata(np.asarray(x), axis=-1))


# --------------------------------------------------------------------------------------
# the G-test: power_divergence against the definition, the log tail against scipy
# --------------------------------------------------------------------------------------


def test_g_test_of_a_table_equal_to_its_expectation_up_to_round_off():
    # weights / sum * total rounds to 3 - 1ulp: G = -4e-15 from SciPy, whose p-value is NaN
    w = np.full(6, 13.85444233131158)
    res = st.g_test(np.full(6, 3.0), w / w.sum() * 18.0, ddof=1)
    assert res.g_statistic == 0.0
    assert res.p_value == 1.0
    assert res.log10_p_value == 0.0


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int64, (6,), elements=st_.integers(0, 60)),
    hnp.arrays(np.float64, (6,), elements=st_.floats(0.5, 50.0)),
)
def test_g_test_matches_its_definition(counts, weights):
    obs = counts.astype(np.float64)
    exp_ = weights / weights.sum() * obs.sum() if obs.sum() > 0 else weights
    if obs.sum() == 0:
        obs = exp_.copy()  # a valid table with no deviation
    res = st.g_test(obs, exp_, ddof=1)
    nz = obs > 0
    g = 2.0 * np.sum(obs[nz] * np.log(obs[nz] / exp_[nz]))
    assert res.g_statistic == pytest.approx(g, rel=1e-10, abs=1e-10)
    chi2 = np.sum((obs - exp_) ** 2 / exp_)
    assert res.chi2_statistic == pytest.approx(chi2, rel=1e-10, abs=1e-10)
    assert res.dof == 4
    assert res.p_value == pytest.approx(stats.chi2.sf(g, 4), rel=1e-8, abs=1e-300)
    if res.p_value > 0:  # both apply: the log tail agrees with scipy's p-value
        assert res.log10_p_value == pytest.approx(np.log10(res.p_value), rel=1e-8, abs=1e-12)


def test_g_test_empty_bins_count_in_dof_and_tail_stays_finite():
    # a bin with nothing observed and nothing expected adds 0 to G but counts in the dof
    res = st.g_test(np.array([30.0, 10.0, 0.0]), np.array([20.0, 20.0, 0.0]))
    g = 2.0 * (30.0 * np.log(1.5) + 10.0 * np.log(0.5))
    assert res.g_statistic == pytest.approx(g, rel=1e-12)
    assert res.dof == 2
    assert res.p_value == pytest.approx(stats.chi2.sf(g, 2), rel=1e-10)
    # far in the tail the p-value underflows, its log does not
    far = st.g_test(np.array([5000.0, 0.0, 0.0]), np.array([1000.0, 2000.0, 2000.0]))
    assert far.p_value == 0.0
    assert np.isfinite(far.log10_p_value) and far.log10_p_value < -300
    # fewer than one degree of freedom: no p-value
    one = st.g_test(np.array([3.0, 2.0]), np.array([2.5, 2.5]), ddof=1)
    assert one.dof == 0 and np.isnan(one.p_value) and np.isnan(one.log10_p_value)
