"""analysis.bridge_verdicts: each rule on hand-built evidence, at and around its thresholds."""

import numpy as np

from mergetheory.analysis import (
    ConcavityTest,
    NStarComparison,
    PairedDifference,
    effect_sign_verdict,
    forecast_verdict,
    interval_verdict,
    nstar_agreement_verdict,
    performance_concavity_verdict,
)
from mergetheory.theory.threshold import ThresholdOutput


def _ctest(convex: int, concave: int) -> ConcavityTest:
    z = np.zeros(3)
    return ConcavityTest(z, z, z, z, z, convex, concave, 0.05, "")


def _thr(n: int, lo: int, hi: int, censored: bool = False) -> ThresholdOutput:
    fields = dict.fromkeys(ThresholdOutput._fields)
    fields.update(n_star=n, ci_low=lo, ci_high=hi, censored=censored)
    return ThresholdOutput(**fields)


def _cmp(diff: int) -> NStarComparison:
    return NStarComparison("gain_ratio", 0.5, _thr(2, 1, 3), _thr(2 + diff, 1, 5), True, diff)


def _diff(avg: float, se: float) -> PairedDifference:
    return PairedDifference(np.zeros(3), np.zeros(3), avg, se, 0, 0)


def test_performance_concavity_rule():
    assert performance_concavity_verdict([_ctest(0, 2), _ctest(0, 1), _ctest(0, 0)]).holds
    assert performance_concavity_verdict([_ctest(0, 1), _ctest(0, 0), _ctest(0, 0)]).status == (
        "inconclusive"
    )  # no convex step, but fewer than half concave
    assert performance_concavity_verdict([_ctest(1, 0), _ctest(0, 2)]).status == "fails"
    assert performance_concavity_verdict([_ctest(1, 0), _ctest(0, 2), _ctest(0, 2)]).status == (
        "inconclusive"
    )
    assert performance_concavity_verdict([]).status == "inconclusive"


def test_nstar_agreement_rule():
    assert nstar_agreement_verdict([_cmp(0), _cmp(1), _cmp(-1), _cmp(3)]).holds  # 3 of 4
    assert nstar_agreement_verdict([_cmp(0), _cmp(3)]).status == "inconclusive"  # 1 of 2
    v = nstar_agreement_verdict([_cmp(0), _cmp(3), _cmp(2)])  # 1 of 3 < 50%
    assert v.status == "fails" and "1 of 3 within 1" in v.reason
    assert nstar_agreement_verdict([]).status == "inconclusive"


def test_effect_sign_rule():
    assert effect_sign_verdict([_diff(0.1, 0.02), _diff(0.01, 0.02)]).holds  # one significant
    assert effect_sign_verdict([_diff(-0.1, 0.02)]).status == "fails"
    assert effect_sign_verdict([_diff(0.1, 0.02), _diff(-0.1, 0.02)]).status == "inconclusive"
    assert effect_sign_verdict([_diff(0.03, 0.02)]).status == "inconclusive"  # 1.5 s.e.


def test_forecast_and_interval_rules():
    assert forecast_verdict(0.02, 0.01).holds and forecast_verdict(0.021, 0.01).status == "fails"
    assert forecast_verdict(np.nan, np.nan).status == "inconclusive"
    assert interval_verdict(_thr(3, 2, 4), 4.0).holds
    assert interval_verdict(_thr(3, 2, 4), 5.0).status == "fails"
    assert interval_verdict(_thr(6, 6, 6, censored=True), 9.0).holds  # open to the right
    assert interval_verdict(_thr(3, 2, 4), None).status == "inconclusive"
