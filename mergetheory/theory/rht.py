r"""Does RHT extend coverage? Width of the expert hull before and after a reparameterization (C5).

Hypothesis **H-RHT** (claim C5 of arXiv 2505.21226, *reconstruction*: the paper's RHT
formula and its measure of "coverage" are unknown; Sources S1 C5 and 6). A
per-expert reparameterization :math:`\tau_i \mapsto \tilde\tau_i = \phi(\tau_i)` *extends
the coverage* of the merged model: the Gaussian width of the set of merges,
:math:`w(\mathrm{conv}\{\tilde\tau_i\}) > w(\mathrm{conv}\{\tau_i\})`, **at equal norm
budget**.

**Why "at equal norm budget".** Width is positively homogeneous, :math:`w(aT) = a\,w(T)`,
so any reparameterization that inflates norms "extends coverage" trivially. With the norm
budget :math:`R(T) = \max_i\|\tau_i\|` (the radius in the bound
:math:`w \le R\sqrt{2\log n}` of :mod:`mergetheory.theory.saturation`) and the
*coverage* (normalized width) :math:`c(T) = w(T)/R(T)`, the total gain splits exactly:

.. math::
    \underbrace{\log\frac{w(\tilde T)}{w(T)}}_{\text{total}}
    = \underbrace{\log\frac{R(\tilde T)}{R(T)}}_{\text{rescaling}}
    + \underbrace{\log\frac{c(\tilde T)}{c(T)}}_{\text{geometry}},
    \qquad c(\tilde T) = \frac{w(\tilde T / s)}{R(T)},\ s = \frac{R(\tilde T)}{R(T)} .

The geometric term is the width gain of :math:`\tilde T` shrunk back to the original
budget: what is left of the effect once the rescale is removed, i.e. changed correlations,
supports and sign conflicts. :func:`coverage_gain` measures both terms with paired
(common-random-number) standard errors and computes :math:`w(\tilde T/s)` through the
width engine, so the identity is checked on the estimator, not just on paper.

**The reparameterizations** (:data:`REPARAMETERIZATIONS`; each is applied to every expert
and every tensor separately, like step 2 of the released code, Sources S6):

* ``rht`` -- the released code's RHT step: keep the top :math:`k = \lfloor\rho_d\,
  \mathrm{numel}\rfloor` magnitudes, divide by the density :math:`\rho_d`.
  On Gaussian entries :math:`\|\tilde\tau\|/\|\tau\| = \sqrt{2(q\varphi(q) + 1 -
  \Phi(q))}/\rho_d` with :math:`q = \Phi^{-1}(1 - \rho_d/2)` (1.4182 at
  :math:`\rho_d = 0.7`; :func:`predicted_norm_ratio`);
* ``magnitude_prune`` -- the same without the division: **the same geometry** as ``rht``
  (the two differ by the common factor :math:`1/\rho_d`), so their coverages agree exactly;
* ``dare`` -- Bernoulli(:math:`\rho_d`) keep masks, divide by :math:`\rho_d`;
  :math:`\mathbb E\|\tilde\tau\|^2 = \|\tau\|^2/\rho_d`;
* ``heavy_tailed`` -- *hypothesis* (the paper's family is unknown; Sources S1
  recommends a Student-t scale mixture): every coordinate of every expert is multiplied by
  an independent :math:`s \sim \sqrt{\nu/\chi^2_\nu}`, then each expert is rescaled to its
  original norm (so the rescaling term is exactly 0 and the whole effect is geometric).
  Gaussian entries become Student-:math:`t_\nu` (tail index :math:`\nu`); we chose this
  family because it is the canonical way to make a Gaussian heavy-tailed with one tail
  parameter, it keeps signs and supports, and it leaves the i.i.d. isotropic case
  isotropic.

**Predictions (derived here, exact as** :math:`D \to \infty` **).** For equal-norm experts
with pairwise coordinate correlation :math:`\rho` (``CorrelatedSpec``), the hull width is
:math:`\|\tau\|\sqrt{1-\rho}\,E_n` (:mod:`~mergetheory.theory.saturation`). A
reparameterization that maps the correlation to :math:`\rho'` therefore has geometric gain
:math:`\tfrac12\log\frac{1-\rho'}{1-\rho}` (:func:`predicted_geometry_gain`), with

* ``dare``: :math:`\rho' = \rho_d\,\rho` (independent masks);
* ``heavy_tailed``: :math:`\rho' = \kappa_\nu\rho`, :math:`\kappa_\nu = (\mathbb E s)^2 /
  \mathbb E s^2 = \tfrac{\nu-2}{2}\big(\Gamma(\tfrac{\nu-1}2)/\Gamma(\tfrac\nu2)\big)^2`
  (:math:`\nu > 2`);
* ``rht`` / ``magnitude_prune``: :math:`\rho' = \mathbb E[x_1x_2; |x_1|, |x_2| > q] /
  \mathbb E[x^2; |x| > q]` for a standard bivariate normal pair (one-dimensional
  quadrature, :func:`predicted_correlation`).

In particular for isotropic experts (:math:`\rho = 0`) no reparameterization of this kind
has a geometric gain: RHT's coverage gain is then the rescale :math:`1/\rho_d` and nothing
else.

**Verdict** (:func:`coverage_gain`): ``"holds"`` if the geometric log-gain is significantly
positive (``z`` paired standard errors) *and* at least ``min_effect`` (default 0.01, a 1 %
wider hull), else ``"fails: ..."`` with the decomposition (a loss, no significant gain, or
a gain below ``min_effect``). The standard errors are those of the Gaussian Monte Carlo
*given the drawn experts*; the expert draw itself is not resampled.

Reference: ``wang2025moreexperts``, ``yu2024dare``, ``yadav2023ties`` in ``paper/refs.bib``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from scipy import integrate, special

from .._types import Key, TaskVectors
from ..geometry import SET_KINDS
from ..merge import (
    dare_keep_masks,
    dare_rescale,
    heavy_tailed_reparameterize,
    num_kept,
    trim_top_k,
)
from ..tree import validate_task_vectors
from ..verdict import FAILS, HOLDS, Verdict
from ..width import paired_paths
from .subsets import generator_gram

__all__ = [
    "REPARAMETERIZATIONS",
    "CoverageEvidence",
    "coverage_gain",
    "dare_reparameterize",
    "heavy_tailed_reparameterize",
    "magnitude_prune_reparameterize",
    "predicted_correlation",
    "predicted_geometry_gain",
    "predicted_norm_ratio",
    "rht_reparameterize",
    "student_t_mixing_factor",
]


# --------------------------------------------------------------------------------------
# per-expert reparameterizations: fn(task_vectors, key, *, param) -> task_vectors
# --------------------------------------------------------------------------------------


def _leaves_with_experts(task_vectors: TaskVectors) -> None:
    if isinstance(task_vectors, np.ndarray):
        raise TypeError("pass a JAX array or pytree of JAX arrays (jnp.asarray(x))")
    validate_task_vectors(task_vectors)


@jax.jit
def _prune_core(task_vectors, ks, density, rescale):
    def one(x, k):
        kept = trim_top_k(x, k)
        return jnp.where(rescale, dare_rescale(kept, True, density), kept)

    leaves, treedef = jtu.tree_flatten(task_vectors)
    return jtu.tree_unflatten(treedef, [one(x, k) for x, k in zip(leaves, ks, strict=True)])


def _prune(task_vectors: TaskVectors, density: Any, rescale: bool) -> TaskVectors:
    # k = int(density * numel) per expert tensor, computed eagerly (PEFT's Python rounding)
    # when density is concrete, in the trace otherwise
    ks = [num_kept(density, math.prod(x.shape[1:])) for x in jtu.tree_leaves(task_vectors)]
    return _prune_core(task_vectors, ks, jnp.asarray(density), jnp.asarray(rescale))


def magnitude_prune_reparameterize(
    task_vectors: TaskVectors, key: Key, *, density: Any
) -> TaskVectors:
    r"""Keep the top :math:`\lfloor\rho_d\,\mathrm{numel}\rfloor` magnitudes of every expert tensor.

    PEFT's ``magnitude_based_pruning`` per expert and per tensor (``>= k`` kept on exact
    ties; :func:`mergetheory.merge.topk_mask`). Deterministic: ``key`` is ignored.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (uniform signature).
      density: kept fraction :math:`\rho_d \in [0, 1]` (may be traced).

    Returns:
      The pruned task vectors (same structure, shapes, dtypes).
    """
    del key
    return _prune(task_vectors, density, False)


def rht_reparameterize(task_vectors: TaskVectors, key: Key, *, density: Any) -> TaskVectors:
    r"""The released code's RHT step per expert, :math:`\tilde x = T_{\rho_d}(x)\odot x/\rho_d`.

    :math:`T_{\rho_d}` is the top-magnitude mask keeping a fraction :math:`\rho_d`.

    ``magnitude_based_pruning_with_rescaler`` of the seed repository (Sources S6 step 2),
    applied to every expert tensor. With one expert the full code-level RHT merge
    (``MERGE_OPERATORS["rht"]``) reduces to this map. Deterministic: ``key`` is ignored.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused.
      density: :math:`\rho_d \in (0, 1]` (may be traced).

    Returns:
      The reparameterized task vectors.

    Example:
      >>> x = jr.normal(jr.key(0), (1, 200_000))
      >>> jnp.linalg.norm(rht_reparameterize(x, None, density=0.7)) / jnp.linalg.norm(x)
      >>> # ~ 1.4182 (Sources S6)
    """
    del key
    return _prune(task_vectors, density, True)


@jax.jit
def _dare_core(task_vectors, key, density):
    masks = dare_keep_masks(key, task_vectors, density)
    return jtu.tree_map(lambda x, m: dare_rescale(x, m, density), task_vectors, masks)


def dare_reparameterize(task_vectors: TaskVectors, key: Key, *, density: Any) -> TaskVectors:
    r"""DARE per expert: :math:`\tilde x = m \odot x / \rho_d`, :math:`m\sim\mathrm{Bern}(\rho_d)`.

    Leaf ``l`` draws its ``[T, ...]`` mask from ``fold_in(key, l)`` (the masks of the DARE
    operators, :func:`mergetheory.merge.dare_keep_masks`), independently across experts
    and coordinates.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: PRNG key.
      density: keep probability :math:`\rho_d \in (0, 1]`.

    Returns:
      The reparameterized task vectors.
    """
    return _dare_core(task_vectors, key, jnp.asarray(density))


REPARAMETERIZATIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "rht": (rht_reparameterize, "density"),
    "magnitude_prune": (magnitude_prune_reparameterize, "density"),
    "dare": (dare_reparameterize, "density"),
    "heavy_tailed": (heavy_tailed_reparameterize, "nu"),
}
"""``name -> (fn(task_vectors, key, **{param: value}), param name)``."""


# --------------------------------------------------------------------------------------
# closed-form predictions (Gaussian entries, D -> infinity)
# --------------------------------------------------------------------------------------


def _q(density: float) -> float:
    return float(special.ndtri(1.0 - density / 2.0))


def _tail_second_moment(q: float) -> float:
    r""":math:`\mathbb E[x^2; |x| > q] = 2(q\varphi(q) + 1 - \Phi(q))`, standard normal."""
    phi = math.exp(-0.5 * q * q) / math.sqrt(2.0 * math.pi)
    return 2.0 * (q * phi + special.ndtr(-q))


def student_t_mixing_factor(nu: float) -> float:
    r""":math:`\kappa_\nu = (\mathbb E s)^2/\mathbb E s^2` for :math:`s = \sqrt{\nu/\chi^2_\nu}`.

    1 at :math:`\nu = \infty`; 0 for :math:`\nu \le 2` (infinite :math:`\mathbb E s^2`).
    """
    if math.isinf(nu):
        return 1.0
    if nu <= 2.0:
        return 0.0  # E s^2 = inf: the correlation is destroyed (limit D -> inf)
    log_ratio = special.gammaln((nu - 1.0) / 2.0) - special.gammaln(nu / 2.0)
    return float((nu - 2.0) / 2.0 * math.exp(2.0 * log_ratio))


def predicted_norm_ratio(name: str, param: float) -> float:
    r""":math:`\|\phi(\tau)\|/\|\tau\|` for Gaussian entries (RMS, :math:`D\to\infty`).

    ``rht``: :math:`\sqrt{2(q\varphi(q) + 1 - \Phi(q))}/\rho_d`; ``magnitude_prune``: the
    same times :math:`\rho_d`; ``dare``: :math:`1/\sqrt{\rho_d}`; ``heavy_tailed``: 1.
    """
    if name == "heavy_tailed":
        return 1.0
    d = float(param)
    if name == "dare":
        return 1.0 / math.sqrt(d)
    kept = math.sqrt(_tail_second_moment(_q(d))) if d < 1.0 else 1.0
    if name == "magnitude_prune":
        return kept
    if name == "rht":
        return kept / d
    raise ValueError(f"unknown reparameterization {name!r}")


def _pruned_correlation(rho: float, density: float) -> float:
    if density >= 1.0 or rho == 0.0:
        return rho
    if rho >= 1.0:
        return 1.0
    q = _q(density)
    sd = math.sqrt(1.0 - rho * rho)

    def inner(x1):
        # E[x2 1{|x2| > q} | x1], x2 | x1 ~ N(rho x1, 1 - rho^2)
        mu = rho * x1
        a, b = (q - mu) / sd, (-q - mu) / sd
        tail = special.ndtr(-a) + special.ndtr(b)
        dens = (np.exp(-0.5 * a * a) - np.exp(-0.5 * b * b)) / math.sqrt(2.0 * math.pi)
        return x1 * (mu * tail + sd * dens) * np.exp(-0.5 * x1 * x1) / math.sqrt(2 * math.pi)

    num = 2.0 * integrate.quad(inner, q, np.inf, epsabs=1e-13, epsrel=1e-11)[0]
    return float(num / _tail_second_moment(q))


def predicted_correlation(name: str, rho: float, param: float) -> float:
    r"""Coordinate correlation :math:`\rho'` after the reparameterization (module docstring)."""
    if name == "dare":
        return float(param) * rho
    if name == "heavy_tailed":
        return student_t_mixing_factor(float(param)) * rho
    if name in ("rht", "magnitude_prune"):
        return _pruned_correlation(rho, float(param))
    raise ValueError(f"unknown reparameterization {name!r}")


def predicted_geometry_gain(name: str, rho: float, param: float) -> float:
    r"""Predicted geometric log-gain :math:`\tfrac12\log\frac{1-\rho'}{1-\rho}` of the hull."""
    if rho >= 1.0:
        raise ValueError("rho = 1: all experts coincide, the hull has width 0")
    rp = predicted_correlation(name, rho, param)
    return 0.5 * math.log((1.0 - rp) / (1.0 - rho))


# --------------------------------------------------------------------------------------
# measured decomposition
# --------------------------------------------------------------------------------------


class CoverageEvidence(NamedTuple):
    r"""Width of the expert set before / after a reparameterization, and its decomposition.

    Attributes:
      name: reparameterization name (or ``"custom"``).
      param: its parameter value (density or :math:`\nu`).
      kind: set family (``"hull"`` or ``"hull0"``).
      width_before, width_after: ``(mean, stderr)`` of :math:`w(T)`, :math:`w(\tilde T)`.
      radius_before, radius_after: :math:`R(T)`, :math:`R(\tilde T)` (max expert norm).
      coverage_before, coverage_after: ``(mean, stderr)`` of :math:`c = w/R`.
      equal_budget_width: ``(mean, stderr)`` of :math:`w(\tilde T/s)` (engine, same paths).
      log_total_gain, log_total_gain_stderr: :math:`\log(w(\tilde T)/w(T))` (paired).
      log_rescale_gain: :math:`\log s` (exact).
      log_geometry_gain, log_geometry_gain_stderr: :math:`\log(w(\tilde T/s)/w(T))`.
      identity_residual: :math:`|\text{total} - \text{rescaling} - \text{geometry}|`
        (round-off if the width engine is positively homogeneous).
      mean_cosine_before, mean_cosine_after: mean off-diagonal cosine of the experts.
      num_samples: ``M``.
      verdict: ``"holds"`` (significant geometric gain >= ``min_effect``) or ``"fails: ..."``.
    """

    name: str
    param: float
    kind: str
    width_before: tuple[float, float]
    width_after: tuple[float, float]
    radius_before: float
    radius_after: float
    coverage_before: tuple[float, float]
    coverage_after: tuple[float, float]
    equal_budget_width: tuple[float, float]
    log_total_gain: float
    log_total_gain_stderr: float
    log_rescale_gain: float
    log_geometry_gain: float
    log_geometry_gain_stderr: float
    identity_residual: float
    mean_cosine_before: float
    mean_cosine_after: float
    num_samples: int
    verdict: Verdict


def _log_ratio(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``log(mean a / mean b)`` and its paired delta-method standard error."""
    m = a.shape[0]
    ma, mb = a.mean(), b.mean()
    infl = a / ma - b / mb
    return float(math.log(ma / mb)), float(infl.std(ddof=1) / math.sqrt(m))


