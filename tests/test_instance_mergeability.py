"""The partition design of the per-instance mergeability estimator, and grouped statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.instance_mergeability import (
    LoraSurvivalProblem,
    bin_partner_survival,
    merge_lora_updates,
    partition_groups,
    partition_mergeability,
)
from mergetheory.stats import grouped_bootstrap, partial_spearman, spearman_correlation


@pytest.mark.parametrize("num, m", [(23, 4), (25, 4), (7, 6), (10, 0)])
def test_partition_counts_every_update_once(key, num, m):
    groups, counted = partition_groups(key, num, m)
    assert groups.shape == (-(-num // (m + 1)), m + 1)
    np.testing.assert_array_equal(np.sort(groups[counted]), np.arange(num))
    for g in groups:
        assert len(set(g.tolist())) == m + 1  # distinct members in every merge


def test_partition_partners_are_uniform(key):
    # P(j is a partner of update 0) = M / (K - 1) for every j != 0, padding included
    num, m, trials = 11, 3, 1000  # the tolerance below is 5 binomial stderrs at any trials
    hits = np.zeros(num)
    for k in jax.random.split(key, trials):
        groups, counted = partition_groups(k, num, m)
        row = np.flatnonzero((groups == 0) & counted)[0] // (m + 1)
        hits[groups[row]] += 1
    p = m / (num - 1)
    se = np.sqrt(p * (1 - p) / trials)
    np.testing.assert_allclose(hits[1:] / trials, p, atol=5 * se)
    assert hits[0] == trials


def test_partition_rejects_too_many_partners(key):
    with pytest.raises(ValueError, match="num_partners"):
        partition_groups(key, 5, 5)


def _orthogonal_pool(num, d=8, r=1):
    # update i: e_{i mod d} e_{i mod d}^T ... made rank-1 on distinct coordinates
    b = np.zeros((num, 2 * num, r), np.float32)
    a = np.zeros((num, r, d), np.float32)
    for i in range(num):
        b[i, i, 0] = 1.0
        a[i, 0, i % d] = 1.0
    return jnp.asarray(b), jnp.asarray(a)


def _own_weight(delta, members, args):
    """Survival = the member's own entry of the merged update is at least the threshold."""
    thr = args
    rows = members
    cols = members % delta.shape[0]
    return delta[cols, rows] >= thr  # kernel layout [k, d]


def test_partition_mergeability_average_dilution(key):
    num, m = 12, 3
    b, a = _orthogonal_pool(num)
    # the mean of M + 1 disjoint rank-1 updates keeps 1 / (M + 1) of each
    keep, lose = (
        partition_mergeability(key, LoraSurvivalProblem(b, a, 1.0, "average", _own_weight,
                               jnp.asarray(thr, jnp.float32)), num_partners=m, num_trials=3)
        for thr in (0.24, 0.26)
    )  # fmt: skip
    np.testing.assert_array_equal(keep.mean, 1.0)
    np.testing.assert_array_equal(lose.mean, 0.0)
    assert keep.num_merges == 3 * 3
    np.testing.assert_array_equal(keep.groups, lose.groups)  # same key, same partitions
    # TIES' disjoint mean keeps a coordinate that only one update touches at full size
    ties = partition_mergeability(
        key,
        LoraSurvivalProblem(b, a, 1.0, "ties", _own_weight, jnp.asarray(0.99, jnp.float32)),
        num_partners=m,
        num_trials=2,
    )
    np.testing.assert_array_equal(ties.mean, 1.0)


def test_merge_lora_updates_knots_single_update_is_identity(key):
    b, a = _orthogonal_pool(3)
    for name in ("knots", "average", "ties"):
        got = merge_lora_updates(
            name, b[:1], a[:1], 2.0, key, {"density": 1.0} if name != "average" else {}
        )
        np.testing.assert_allclose(got, 2.0 * np.asarray(b[0] @ a[0]).T, atol=1e-5)


def test_bin_partner_survival(key):
    num = 12
    b, a = _orthogonal_pool(num)
    bins = [np.arange(0, 6), np.arange(6, 12)]
    out = bin_partner_survival(
        key,
        LoraSurvivalProblem(b, a, 1.0, "average", _own_weight, jnp.asarray(0.24, jnp.float32)),
        [0, 7],
        bins,
        num_partners=3,
        num_trials=2,
    )
    np.testing.assert_array_equal(out, 1.0)


