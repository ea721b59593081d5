"""Tests for mergetheory.mergeability: the estimator, the binomial null, correlations."""

import importlib

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from mergetheory import stats as st
from mergetheory.tree import TaskVectorError

# the package re-exports the function `mergeability`, which shadows the submodule attribute
mg = importlib.import_module("mergetheory.mergeability")

# Module-level functions and one pool shape, so that the tests share compiled programs
# (score_fn / merge_fn are static arguments: the same objects hit the same jit cache).
NUM, M, N = 6, 2, 16
KW = dict(num_partners=M, num_trials=N)  # every test shares these static arguments
_TRACES = []


def _average(task_vectors, key):
    del key
    return jax.tree.map(lambda x: x.mean(0), task_vectors)


def _weighted_sum(task_vectors, key, *, weights):
    del key
    return jax.tree.map(lambda x: jnp.tensordot(weights.astype(x.dtype), x, 1), task_vectors)


def _coord_score(params, i, data):
    """f_i(theta) = c_i theta[i] (``c = data["scale"]``): linear, so S has a closed form."""
    _TRACES.append(1)
    return params["w"][i] * data["scale"][i]


ONES = {"scale": jnp.ones(NUM, jnp.float64)}


def _base():
    return {"w": jnp.zeros(NUM, jnp.float64)}


def _pool(key, offset=0.0):
    return {"w": jr.normal(key, (NUM, NUM), jnp.float64) + offset}


# --------------------------------------------------------------------------------------
# partners
# --------------------------------------------------------------------------------------


def test_sample_partners_uniform_distinct_and_excluding_self(key):
    num, m, draws = 6, 3, 4000
    p = np.asarray(mg.sample_partners(key, 2, num, m, shape=(draws,)))
    assert p.shape == (draws, m)
    assert not np.any(p == 2)
    assert np.all((p >= 0) & (p < num))
    assert all(len(set(row)) == m for row in p[:200])
    # each other index appears with probability M / (T - 1) = 0.6
    freq = np.array([(p == j).any(1).mean() for j in range(num) if j != 2])
    se = np.sqrt(0.6 * 0.4 / draws)
    assert np.all(np.abs(freq - 0.6) < 5 * se)
    with pytest.raises(ValueError, match="num_partners"):
        mg.sample_partners(key, 0, 3, 3)
    # one excluded index per draw, as the estimator uses it
    q = np.asarray(mg.sample_partners(key, np.arange(num)[:, None], num, m, shape=(num, 5)))
    assert q.shape == (num, 5, m)
    assert not np.any(q == np.arange(num)[:, None, None])


# --------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------


