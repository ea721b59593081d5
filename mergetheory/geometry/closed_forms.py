r"""Closed forms and quadratures for Gaussian widths and statistical dimensions.

Exact values (to quadrature accuracy, ~1e-10) used as oracles for the Monte Carlo
estimators in :mod:`mergetheory.width`, and the constants the theory needs. Everything
here is host-side NumPy / SciPy and returns Python floats; nothing is traced.

* :math:`w(B_2^D) = \sqrt2\,\Gamma(\frac{D+1}{2})/\Gamma(\frac D2) = \mathbb{E}\chi_D`;
* :math:`w(B_\infty^D) = D\sqrt{2/\pi}`; :math:`w(B_1^D) = \mathbb{E}\max_i|g_i|`
  (quadrature);
* :math:`w(L \cap B_2) = \mathbb{E}\chi_k` and :math:`\delta(L) = k` for a subspace of
  dimension ``k``;
* :math:`\delta(\mathbb{R}^D_+) = D/2`,
  :math:`w(\mathbb{R}^D_+ \cap B_2) = \sum_k \binom Dk 2^{-D}\,\mathbb{E}\chi_k`;
* :math:`\delta(\mathrm{Circ}_D(\alpha))` and its width, by quadrature over the polar
  angle;
* :math:`E_n = \mathbb{E}\max(Z_1..Z_n)` and :math:`E^0_n = \mathbb{E}\max(0, Z_1..Z_n)`
  (Sources S2);
* the zonotope :math:`w = \sum_i \|t_i\|/\sqrt{2\pi}`; the finite-set bound
  :math:`\max_t\|t\|\sqrt{2\log N}`; the kinematic constant
  :math:`a_\eta = \sqrt{8\log(4/\eta)}`.

References (``paper/refs.bib``): Amelunxen, Lotz, McCoy, Tropp 2014, "Living on the
edge" (statistical dimension, circular cones, Theorem I); Vershynin 2018, *High-
Dimensional Probability* (widths of balls, finite-set bound); the Snowmaker / conivol
tables in peer toolkits' published figures.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import integrate, special, stats

__all__ = [
    "circular_cone_statdim",
    "circular_cone_statdim_approx",
    "circular_cone_width",
    "expected_chi",
    "expected_max_normal",
    "expected_max_normal_with_zero",
    "finite_set_width_bound",
    "kinematic_a_eta",
    "l1_ball_width",
    "l2_ball_width",
    "linf_ball_width",
    "orthant_statdim",
    "orthant_width",
    "subspace_statdim",
    "subspace_width",
    "zonotope_width",
]

_QUAD = dict(epsabs=1e-13, epsrel=1e-12, limit=200)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def expected_chi(k: int) -> float:
    r""":math:`\mathbb{E}\|g\|_2` for :math:`g \sim \mathcal{N}(0, I_k)`.

    :math:`\mathbb{E}\chi_k = \sqrt2\,\Gamma(\frac{k+1}2)/\Gamma(\frac k2)`, computed with
    ``gammaln`` (stable for large ``k``); ``expected_chi(0) = 0``.
    """
    k = _check_int("k", k, 0)
    if k == 0:
        return 0.0
    return float(math.sqrt(2.0) * math.exp(special.gammaln((k + 1) / 2) - special.gammaln(k / 2)))


def l2_ball_width(dim: int, radius: float = 1.0) -> float:
    r"""Gaussian width of the Euclidean ball :math:`rB_2^D`: :math:`r\,\mathbb{E}\chi_D`.

    Example:
      >>> l2_ball_width(1)   # sqrt(2/pi) = 0.7979
    """
    return float(radius) * expected_chi(_check_int("dim", dim, 1))


def subspace_width(rank: int) -> float:
    r"""Width of a ``rank``-dim subspace intersected with the ball: :math:`\mathbb{E}\chi_k`."""
    return expected_chi(rank)


def subspace_statdim(rank: int) -> float:
    r"""Statistical dimension of a ``rank``-dimensional subspace: :math:`\delta(L) = \dim L`."""
    return float(_check_int("rank", rank, 0))


def linf_ball_width(dim: int, radius: float = 1.0) -> float:
    r"""Width of the cube :math:`rB_\infty^D`: :math:`r\,\mathbb{E}\|g\|_1 = rD\sqrt{2/\pi}`."""
    return float(radius) * _check_int("dim", dim, 1) * math.sqrt(2.0 / math.pi)


@functools.cache
def _l1_ball_width_unit(dim: int) -> float:
    # E max_i |g_i| = int_0^inf P(max |g_i| > x) dx = int_0^inf 1 - (1 - erfc(x/sqrt2))^D dx
    def tail(x: float) -> float:
        return -math.expm1(dim * math.log1p(-special.erfc(x / math.sqrt(2.0))))

    hi = 10.0 + math.sqrt(2.0 * math.log(dim + 1.0))
    val, _ = integrate.quad(tail, 0.0, hi, **_QUAD)
    rest, _ = integrate.quad(tail, hi, np.inf, **_QUAD)
    return float(val + rest)


def l1_ball_width(dim: int, radius: float = 1.0) -> float:
    r"""Width of the cross-polytope :math:`rB_1^D`: :math:`r\,\mathbb{E}\max_i|g_i|` by quadrature.

    .. math:: \mathbb{E}\max_i|g_i| = \int_0^\infty 1 - \mathrm{erf}(x/\sqrt2)^D\,dx .
    """
    return float(radius) * _l1_ball_width_unit(_check_int("dim", dim, 1))


@functools.cache
def expected_max_normal(n: int) -> float:
    r""":math:`E_n = \mathbb{E}\max(Z_1..Z_n)`, :math:`Z_i \sim \mathcal{N}(0,1)` iid (quadrature).

    .. math:: E_n = \int_0^\infty (1 - \Phi(x)^n)\,dx - \int_{-\infty}^0 \Phi(x)^n\,dx .

    Reproduces Sources S2 (e.g. :math:`E_2 = 1/\sqrt\pi = 0.5642`,
    :math:`E_{10} = 1.5388`). ``w(conv{rho e_1..rho e_n}) = rho * E_n``.
    """
    n = _check_int("n", n, 1)
    if n == 1:
        return 0.0

    def upper(x: float) -> float:
        return -math.expm1(n * special.log_ndtr(x))

    def lower(x: float) -> float:
        return math.exp(n * special.log_ndtr(x))

    a, _ = integrate.quad(upper, 0.0, np.inf, **_QUAD)
    b, _ = integrate.quad(lower, -np.inf, 0.0, **_QUAD)
    return float(a - b)


@functools.cache
def expected_max_normal_with_zero(n: int) -> float:
    r""":math:`E^0_n = \mathbb{E}\max(0, Z_1..Z_n) = \int_0^\infty (1 - \Phi(x)^n)\,dx`.

    :math:`E^0_1 = 1/\sqrt{2\pi}`; ``w(conv{0, rho e_1..rho e_n}) = rho * E0_n``
    (Sources S2). ``n = 0`` gives 0 (the set ``{0}``).
    """
    n = _check_int("n", n, 0)
    if n == 0:
        return 0.0

    def upper(x: float) -> float:
        return -math.expm1(n * special.log_ndtr(x))

    a, _ = integrate.quad(upper, 0.0, np.inf, **_QUAD)
    return float(a)


def orthant_statdim(dim: int) -> float:
    r"""Statistical dimension of the non-negative orthant: :math:`\delta(\mathbb{R}^D_+) = D/2`."""
    return _check_int("dim", dim, 1) / 2.0


def orthant_width(dim: int) -> float:
    r"""Width of the orthant in the ball, :math:`w(\mathbb{R}^D_+ \cap B_2) = \mathbb{E}\|g_+\|`.

    :math:`\mathbb{E}\|g_+\| = \sum_k \binom Dk 2^{-D}\,\mathbb{E}\chi_k`. (The number of
    positive coordinates is Binomial(D, 1/2); given it, :math:`\|g_+\|` is
    :math:`\chi_k`.)
    """
    dim = _check_int("dim", dim, 1)
    ks = np.arange(dim + 1)
    pmf = stats.binom.pmf(ks, dim, 0.5)
    return float(sum(p * expected_chi(int(k)) for k, p in zip(ks, pmf, strict=True)))


def _polar_angle_expectation(dim: int, angle: float, power: int) -> float:
    r""":math:`\mathbb{E}_\theta[c(\theta)^p]`, θ the angle of a uniform direction to :math:`e_1`.

    :math:`c(\theta) = 1` for :math:`\theta\le\alpha`, :math:`\cos(\theta-\alpha)` for
    :math:`\alpha<\theta<\alpha+\pi/2`, else 0: the norm of the projection of a unit
    vector at angle θ onto the circular cone. The density of θ is
    :math:`\propto \sin^{D-2}\theta` on :math:`[0, \pi]`.
    """
    if dim == 1:  # theta in {0, pi} w.p. 1/2 each; c(0) = 1, c(pi) = 0 for angle <= pi/2
        return 0.5
    m = dim - 2
    log_norm = 0.5 * math.log(math.pi) + special.gammaln((m + 1) / 2) - special.gammaln(m / 2 + 1)

    def density(t: float) -> float:
        s = math.sin(t)
        if s <= 0.0:
            return 1.0 / math.pi if m == 0 else 0.0
        return math.exp(m * math.log(s) - log_norm)

    def c(t: float) -> float:
        if t <= angle:
            return 1.0
        if t < angle + math.pi / 2:
            return math.cos(t - angle) ** power
        return 0.0

    pts = [p for p in (angle, min(angle + math.pi / 2, math.pi), math.pi / 2) if 0 < p < math.pi]
    val, _ = integrate.quad(lambda t: c(t) * density(t), 0.0, math.pi, points=pts, **_QUAD)
    return float(val)


def circular_cone_statdim(dim: int, angle: float) -> float:
    r"""Statistical dimension of :math:`\mathrm{Circ}_D(\alpha) = \{x : x_1 \ge \|x\|\cos\alpha\}`.

    Exact, by one-dimensional quadrature: :math:`g = \rho u` with :math:`\rho^2\sim\chi^2_D`
    independent of the direction :math:`u`, whose angle θ to :math:`e_1` has density
    :math:`\propto\sin^{D-2}\theta`, and :math:`\|\Pi_C g\| = \rho\,c(\theta)`, so

    .. math:: \delta = D\;\mathbb{E}_\theta\,c(\theta)^2, \qquad
              c(\theta) = \begin{cases}1 & \theta \le \alpha\\
              \cos(\theta - \alpha) & \alpha < \theta < \alpha + \pi/2\\
              0 & \text{otherwise.}\end{cases}

    Checks: :math:`D = 2` gives :math:`2\alpha/\pi + 1/2` (a planar wedge of angle
    :math:`2\alpha`); :math:`\alpha = \pi/2` (a half-space) gives :math:`D - 1/2`; and
    ALMT 2014 (section 3.4) give :math:`\delta \approx D\sin^2\alpha + \cos 2\alpha`
    (:func:`circular_cone_statdim_approx`).
    """
    dim = _check_int("dim", dim, 1)
    angle = float(angle)
    if not 0.0 <= angle <= math.pi / 2:
        raise ValueError(f"angle must be in [0, pi/2], got {angle}")
    return dim * _polar_angle_expectation(dim, angle, 2)


def circular_cone_width(dim: int, angle: float) -> float:
    r"""Width of the circular cone in the ball, :math:`w(\mathrm{Circ}_D(\alpha)\cap B_2)`.

    Equal to :math:`\mathbb{E}\chi_D\,\mathbb{E}_\theta c(\theta)`.

    See :func:`circular_cone_statdim` for :math:`c(\theta)`.
    """
    dim = _check_int("dim", dim, 1)
    angle = float(angle)
    if not 0.0 <= angle <= math.pi / 2:
        raise ValueError(f"angle must be in [0, pi/2], got {angle}")
    return expected_chi(dim) * _polar_angle_expectation(dim, angle, 1)


def circular_cone_statdim_approx(dim: int, angle: float) -> float:
    r"""ALMT 2014 approximation of the circular-cone statistical dimension.

    :math:`\delta(\mathrm{Circ}_D(\alpha)) \approx D\sin^2\alpha + \cos2\alpha`,
    [recalled] from "Living on the edge", section 3.4; the error is :math:`O(1)` and
    small for moderate angles (compare :func:`circular_cone_statdim`, which is exact).
    """
    return _check_int("dim", dim, 1) * math.sin(angle) ** 2 + math.cos(2.0 * angle)


def zonotope_width(gram: Any) -> float:
    r"""Exact width of the zonotope :math:`\{\sum_i\lambda_it_i : \lambda\in[0,1]^n\}`.

    .. math:: w = \mathbb{E}\sum_i\max(0, \langle g, t_i\rangle) = \sum_i \|t_i\|/\sqrt{2\pi},

    by linearity of expectation, for any (correlated) generators.

    Args:
      gram: ``[n, n]`` Gram matrix (only its diagonal, the squared norms, is used).
    """
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"zonotope_width: expected an [n, n] Gram matrix, got {g.shape}")
    return float(np.sum(np.sqrt(np.clip(np.diag(g), 0.0, None))) / math.sqrt(2.0 * math.pi))


def finite_set_width_bound(max_norm: float, num_points: int) -> float:
    r"""The finite-set bound :math:`w(T) \le \max_{t\in T}\|t\|\sqrt{2\log N}` (lemma L-b).

    (For :math:`N = 1` it gives 0, the width of a single point.)
    """
    num_points = _check_int("num_points", num_points, 1)
    return float(max_norm) * math.sqrt(2.0 * math.log(num_points))


def kinematic_a_eta(eta: float) -> float:
    r"""ALMT 2014 Theorem I constant :math:`a_\eta = \sqrt{8\log(4/\eta)}`, :math:`\eta\in(0,1)`.

    :math:`a_{0.05} \approx 5.92`, :math:`a_{0.01} \approx 6.92` (Sources S4).
    """
    eta = float(eta)
    if not 0.0 < eta < 1.0:
        raise ValueError(f"eta must be in (0, 1), got {eta}")
    return math.sqrt(8.0 * math.log(4.0 / eta))