def _mean_cos(gram: np.ndarray) -> float:
    d = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    c = gram / d[:, None] / d[None, :]
    n = gram.shape[0]
    return float((c.sum() - np.trace(c)) / max(n * (n - 1), 1))


def coverage_gain(
    key: Key,
    task_vectors: TaskVectors,
    reparameterization: str | Callable[..., Any],
    *,
    num_samples: int,
    kind: str = "hull",
    z: float = 3.0,
    min_effect: float = 0.01,
    chunk_size: int = 4096,
    **params: Any,
) -> CoverageEvidence:
    r"""Measure H-RHT: total, rescaling and geometric width gain of a reparameterization.

    ``key`` is split by purpose into the reparameterization key (DARE masks, mixing
    scales) and the Gaussian key; the widths of :math:`T`, :math:`\tilde T` and
    :math:`\tilde T/s` are evaluated on the same Gaussian chunk keys (common random
    numbers), so the log-ratios carry paired standard errors.

    Args:
      key: PRNG key.
      task_vectors: pytree of ``[T, ...]`` leaves (dense).
      reparameterization: a name in :data:`REPARAMETERIZATIONS` or
        ``fn(task_vectors, key, **params)``.
      num_samples: Gaussian samples ``M``.
      kind: ``"hull"`` (default) or ``"hull0"``.
      z: significance for the verdict, in standard errors.
      min_effect: smallest geometric log-gain that counts as extending coverage.
      chunk_size: Monte Carlo chunk.
      **params: the reparameterization's parameter, e.g. ``density=0.7`` or ``nu=3.0``.

    Returns:
      :class:`CoverageEvidence`.

    Example:
      >>> ev = coverage_gain(jr.key(0), tv, "rht", density=0.7, num_samples=20_000)
      >>> ev.log_rescale_gain, ev.log_geometry_gain   # ~ log 1.418, ~ 0 for isotropic tv
    """
    if kind not in ("hull", "hull0"):
        raise ValueError(f"kind must be 'hull' or 'hull0', got {kind!r}")
    if isinstance(reparameterization, str):
        if reparameterization not in REPARAMETERIZATIONS:
            raise ValueError(
                f"unknown reparameterization {reparameterization!r}; "
                f"known: {sorted(REPARAMETERIZATIONS)}"
            )
        fn, pname = REPARAMETERIZATIONS[reparameterization]
        if set(params) != {pname}:
            raise ValueError(
                f"{reparameterization} takes exactly {pname}=..., got {sorted(params)}"
            )
        name = reparameterization
    else:
        fn, name = reparameterization, "custom"
    param = float(next(iter(params.values()))) if len(params) == 1 else float("nan")
    _leaves_with_experts(task_vectors)
    key_reparam, key_gauss = jr.split(key)
    after = fn(task_vectors, key_reparam, **params)
    g0 = generator_gram(task_vectors)
    g1 = generator_gram(after)
    g0_h, g1_h = np.asarray(g0, np.float64), np.asarray(g1, np.float64)
    r0 = math.sqrt(float(np.max(np.diag(g0_h))))
    r1 = math.sqrt(float(np.max(np.diag(g1_h))))
    if r0 <= 0 or r1 <= 0:
        raise ValueError("all experts are zero before or after the reparameterization")
    s = r1 / r0
    g_equal = g1 / jnp.asarray(s * s, g1.dtype)
    vals = paired_paths(  # common random numbers: the same h for the three sets
        key_gauss,
        [SET_KINDS[kind](gram=g) for g in (g0, g1, g_equal)],
        num_samples=num_samples,
        chunk_size=min(chunk_size, num_samples),
    )
    v0, v1, ve = (np.asarray(v, np.float64) for v in vals)
    m = v0.shape[0]

    def ms(v, scale=1.0):
        return float(v.mean() / scale), float(v.std(ddof=1) / math.sqrt(m) / scale)

    total, total_se = _log_ratio(v1, v0)
    geom, geom_se = _log_ratio(ve, v0)
    rescale = math.log(s)
    resid = abs(total - rescale - geom)
    if geom > z * geom_se and geom >= min_effect:
        verdict = Verdict(HOLDS)
    else:
        if geom < -z * geom_se:
            what = "a loss"
        elif geom > z * geom_se:
            what = f"a gain below {min_effect:g}"
        else:
            what = "no significant gain"
        verdict = Verdict(
            FAILS,
            f"{what} at equal norm budget: log-gain {total:.4f} = rescaling "
            f"{rescale:.4f} + geometry {geom:.4f} +- {geom_se:.2g}",
        )
    return CoverageEvidence(
        name=name,
        param=param,
        kind=kind,
        width_before=ms(v0),
        width_after=ms(v1),
        radius_before=r0,
        radius_after=r1,
        coverage_before=ms(v0, r0),
        coverage_after=ms(v1, r1),
        equal_budget_width=ms(ve),
        log_total_gain=total,
        log_total_gain_stderr=total_se,
        log_rescale_gain=rescale,
        log_geometry_gain=geom,
        log_geometry_gain_stderr=geom_se,
        identity_residual=resid,
        mean_cosine_before=_mean_cos(g0_h),
        mean_cosine_after=_mean_cos(g1_h),
        num_samples=m,
        verdict=verdict,
    )