def test_mergeability_exact_for_orthogonal_updates(key):
    # tau_i = 2 e_i and f_i = theta[i]: every trial of the mean gives exactly 2 / (M + 1)
    tv = {"w": 2.0 * jnp.eye(NUM, dtype=jnp.float64)}
    est = mg.mergeability(key, tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    np.testing.assert_allclose(est.mean, 2.0 / (M + 1), rtol=1e-12)
    np.testing.assert_allclose(est.stderr, 0.0, atol=1e-12)
    assert est.scores.shape == (NUM, N)
    assert est.partners.shape == (NUM, N, M)
    assert (est.num_trials, est.num_partners) == (N, M)
    assert not np.any(np.asarray(est.partners) == np.arange(NUM)[:, None, None])


def test_mergeability_matches_closed_form_within_stderr(key):
    # S(tau_i) = (tau_i[i] + M/(T-1) sum_{j != i} tau_j[i]) / (M + 1) for the mean
    k_pool, k_est = jr.split(key)
    tv = _pool(k_pool, offset=0.5)
    est = mg.mergeability(k_est, tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    w = np.asarray(tv["w"])
    own = np.diag(w)
    exact = (own + M / (NUM - 1) * (w.sum(0) - own)) / (M + 1)
    assert np.all(np.abs(np.asarray(est.mean) - exact) < 5 * np.asarray(est.stderr))


def test_per_task_hparams_are_gathered_with_the_subset(key):
    tv = {"w": jnp.eye(NUM, dtype=jnp.float64)}
    weights = jnp.arange(1.0, NUM + 1.0, dtype=jnp.float64)
    est = mg.mergeability(
        key,
        tv,
        _base(),
        _coord_score,
        _weighted_sum,
        score_args=ONES,
        task_hparams={"weights": weights},
        **KW,
    )
    np.testing.assert_allclose(est.mean, weights, rtol=1e-12)  # S(tau_i) = w_i exactly


def test_score_args_are_traced_data(key):
    tv = {"w": jnp.eye(NUM, dtype=jnp.float64)}
    est = {}
    for c in (1.0, 3.0):
        data = {"scale": jnp.full(NUM, c, jnp.float64)}
        est[c] = mg.mergeability(key, tv, _base(), _coord_score, _average, score_args=data, **KW)
    np.testing.assert_allclose(est[1.0].mean, 1.0 / (M + 1), rtol=1e-12)
    np.testing.assert_allclose(est[3.0].mean, 3.0 / (M + 1), rtol=1e-12)


def test_common_random_numbers_across_operators(key):
    tv = _pool(key)
    a = mg.mergeability(key, tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    b = mg.mergeability(
        key,
        tv,
        _base(),
        _coord_score,
        _weighted_sum,
        score_args=ONES,
        task_hparams={"weights": jnp.ones(NUM, jnp.float64)},
        **KW,
    )
    np.testing.assert_array_equal(a.partners, b.partners)  # same partner draws
    np.testing.assert_allclose(b.scores, (M + 1) * a.scores, rtol=1e-10)
    c = mg.mergeability(
        jr.fold_in(key, 1), tv, _base(), _coord_score, _average, score_args=ONES, **KW
    )
    assert not np.array_equal(a.partners, c.partners)


def test_mergeability_traces_once_and_is_deterministic(key):
    tv = _pool(key)
    first = mg.mergeability(key, tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    before = len(_TRACES)
    again = mg.mergeability(key, tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    mg.mergeability(
        jr.fold_in(key, 3),
        _pool(jr.fold_in(key, 4)),
        _base(),
        _coord_score,
        _average,
        score_args=ONES,
        **KW,
    )
    assert len(_TRACES) == before  # cached: no new trace for new keys or new data
    np.testing.assert_array_equal(again.scores, first.scores)


@pytest.mark.slow
def test_mergeability_chunks_and_vmaps_over_keys(key):
    tv = _pool(key)
    first = mg.mergeability(key, tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    chunked = mg.mergeability(
        key, tv, _base(), _coord_score, _average, batch_size=4, score_args=ONES, **KW
    )
    np.testing.assert_allclose(chunked.scores, first.scores, rtol=1e-12)
    keys = jr.split(key, 2)
    means = jax.vmap(
        lambda k: (
            mg.mergeability(k, tv, _base(), _coord_score, _average, score_args=ONES, **KW).mean
        )
    )(keys)
    one = mg.mergeability(keys[1], tv, _base(), _coord_score, _average, score_args=ONES, **KW)
    np.testing.assert_allclose(means[1], one.mean, rtol=1e-12)


def test_mergeability_errors(key):
    tv = _pool(key)
    base = _base()
    with pytest.raises(ValueError, match="num_partners"):
        mg.mergeability(key, tv, base, _coord_score, _average, num_partners=NUM, num_trials=2)
    with pytest.raises(ValueError, match="num_trials"):
        mg.mergeability(key, tv, base, _coord_score, _average, num_partners=1, num_trials=0)
    with pytest.raises(TaskVectorError, match="shape"):
        mg.mergeability(key, tv, {"w": jnp.zeros(5)}, _coord_score, _average, score_args=ONES, **KW)
    with pytest.raises(TaskVectorError, match="structure"):
        mg.mergeability(
            key, tv, {"v": jnp.zeros(NUM)}, _coord_score, _average, score_args=ONES, **KW
        )
    with pytest.raises(TaskVectorError, match="NaN"):
        bad = {"w": tv["w"].at[0, 0].set(jnp.nan)}
        mg.mergeability(key, bad, base, _coord_score, _average, score_args=ONES, **KW)
    with pytest.raises(ValueError, match="leading axis"):
        mg.mergeability(
            key,
            tv,
            base,
            _coord_score,
            _weighted_sum,
            task_hparams={"weights": jnp.ones(3)},
            score_args=ONES,
            **KW,
        )


# --------------------------------------------------------------------------------------
# the binomial null
# --------------------------------------------------------------------------------------


def test_binomial_null_accepts_binomial_and_rejects_a_trait():
    rng = np.random.default_rng(0)
    n = 5
    null = mg.binomial_null_test(rng.binomial(n, 0.4, size=600), n)
    assert null.p_value > 1e-3
    assert abs(null.dispersion - 1.0) < 0.2
    np.testing.assert_allclose(null.expected.sum(), 600, rtol=1e-12)
    np.testing.assert_allclose(null.observed.sum(), 600)
    # a trait: 40% of units always survive, the rest never
    trait = np.concatenate([np.full(240, n), np.zeros(360, int)])
    res = mg.binomial_null_test(trait, n)
    assert res.p_value < 1e-10
    assert res.dispersion > 3
    assert res.p_bar == pytest.approx(0.4)
    with pytest.raises(ValueError, match="integers"):
        mg.binomial_null_test(np.array([0, 6]), n)
    with pytest.raises(ValueError, match="1-D"):
        mg.binomial_null_test(np.array([1]), n)


def test_binomial_null_matches_scipy_g_test():
    rng = np.random.default_rng(1)
    n = 4
    c = rng.binomial(n, rng.uniform(0.2, 0.8, size=500))
    res = mg.binomial_null_test(c, n, min_expected=0.0)
    obs = np.bincount(c, minlength=n + 1)
    exp_ = 500 * stats.binom.pmf(np.arange(n + 1), n, c.mean() / n)
    g, p = stats.power_divergence(obs, exp_, ddof=1, lambda_="log-likelihood")
    assert res.g_statistic == pytest.approx(g, rel=1e-10)
    assert res.p_value == pytest.approx(p, rel=1e-8)
    assert res.log10_p_value == pytest.approx(np.log10(p), rel=1e-8)
    assert np.isfinite(st.chi2_log10_sf(5000.0, 9)) and st.chi2_log10_sf(5000.0, 9) < -1000
    assert res.dof == n - 1


# --------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------


def test_bootstrap_correlation_ci_and_pairing(key):
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = np.stack([x + 0.5 * rng.normal(size=40), rng.normal(size=40), np.exp(x)])
    est = st.bootstrap_correlation(key, x, y, num_resamples=500)
    assert est.value.shape == (3,) and est.samples.shape == (500, 3)
    assert np.all(est.ci_low <= est.value) and np.all(est.value <= est.ci_high)
    assert est.ci_low[0] > 0.5
    assert est.ci_low[1] < 0 < est.ci_high[1]
    assert est.value[2] == pytest.approx(1.0) and est.ci_low[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="method"):
        st.bootstrap_correlation(key, x, x, method="kendall")

    # H-MOD machinery on the same shapes: row 1 is far less correlated than row 0
    res = mg.moderation_test(key, x, y, num_resamples=500)
    assert res.difference.value[0] == 0.0
    assert res.difference.ci_high[1] < 0
    verdict = st.hypothesis_verdict(
        res.difference.ci_low[1], res.difference.ci_high[1], predicted_sign=-1
    )
    assert verdict == "holds"
    np.testing.assert_allclose(res.correlation.value, est.value, rtol=1e-12)


# --------------------------------------------------------------------------------------
# base knowledge
# --------------------------------------------------------------------------------------


def test_base_margin():
    probs = jnp.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(mg.base_margin(probs, jnp.array([0, 2])), [0.0, 0.2], atol=1e-12)


# --------------------------------------------------------------------------------------
# end to end: the experiment (quick) and its figure
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_experiment_quick_and_figure(tmp_path):
    from mergetheory.merge import MERGE_OPERATORS

    needed = {"average", "task_arithmetic", "ties", "base_knowledge_weighted"}
    assert needed <= set(MERGE_OPERATORS), needed - set(MERGE_OPERATORS)
    from experiments import mergeability as experiment
    from figures import fig_mergeability
    from mergetheory.io import load_results

    assert experiment.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    res = load_results(tmp_path / "mergeability")
    summary = res.metadata["config"]["summary"]
    assert summary["num_experts"] == 10
    assert (tmp_path / "checkpoints" / "rep_0" / "expert_09").is_dir()
    for key in ("spearman_average", "null_p_value_ties", "weighted_gain_low", "verdict_bk_average"):
        assert key in summary
    assert res.arrays["s_task"].shape == (3, 1, 10)
    assert fig_mergeability.main(["--results-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "fig_mergeability.png").stat().st_size > 0