def test_partial_spearman_matches_one_covariate_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    x = z + rng.normal(size=200)
    y = z + 0.5 * x + rng.normal(size=200)
    r = lambda u, v: float(spearman_correlation(jnp.asarray(u), jnp.asarray(v)))  # noqa: E731
    rxy, rxz, ryz = r(x, y), r(x, z), r(y, z)
    want = (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert partial_spearman(x, y, z) == pytest.approx(want, abs=1e-10)
    # controlling for x itself leaves nothing
    assert abs(partial_spearman(x, y, np.stack([x, z]))) < 1e-8 or np.isnan(
        partial_spearman(x, y, np.stack([x, z]))
    )


def test_grouped_bootstrap_counts_groups_not_points(key):
    # 20 groups of 10 identical points: the CI of the mean is that of 20 group means
    rng = np.random.default_rng(1)
    means = rng.normal(size=20)
    x = np.repeat(means, 10)
    groups = np.repeat(np.arange(20), 10)
    est = grouped_bootstrap(key, np.mean, (x,), groups, num_resamples=2000)
    se_groups = means.std(ddof=1) / np.sqrt(20)
    assert est.value == pytest.approx(means.mean())
    assert est.stderr == pytest.approx(se_groups, rel=0.15)
    naive = grouped_bootstrap(key, np.mean, (x,), np.arange(200), num_resamples=2000)
    assert naive.stderr < 0.5 * est.stderr  # ignoring the groups understates the error


def test_dominance_verdicts_follow_the_interval_side():
    """H-BK predicts a negative effect: an interval below 0 holds, above 0 fails."""
    from experiments.instance_rank_sweep import PREDICTORS, dominance_verdicts

    dom = np.zeros((3, len(PREDICTORS)))
    dom[:, 0] = (-0.3, -0.4, -0.2)  # rho(Delta_base): below 0
    dom[:, 3] = (0.1, -0.1, 0.3)  # partial: straddles 0
    dom[:, 5] = (0.3, 0.2, 0.4)  # minus Frobenius: above 0
    dom[:, 6] = (np.nan, np.nan, np.nan)
    assert dominance_verdicts(dom) == {
        "bk": "holds",
        "partial": "inconclusive",
        "dominance_frobenius": "fails",
        "dominance_sigma_max": "inconclusive",
    }


@pytest.mark.slow
def test_quick_experiment_and_figure(tmp_path):
    """The --quick experiment end to end (trains the tiny zoo: a few minutes) and its figure."""
    from experiments import instance_mergeability as im
    from figures import fig_instance_mergeability as fig
    from mergetheory.io import load_results

    assert im.main(["--quick", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    res = load_results(tmp_path / "instance_mergeability")
    arrays, summary = res.arrays, res.metadata["config"]["summary"]
    cfg = im.QUICK_CONFIG
    assert summary["num_fixed"] >= cfg.min_fixed
    s = arrays["s_ref"]
    assert s.shape == (len(cfg.operators), summary["num_fixed"])
    np.testing.assert_allclose(s * cfg.num_trials, np.round(s * cfg.num_trials), atol=1e-9)
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(arrays["delta_base"] > 0)  # every kept instance was wrong for the base
    assert np.all(np.abs(arrays["dominance"][:, 0, :5]) <= 1 + 1e-12)
    num_tasks = arrays["task_base_bpb"].shape[0]
    assert arrays["task_retained"].shape == (len(cfg.operators), cfg.task_trials, num_tasks)
    ranks = list(cfg.rank_sweep)  # the rank sweep: same statistics, reference operator only
    assert ranks and summary["rank_sweep_ranks"] == ranks
    assert arrays["rank_sweep_dominance"].shape == (len(ranks), 3, len(im.PREDICTORS))
    for r in ranks:
        assert 0 < summary[f"rank_sweep_{r}_fixed"] <= summary["num_wrong"]
        for stat in ("rho", "partial"):
            v, lo, hi = (summary[f"rank_sweep_{r}_{stat}{t}"] for t in ("", "_lo", "_hi"))
            assert -1 <= lo <= v <= hi <= 1
        assert summary[f"rank_sweep_{r}_verdict_bk"] in {"holds", "fails", "inconclusive"}
    # weaker vs stronger operators: paired differences, every pair and statistic
    from experiments.instance_operators import CONTRAST_STATS

    assert list(arrays["operator_contrast_pairs"]) == ["knots-average", "ties-average",
                                                       "knots-ties"]  # fmt: skip
    for pair in ("knots_minus_average", "ties_minus_average", "knots_minus_ties"):
        for stat in CONTRAST_STATS:
            v, lo, hi = (summary[f"operator_contrast_{stat}_{pair}{t}"] for t in ("", "_lo", "_hi"))
            assert -2 <= lo <= v <= hi <= 2
            assert summary[f"verdict_shrinks_{stat}_{pair}"] in {"holds", "fails", "inconclusive"}
    # the weighted merges: linear and inside KnOTS, tau from the grid, intervals
    for name in ("weighted", "weighted_knots"):
        assert set(summary[f"{name}_tau_chosen"]) <= set(cfg.weighted_temperatures)
    for c in ("weighted_minus_mean", "weighted_knots_minus_knots", "knots_minus_mean"):
        for part in ("all", "low", "high"):
            v, lo, hi = (summary[f"{c}_{part}{t}"] for t in ("", "_lo", "_hi"))
            assert lo <= v <= hi
    assert arrays["weighted_knots_minus_knots_diff"].shape == (3, cfg.weighted_replicates)
    out = tmp_path / "fig"
    from figures import fig_instance_operators, fig_instance_rank_sweep

    for module in (fig, fig_instance_rank_sweep, fig_instance_operators):
        assert module.main(["--results-dir", str(tmp_path), "--out-dir", str(out)]) == 0
        assert (out / f"{module.NAME}.png").exists()
