"""Weighted KnOTS and the weaker-vs-stronger operator contrast of the instance experiment."""

import jax.random as jr
import numpy as np
import pytest
from scipy import stats

from experiments.instance_operators import contrast_pairs, operator_contrast, weighted_knots
from mergetheory._types import LoraFactors
from mergetheory.instance_mergeability import merge_lora_tree
from mergetheory.merge import MERGE_OPERATORS
from mergetheory.stats import partial_spearman


def _factors(key, num=3):
    ks = jr.split(key, 4)
    return {
        "a": LoraFactors(B=jr.normal(ks[0], (num, 6, 2)), A=jr.normal(ks[1], (num, 2, 5)),
                         scaling=2.0),
        "b": LoraFactors(B=jr.normal(ks[2], (num, 4, 2)), A=jr.normal(ks[3], (num, 2, 7)),
                         scaling=2.0),
    }  # fmt: skip


def test_weighted_knots_with_equal_knowledge_is_plain_knots(key):
    f = _factors(key)
    plain = merge_lora_tree("knots", f, key)
    weighted = weighted_knots(f, np.full(3, 0.7), 0.1, key)
    for p in f:
        np.testing.assert_allclose(weighted[p], plain[p], rtol=1e-9, atol=1e-12)


def test_weighted_knots_is_knots_of_the_weighted_dense_updates(key):
    """KnOTS({T omega_t Delta_t}) with omega = softmax((1 - k) / tau), on dense updates."""
    f = _factors(key)
    know, tau = np.array([1.0, 0.6, 0.85]), 0.2
    z = np.exp((1.0 - know) / tau)
    coef = 3 * z / z.sum()
    dense = {
        p: np.einsum("tdr,trk->tdk", np.asarray(v.B), np.asarray(v.A)) * 2.0 * coef[:, None, None]
        for p, v in f.items()
    }
    expected = MERGE_OPERATORS["knots"].fn(dense, key, density=0.2, scale=1.0)
    got = weighted_knots(f, know, tau, key, {"density": 0.2, "scale": 1.0})
    for p in f:
        np.testing.assert_allclose(got[p], expected[p], rtol=1e-7, atol=1e-9)
    # and the weighting matters: not plain KnOTS
    plain = merge_lora_tree("knots", f, key)
    assert not np.allclose(got["a"], plain["a"], rtol=1e-3)


def test_contrast_pairs_put_the_weaker_operator_second():
    assert contrast_pairs(("knots", "ties", "average")) == [(0, 2), (1, 2), (0, 1)]
    with pytest.raises(ValueError):
        contrast_pairs(("knots", "ties"))


def test_operator_contrast_is_paired_and_signed(key):
    """An effect present under one operator and absent under the other: the difference
    excludes 0 on the side where the effect grows; identical scores differ by exactly 0."""
    rng = np.random.default_rng(3)
    n, files = 240, np.repeat(np.arange(48), 5)
    gap = rng.uniform(size=n)
    frob, sig, score_gap = rng.normal(size=(3, n))
    strong = -gap + 0.3 * rng.normal(size=n)  # S falls with Delta_base
    none = rng.normal(size=n)  # no effect
    s_ref = np.stack([strong, strong, none])
    arrays, summary = operator_contrast(
        key, s_ref, ("knots", "ties", "average"), (gap, frob, sig, score_gap), files,
        num_resamples=300, confidence=0.95,
    )  # fmt: skip
    assert list(arrays["operator_contrast_pairs"]) == ["knots-average", "ties-average",
                                                       "knots-ties"]  # fmt: skip
    rho = stats.spearmanr(strong, gap).statistic
    assert arrays["operator_contrast_per_op"][0, 0, 0] == pytest.approx(rho, abs=1e-12)
    partial = partial_spearman(strong, gap, np.stack([frob, sig]))
    assert arrays["operator_contrast_per_op"][0, 0, 1] == pytest.approx(partial, abs=1e-10)
    d = summary["operator_contrast_delta_base_knots_minus_average"]
    assert d == pytest.approx(rho - stats.spearmanr(none, gap).statistic, abs=1e-12)
    assert summary["operator_contrast_delta_base_knots_minus_average_hi"] < 0
    assert summary["verdict_shrinks_delta_base_knots_minus_average"] == "fails"  # it grows
    for t in ("", "_lo", "_hi"):  # the same resamples for both operators
        assert summary[f"operator_contrast_delta_base_knots_minus_ties{t}"] == 0.0
    assert summary["verdict_shrinks_delta_base_knots_minus_ties"] == "inconclusive"
