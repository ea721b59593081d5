r"""Verdicts of the bridge's empirical hypotheses, from structured evidence.

Each rule is fixed before the numbers are read (the paper section *Real experts* states
them) and returns a :class:`~mergetheory.verdict.Verdict`, so reports and code read the
``status`` instead of parsing prose:

* :func:`performance_concavity_verdict` (C3 on models): ``holds`` if no curve has a
  significantly convex step (Holm, per curve) and at least half have a concave one;
  ``fails`` if at least half have a convex step; otherwise ``inconclusive``;
* :func:`nstar_agreement_verdict` (C4): the width's and the performance's :math:`n^\star`
  (same definition and :math:`\kappa`) agree within ``tol`` experts in at least 75% of the
  cases (``holds``), in fewer than 50% (``fails``), otherwise ``inconclusive``;
* :func:`effect_sign_verdict` (C5, RHT against TIES): every paired effect beyond two
  standard errors is positive (``holds``) or every one negative (``fails``); none, or both
  signs, is ``inconclusive``;
* :func:`forecast_verdict` (the 1/k law): the largest forecast error is within
  ``factor`` times the largest standard error of the mean loss;
* :func:`interval_verdict` (kinematic :math:`n^\star`): the observed value lies in the
  predicted confidence set.

Example:
  >>> v = effect_sign_verdict([PairedDifference(..., avg=0.1, avg_stderr=0.02, ...)])
  >>> v.status
  'holds'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..theory.threshold import ThresholdOutput
from ..verdict import FAILS, HOLDS, INCONCLUSIVE, Verdict
from .bridge import ConcavityTest, NStarComparison, PairedDifference

__all__ = [
    "effect_sign_verdict",
    "forecast_verdict",
    "interval_verdict",
    "nstar_agreement_verdict",
    "performance_concavity_verdict",
]


def performance_concavity_verdict(tests: Sequence[ConcavityTest]) -> Verdict:
    """C3 on models from the Holm concavity tests of several performance curves."""
    if not tests:
        return Verdict(INCONCLUSIVE, "no curve tested")
    convex = sum(t.num_convex > 0 for t in tests)
    concave = sum(t.num_convex == 0 and t.num_concave > 0 for t in tests)
    reason = f"{convex} of {len(tests)} curves convex somewhere, {concave} concave"
    if convex == 0 and 2 * concave >= len(tests):
        return Verdict(HOLDS, reason)
    if 2 * convex >= len(tests):
        return Verdict(FAILS, reason)
    return Verdict(INCONCLUSIVE, reason)


def nstar_agreement_verdict(comparisons: Sequence[NStarComparison], *, tol: int = 1) -> Verdict:
    r"""C4 from predicted-vs-observed :math:`n^\star` comparisons (point estimates within
    ``tol`` experts); censored estimates count by their point value (the reason says how
    many confidence sets overlap as well)."""
    if not comparisons:
        return Verdict(INCONCLUSIVE, "no case where n* is defined on both curves")
    diff = np.abs([c.difference for c in comparisons])
    close = float(np.mean(diff <= tol))
    reason = (
        f"{int(np.sum(diff <= tol))} of {diff.size} within {tol} expert(s), "
        f"{sum(c.overlap for c in comparisons)} with overlapping confidence sets, "
        f"mean |difference| {diff.mean():.2f}"
    )
    if close >= 0.75:
        return Verdict(HOLDS, reason)
    if close < 0.5:
        return Verdict(FAILS, reason)
    return Verdict(INCONCLUSIVE, reason)


def effect_sign_verdict(diffs: Sequence[PairedDifference], *, z: float = 2.0) -> Verdict:
    """C5 from paired differences (``a - b`` averaged over ``n >= 2``), effects beyond ``z``
    standard errors."""
    signs = [np.sign(d.avg) * (abs(d.avg) > z * d.avg_stderr) for d in diffs]
    better, worse = sum(s > 0 for s in signs), sum(s < 0 for s in signs)
    reason = f"better in {better}, worse in {worse} of {len(signs)} comparisons"
    if better and not worse:
        return Verdict(HOLDS, reason)
    if worse and not better:
        return Verdict(FAILS, reason)
    return Verdict(INCONCLUSIVE, reason + " (no consistent effect)")


def forecast_verdict(max_abs_error: float, noise: float, *, factor: float = 2.0) -> Verdict:
    """The 1/k law: forecast error within ``factor`` x the subset noise."""
    reason = f"largest forecast error {max_abs_error:.3g} against noise {noise:.3g}"
    if not (np.isfinite(max_abs_error) and np.isfinite(noise)):
        return Verdict(INCONCLUSIVE, "no forecast")
    return Verdict(HOLDS if max_abs_error <= factor * noise else FAILS, reason)


def interval_verdict(predicted: ThresholdOutput, observed: float | None) -> Verdict:
    """The observed value lies in the predicted confidence set (censored: open above)."""
    hi = np.inf if predicted.censored else predicted.ci_high
    shown = f"[{predicted.ci_low}, {'>=' if predicted.censored else ''}{predicted.ci_high}]"
    if observed is None or not np.isfinite(observed):
        return Verdict(INCONCLUSIVE, f"no observed value; predicted {shown}")
    ok = predicted.ci_low <= observed <= hi
    return Verdict(HOLDS if ok else FAILS, f"predicted {shown}, observed {int(observed)}")
