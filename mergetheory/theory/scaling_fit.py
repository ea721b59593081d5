r"""Fitting the merging scaling law :math:`L_\infty + A/(k + b)` (arXiv 2509.24244, section 3).

Host-side SciPy, independent of how the losses were obtained (simulated on the quadratic
model of :mod:`mergetheory.theory.scaling_law`, or measured on real merges):

* :func:`fit_scaling_law`: weighted least squares of :math:`L_\infty + A/(k + b)`,
  :math:`b \ge 0`, weights :math:`\propto k` (the across-subset variance contracts like
  :math:`1/k`) or :math:`1/\sigma_k^2` from given standard errors;
* :func:`three_point_forecast`: the paper's *three-point recipe*, fit on
  :math:`k \in \{1, 2, 4\}` and forecast :math:`k = 1..9`.

Reference: ``wang2025mergingscaling`` in ``paper/refs.bib``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.optimize

__all__ = [
    "ForecastOutput",
    "ScalingLawFit",
    "fit_scaling_law",
    "scaling_law_curve",
    "three_point_forecast",
]


def scaling_law_curve(k: Any, l_inf: Any, a: Any, b: Any) -> np.ndarray:
    r""":math:`L_\infty + A/(k + b)` (NumPy, for fits and figures)."""
    return np.asarray(l_inf) + np.asarray(a) / (np.asarray(k, dtype=float) + np.asarray(b))


class ScalingLawFit(NamedTuple):
    r"""Weighted least-squares fit of :math:`L_\infty + A/(k + b)`.

    Attributes:
      l_inf, a, b: fitted parameters.
      l_inf_stderr, a_stderr, b_stderr: standard errors from the Jacobian
        (:math:`(J^\top W J)^{-1}`, scaled by the residual variance unless the data
        standard errors were given). ``nan`` when there are no residual degrees of
        freedom and no data standard errors.
      covariance: ``[3, 3]`` parameter covariance.
      r2: weighted :math:`R^2`.
      b_at_bound: ``b`` sits on its lower bound (its stderr is then not meaningful).
      ks: ``[K]`` the fitted ``k``.
      weights: ``[K]`` the least-squares weights.
    """

    l_inf: float
    a: float
    b: float
    l_inf_stderr: float
    a_stderr: float
    b_stderr: float
    covariance: np.ndarray
    r2: float
    b_at_bound: bool
    ks: np.ndarray
    weights: np.ndarray


def _linear_given_b(k, y, w, b):
    x = np.stack([np.ones_like(k), 1.0 / (k + b)], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
    resid = (y - x @ coef) * sw
    return coef, float(resid @ resid)


def fit_scaling_law(
    ks: Any,
    losses: Any,
    *,
    stderr: Any | None = None,
    b_min: float = 0.0,
    b_max: float | None = None,
) -> ScalingLawFit:
    r"""Fit :math:`L_\infty + A/(k + b)`, :math:`b \in [b_{\min}, b_{\max}]`, by weighted LS.

    Weights are :math:`w_k \propto k` (arXiv 2509.24244), or :math:`1/\sigma_k^2` when
    ``stderr`` is given (then the covariance is absolute). The fit is variable projection:
    for fixed :math:`b` the model is linear in :math:`(L_\infty, A)`, so :math:`b` is found
    by a bounded 1-d search and the three parameters are then polished jointly with
    ``scipy.optimize.least_squares``, whose Jacobian gives the covariance.

    Args:
      ks: ``[K]`` subset sizes (``K >= 3``).
      losses: ``[K]`` (mean) losses.
      stderr: optional ``[K]`` standard errors of ``losses``.
      b_min: lower bound on ``b`` (0, as in the paper).
      b_max: upper bound on ``b`` (default ``10 * max(k)``).

    Returns:
      A :class:`ScalingLawFit`.
    """
    k = np.asarray(ks, dtype=float).reshape(-1)
    y = np.asarray(losses, dtype=float).reshape(-1)
    if k.size < 3 or k.size != y.size:
        raise ValueError(f"need >= 3 matching (k, loss) pairs, got {k.size} and {y.size}")
    absolute = stderr is not None
    w = 1.0 / np.asarray(stderr, dtype=float) ** 2 if absolute else k / k.mean()
    b_hi = 10.0 * k.max() if b_max is None else float(b_max)

    grid = b_min + (b_hi - b_min) * np.linspace(0.0, 1.0, 401) ** 3
    sse = np.array([_linear_given_b(k, y, w, b)[1] for b in grid])
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    if hi > lo:
        res = scipy.optimize.minimize_scalar(
            lambda b: _linear_given_b(k, y, w, b)[1],
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12},
        )
        b0 = float(res.x) if res.fun <= sse[i] else float(grid[i])
    else:
        b0 = float(grid[i])
    (l0, a0), _ = _linear_given_b(k, y, w, b0)
    sw = np.sqrt(w)

    def resid(p):
        return (y - scaling_law_curve(k, p[0], p[1], p[2])) * sw

    span = max(abs(a0), abs(l0), 1.0)
    ls = scipy.optimize.least_squares(
        resid,
        x0=[l0, a0, min(max(b0, b_min), b_hi)],
        bounds=([-np.inf, -np.inf, b_min], [np.inf, np.inf, b_hi]),
        x_scale=[span, span, 1.0],
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        method="trf",
    )
    p = ls.x if ls.cost <= 0.5 * _linear_given_b(k, y, w, b0)[1] else np.array([l0, a0, b0])
    r = resid(p)
    jac = np.stack([-sw * np.ones_like(k), -sw / (k + p[2]), sw * p[1] / (k + p[2]) ** 2], axis=1)
    cov = np.linalg.pinv(jac.T @ jac)
    dof = k.size - 3
    if not absolute:
        cov = cov * (float(r @ r) / dof if dof > 0 else np.nan)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    ybar = float(np.sum(w * y) / np.sum(w))
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    r2 = 1.0 - float(r @ r) / ss_tot if ss_tot > 0 else float("nan")
    b_at_bound = bool(p[2] <= b_min + 1e-9 * max(1.0, abs(b_min)))
    return ScalingLawFit(
        float(p[0]),
        float(p[1]),
        float(p[2]),
        float(se[0]),
        float(se[1]),
        float(se[2]),
        cov,
        r2,
        b_at_bound,
        k,
        w,
    )


class ForecastOutput(NamedTuple):
    """The three-point recipe: fit on a few ``k``, forecast the rest.

    Attributes:
      fit: the :class:`ScalingLawFit` on ``fit_ks``.
      fit_ks: ``[F]`` the ``k`` used for the fit.
      ks: ``[K]`` forecast ``k``.
      forecast: ``[K]`` forecast losses.
      observed: ``[K]`` observed losses.
      abs_error: ``[K]`` ``|forecast - observed|``.
      rel_error: ``[K]`` ``abs_error / |observed|``.
      max_abs_error: max of ``abs_error`` over ``ks`` not in ``fit_ks``.
      max_rel_error: max of ``rel_error`` over ``ks`` not in ``fit_ks``.
    """

    fit: ScalingLawFit
    fit_ks: np.ndarray
    ks: np.ndarray
    forecast: np.ndarray
    observed: np.ndarray
    abs_error: np.ndarray
    rel_error: np.ndarray
    max_abs_error: float
    max_rel_error: float


def three_point_forecast(
    ks: Any,
    losses: Any,
    *,
    fit_ks: Sequence[int] = (1, 2, 4),
    stderr: Any | None = None,
) -> ForecastOutput:
    """Fit the law on ``fit_ks`` only and forecast every ``k`` in ``ks`` (arXiv 2509.24244).

    Args:
      ks: ``[K]`` all subset sizes with observed losses.
      losses: ``[K]`` observed (mean) losses.
      fit_ks: the subset sizes used for the fit (must be among ``ks``).
      stderr: optional ``[K]`` standard errors (passed to the fit for its weights).

    Returns:
      A :class:`ForecastOutput`.
    """
    k = np.asarray(ks, dtype=float).reshape(-1)
    y = np.asarray(losses, dtype=float).reshape(-1)
    sel = np.isin(k, np.asarray(fit_ks, dtype=float))
    if sel.sum() != len(fit_ks):
        raise ValueError(f"fit_ks {list(fit_ks)} are not all in ks {k.tolist()}")
    se = None if stderr is None else np.asarray(stderr, dtype=float).reshape(-1)[sel]
    fit = fit_scaling_law(k[sel], y[sel], stderr=se)
    pred = scaling_law_curve(k, fit.l_inf, fit.a, fit.b)
    err = np.abs(pred - y)
    rel = err / np.abs(y)
    out = ~sel
    return ForecastOutput(
        fit,
        k[sel],
        k,
        pred,
        y,
        err,
        rel,
        float(err[out].max()) if out.any() else 0.0,
        float(rel[out].max()) if out.any() else 0.0,
    )
