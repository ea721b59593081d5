r"""Upper bound, lower bound and saturation of the merged-set width (claims C1, C2).

Hypothesis **H-bound** (C1, *reconstruction*: the paper's statement is unknown; Sources S1
sections 1.4 C1-C3 and 2.2 L-b). For the hull of ``n`` task vectors (``kind="hull"``,
``p = n`` points) or of the ``n`` vectors and the origin (``kind="hull0"``, ``p = n + 1``
points), with :math:`R_n = \max_{i\le n}\|\tau_i\|` and :math:`r_n` the rank of the vectors,

.. math::
    w(S_n) \;\le\; U_n := R_n \cdot \min\Big(\sqrt{2\log p},\ \mathbb E\chi_{r_n}\Big).

Both terms are theorems: :math:`\mathbb E\max_{i\le p} X_i \le \sigma\sqrt{2\log p}` for any
centred Gaussians with variances :math:`\le\sigma^2` (here :math:`X_i = \langle g, \tau_i\rangle`,
:math:`\sigma = R_n`), and :math:`S_n \subseteq R_n (B_2 \cap \mathrm{span})`, whose width is
:math:`R_n\,\mathbb E\|P g\| = R_n\,\mathbb E\chi_{r_n}`
(:mod:`mergetheory.geometry.closed_forms`: ``expected_chi``, ``finite_set_width_bound``).

Hypothesis **H-lower** (the lower counterpart used here, a theorem: Sudakov-Fernique
comparison). Let :math:`\delta_n = \min_{i\ne j}\|\tau_i - \tau_j\|` over the ``p`` points
(for ``hull0`` the origin is one of them, so :math:`\|\tau_i\|` enter too). With
:math:`Y_i = (\delta_n/\sqrt 2) Z_i`, :math:`Z_i` i.i.d. :math:`\mathcal N(0, 1)`:
:math:`\mathbb E(X_i - X_j)^2 = \|\tau_i - \tau_j\|^2 \ge \delta_n^2 = \mathbb E(Y_i - Y_j)^2`,
hence (Sudakov-Fernique)

.. math::
    w(S_n) = \mathbb E\max_i X_i \;\ge\; L_n := \frac{\delta_n}{\sqrt 2}\, E_p, \qquad
    E_p = \mathbb E\max(Z_1, \dots, Z_p)\ (:func:`expected_max_normal`).

Both bounds are *tight* for orthogonal vectors of equal norm :math:`\rho` (``hull``:
:math:`\delta = \rho\sqrt 2`, :math:`w = \rho E_n = L_n`), and the lower one stays tight for
the equicorrelated family below.

Hypothesis **H-saturation** (C2/C3 "the effective parameter space saturates",
*reconstruction*). The *coverage* :math:`c_n = w(S_n)/R_n` (width at unit norm budget)
grows at most like :math:`\sqrt{2\log n}` and is capped at :math:`\mathbb E\chi_d \approx
\sqrt d` when the experts live in a :math:`d`-dimensional effective subspace: once
:math:`\log n \gtrsim d/2`, extra experts add almost nothing. :func:`check_width_bounds`
reports :math:`c_n`, the bounds and the fraction of the cap reached.

Hypothesis **H-correlated** (exact, derived here). For
:math:`\tau_i = \sqrt\rho\, c + \sqrt{1-\rho}\,\varepsilon_i`,
:math:`\mathrm{conv}\{\tau_i\} = \sqrt\rho\, c + \sqrt{1-\rho}\,\mathrm{conv}\{\varepsilon_i\}`,
so by translation invariance and positive homogeneity

.. math::
    w(\mathrm{conv}\{\tau_i\}) = \sqrt{1-\rho}\; w(\mathrm{conv}\{\varepsilon_i\})

for *every* realisation of :math:`c, \varepsilon` (per Gaussian path,
:math:`h_\tau(g) = \sqrt\rho\langle g, c\rangle + \sqrt{1-\rho}\, h_\varepsilon(g)`). With
:math:`\varepsilon_i` i.i.d. :math:`\mathcal N(0, I_D/D)` and :math:`D \gg n` the coverage
saturates at :math:`\approx \sqrt{1-\rho}\,E_n`: shared components shrink the reachable
set. (For ``hull0`` the origin is not translated and this identity does not hold.)

Reference: ``vershynin2018hdp`` (Gaussian width, Sudakov-Fernique), ``wang2025moreexperts``
in ``paper/refs.bib``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Key
from ..geometry import SET_KINDS, ConvexHull, PointSet
from ..geometry.closed_forms import expected_chi, expected_max_normal, finite_set_width_bound
from ..verdict import FAILS, HOLDS, Verdict
from ..width import NestedWidthEstimate, nested_width, paired_paths
from .subsets import generator_gram

__all__ = [
    "CorrelatedShrinkageEvidence",
    "SaturationEvidence",
    "check_correlated_shrinkage",
    "check_width_bounds",
    "min_pairwise_distance",
    "width_lower_bound",
    "width_upper_bound",
]

_BOUND_KINDS = ("hull", "hull0")


# --------------------------------------------------------------------------------------
# the bounds, from a Gram matrix
# --------------------------------------------------------------------------------------


def _host_gram(generators: Any) -> np.ndarray:
    return np.asarray(generator_gram(generators), np.float64)


def _rank(gram: np.ndarray, rtol: float = 1e-9) -> int:
    ev = np.linalg.eigvalsh(0.5 * (gram + gram.T))
    return int(np.sum(ev > rtol * max(float(ev.max()), 1e-300)))


def _min_distance_gram(g: np.ndarray, with_origin: bool) -> float:
    d = np.diag(g)
    sq = d[:, None] + d[None, :] - 2.0 * g
    vals = sq[~np.eye(g.shape[0], dtype=bool)]
    if with_origin:
        vals = np.concatenate([vals, d])
    if vals.size == 0:
        return float("inf")
    return float(np.sqrt(max(float(vals.min()), 0.0)))


def _upper_gram(g: np.ndarray, kind: str) -> float:
    p = g.shape[0] + (kind == "hull0")
    radius = math.sqrt(max(float(np.max(np.diag(g))), 0.0))
    return min(finite_set_width_bound(radius, p), radius * expected_chi(_rank(g)))


def _lower_gram(g: np.ndarray, kind: str) -> float:
    p = g.shape[0] + (kind == "hull0")
    if p < 2:
        return 0.0
    delta = _min_distance_gram(g, kind == "hull0")
    return delta / math.sqrt(2.0) * expected_max_normal(int(p))


def _check_kind(kind: str) -> None:
    if kind not in _BOUND_KINDS:
        raise ValueError(f"kind must be one of {_BOUND_KINDS}, got {kind!r}")


def min_pairwise_distance(generators: Any, *, with_origin: bool = False) -> float:
    r""":math:`\delta = \min_{i\ne j}\|\tau_i - \tau_j\|`, from the Gram matrix (0 as a point).

    Args:
      generators: task vectors ``[N, ...]``, LoRA factors or a generated set.
      with_origin: count the origin as one more point.

    Returns:
      The distance (``inf`` when there is a single point).
    """
    return _min_distance_gram(_host_gram(generators), with_origin)


def width_upper_bound(generators: Any, *, kind: str = "hull") -> float:
    r"""Upper bound :math:`U = R\,\min(\sqrt{2\log p}, \mathbb E\chi_r)`.

    ``p = n`` points for ``hull``, ``p = n + 1`` for ``hull0``; :math:`r` is the rank.
    """
    _check_kind(kind)
    return _upper_gram(_host_gram(generators), kind)


def width_lower_bound(generators: Any, *, kind: str = "hull") -> float:
    r"""Sudakov-Fernique: :math:`L = (\delta/\sqrt2)\,E_p` (see the module docstring)."""
    _check_kind(kind)
    return _lower_gram(_host_gram(generators), kind)


# --------------------------------------------------------------------------------------
# H-bound / H-lower / H-saturation on a measured curve
# --------------------------------------------------------------------------------------


class SaturationEvidence(NamedTuple):
    r"""Measured nested widths against the bounds (host arrays, entry ``n-1`` for ``n`` experts).

    Attributes:
      kind: ``"hull"`` or ``"hull0"``.
      ns: ``[N]`` numbers of experts.
      curve: the measured :class:`~mergetheory.width.NestedWidthEstimate` of
        :math:`w(S_n)` as float64 host arrays (``mean``, ``stderr`` ``[N]``, paired
        differences, ``num_samples`` ``M``; common random numbers across ``n``).
      radius: ``[N]`` :math:`R_n = \max_{i\le n}\|\tau_i\|`.
      coverage, coverage_stderr: ``[N]`` :math:`c_n = w(S_n)/R_n`.
      upper: ``[N]`` :math:`U_n` (``upper_log`` and ``cap`` are its two terms).
      upper_log: ``[N]`` :math:`R_n\sqrt{2\log p}`.
      cap: ``[N]`` :math:`R_n\,\mathbb E\chi_{r_n}`.
      lower: ``[N]`` Sudakov-Fernique :math:`L_n`.
      rank: ``[N]`` :math:`r_n`.
      upper_ratio: ``[N]`` :math:`w/U` (``<= 1`` by H-bound).
      lower_ratio: ``[N]`` :math:`w/L` (``>= 1`` by H-lower; ``nan`` where :math:`L = 0`).
      cap_fraction: :math:`w_N / (R_N\,\mathbb E\chi_{r_N})`, how full the effective space is.
      verdict: ``"holds"`` or ``"fails: ..."`` (a bound violated beyond ``z`` stderrs).
    """

    kind: str
    ns: np.ndarray
    curve: NestedWidthEstimate
    radius: np.ndarray
    coverage: np.ndarray
    coverage_stderr: np.ndarray
    upper: np.ndarray
    upper_log: np.ndarray
    cap: np.ndarray
    lower: np.ndarray
    rank: np.ndarray
    upper_ratio: np.ndarray
    lower_ratio: np.ndarray
    cap_fraction: float
    verdict: Verdict


def check_width_bounds(
    key: Key,
    generators: Any,
    *,
    kind: str = "hull",
    num_samples: int,
    z: float = 3.0,
    method: str = "fast",
) -> SaturationEvidence:
    r"""Measure :math:`w(S_n)`, ``n = 1..N``, and test H-bound and H-lower at every ``n``.

    Args:
      key: PRNG key.
      generators: task vectors ``[N, ...]``, LoRA factors or a generated set (entry order).
      kind: ``"hull"`` or ``"hull0"``.
      num_samples: Monte Carlo samples (nested, common random numbers).
      z: a bound counts as violated when it is off by more than ``z`` standard errors.
      method: ``"fast"`` (Gram) or ``"naive"`` (explicit vectors; cheaper for tiny ``D``).

    Returns:
      :class:`SaturationEvidence`.

    Example:
      >>> ev = check_width_bounds(jr.key(0), jnp.eye(8), kind="hull", num_samples=20_000)
      >>> ev.lower_ratio[-1]   # ~ 1: Sudakov-Fernique is tight for orthonormal vectors
    """
    _check_kind(kind)
    if method == "naive":
        flat = SET_KINDS[kind].from_task_vectors(generators)
        gram = np.asarray(flat.gram, np.float64)
        curve = nested_width(key, flat, kind=kind, num_samples=num_samples, method="naive")
    else:
        gram_j = generator_gram(generators)
        gram = np.asarray(gram_j, np.float64)
        curve = nested_width(key, ConvexHull(gram=gram_j), kind=kind, num_samples=num_samples)
    n = gram.shape[0]
    ns = np.arange(1, n + 1)
    curve = curve.to_numpy()
    width, se = curve.mean, curve.stderr
    radius = np.sqrt(np.maximum.accumulate(np.maximum(np.diag(gram), 0.0)))
    p = ns + (kind == "hull0")
    rank = np.array([_rank(gram[:m, :m]) for m in ns])
    upper_log = radius * np.sqrt(2.0 * np.log(p))
    cap = radius * np.array([expected_chi(int(r)) for r in rank])
    upper = np.minimum(upper_log, cap)
    lower = np.array([_lower_gram(gram[:m, :m], kind) for m in ns])
    safe_r = np.where(radius > 0, radius, 1.0)
    coverage, coverage_se = width / safe_r, se / safe_r
    with np.errstate(divide="ignore", invalid="ignore"):
        upper_ratio = np.where(upper > 0, width / upper, np.nan)
        lower_ratio = np.where(lower > 0, width / lower, np.nan)
    tol = 1e-12 * max(1.0, float(radius[-1]))
    bad_up = width - z * se > upper + tol
    bad_lo = width + z * se < lower - tol
    problems = []
    if np.any(bad_up):
        m = int(np.argmax(np.where(bad_up, (width - upper) / np.maximum(se, 1e-300), -np.inf)))
        problems.append(
            f"upper bound violated at n={m + 1}: w={width[m]:.4g} +- {se[m]:.2g} > U={upper[m]:.4g}"
        )
    if np.any(bad_lo):
        m = int(np.argmax(np.where(bad_lo, (lower - width) / np.maximum(se, 1e-300), -np.inf)))
        problems.append(
            f"lower bound violated at n={m + 1}: w={width[m]:.4g} +- {se[m]:.2g} < L={lower[m]:.4g}"
        )
    verdict = Verdict(FAILS, "; ".join(problems)) if problems else Verdict(HOLDS)
    cap_fraction = float(width[-1] / cap[-1]) if cap[-1] > 0 else float("nan")
    return SaturationEvidence(
        kind,
        ns,
        curve,
        radius,
        coverage,
        coverage_se,
        upper,
        upper_log,
        cap,
        lower,
        rank,
        upper_ratio,
        lower_ratio,
        cap_fraction,
        verdict,
    )


# --------------------------------------------------------------------------------------
# H-correlated: exact shrinkage by sqrt(1 - rho)
# --------------------------------------------------------------------------------------


class CorrelatedShrinkageEvidence(NamedTuple):
    r"""Evidence for :math:`w(\mathrm{conv}\,\tau) = \sqrt{1-\rho}\,w(\mathrm{conv}\,\varepsilon)`.

    Attributes:
      rho: the shared-component weight.
      num_tasks: ``n``.
      width_tau: ``(mean, stderr)`` of :math:`w(\mathrm{conv}\{\tau_i\})`.
      width_eps: ``(mean, stderr)`` of :math:`w(\mathrm{conv}\{\varepsilon_i\})`.
      shared_term: ``(mean, stderr)`` of :math:`\sqrt\rho\,\langle g, c\rangle` over the same
        paths (expectation 0; it is the whole Monte Carlo difference between the two sides).
      identity_residual: :math:`\max_{\text{paths}} |h_\tau - \sqrt\rho\langle g, c\rangle -
        \sqrt{1-\rho}\,h_\varepsilon|` (round-off only if the identity holds).
      difference_z: :math:`(\hat w_\tau - \sqrt{1-\rho}\,\hat w_\varepsilon)` in standard
        errors of the shared term.
      predicted_coverage: :math:`\sqrt{1-\rho}\,E_n` (the :math:`D \gg n` saturation level).
      coverage: :math:`\hat w_\tau / \max_i\|\tau_i\|`.
      num_samples: ``M``.
      verdict: ``"holds"`` or ``"fails: ..."``.
    """

    rho: float
    num_tasks: int
    width_tau: tuple[float, float]
    width_eps: tuple[float, float]
    shared_term: tuple[float, float]
    identity_residual: float
    difference_z: float
    predicted_coverage: float
    coverage: float
    num_samples: int
    verdict: Verdict


def check_correlated_shrinkage(
    key: Key,
    *,
    num_tasks: int,
    rho: float,
    dim: int,
    num_samples: int,
    z: float = 4.0,
    dtype: Any = None,
) -> CorrelatedShrinkageEvidence:
    r"""Test H-correlated exactly, per Gaussian path, on one draw of :math:`c, \varepsilon`.

    Draws :math:`c, \varepsilon_1..\varepsilon_n \sim \mathcal N(0, I_D/D)`, forms
    :math:`\tau_i = \sqrt\rho c + \sqrt{1-\rho}\varepsilon_i` and evaluates the three support
    functions on the same Gaussian vectors (naive estimator, explicit vectors).

    Args:
      key: PRNG key (split into the task draw and the Gaussian draw).
      num_tasks: ``n``.
      rho: in ``[0, 1]``.
      dim: ``D``.
      num_samples: Gaussian paths ``M``.
      z: tolerance for the difference of the two width estimates, in stderrs of the
        shared term.
      dtype: floating dtype (default JAX's default float).

    Returns:
      :class:`CorrelatedShrinkageEvidence`.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho}")
    dtype = jnp.result_type(float) if dtype is None else dtype
    key_tasks, key_gauss = jr.split(key)
    draws = jr.normal(key_tasks, (num_tasks + 1, dim), dtype) / jnp.sqrt(jnp.asarray(dim, dtype))
    c, eps = draws[0], draws[1:]
    r = jnp.asarray(rho, dtype)
    tau = jnp.sqrt(r) * c[None, :] + jnp.sqrt(1.0 - r) * eps
    sets = (
        ConvexHull.from_task_vectors(tau),
        ConvexHull.from_task_vectors(eps),
        PointSet.from_task_vectors(c[None]),
    )
    chunk = max(1, min(num_samples, (1 << 22) // dim))
    h_tau, h_eps, h_c = (
        np.asarray(v, np.float64)
        # the naive path draws g in R^D from the chunk key alone: the same g for every set
        for v in paired_paths(
            key_gauss, sets, num_samples=num_samples, chunk_size=chunk, method="naive"
        )
    )
    sr, s1 = math.sqrt(rho), math.sqrt(1.0 - rho)
    shared = sr * h_c
    resid = float(np.max(np.abs(h_tau - shared - s1 * h_eps)))
    m = h_tau.shape[0]

    def ms(v):
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(m))

    w_tau, w_eps, sh = ms(h_tau), ms(h_eps), ms(shared)
    diff = w_tau[0] - s1 * w_eps[0]
    diff_z = diff / sh[1] if sh[1] > 0 else (0.0 if abs(diff) < 1e-12 else float("inf"))
    radius = float(jnp.max(jnp.sqrt(jnp.sum(tau * tau, axis=1))))
    scale = float(np.max(np.abs(h_tau))) + 1.0
    tol = 1e-9 * scale
    if resid <= tol and abs(diff_z) <= z:
        verdict = Verdict(HOLDS)
    else:
        verdict = Verdict(
            FAILS,
            f"per-path residual {resid:.3g} (tolerance {tol:.2g}), "
            f"width difference {diff:.4g} = {diff_z:.2f} stderr",
        )
    return CorrelatedShrinkageEvidence(
        float(rho),
        int(num_tasks),
        w_tau,
        w_eps,
        sh,
        resid,
        float(diff_z),
        s1 * expected_max_normal(int(num_tasks)),
        w_tau[0] / radius,
        m,
        verdict,
    )
