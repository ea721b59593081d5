r"""Analyze a pool of experts on disk: geometry, width curves, concavity and :math:`n^\star`.

:func:`analyze_pool` opens every expert lazily (:func:`mergetheory.io.pool.open_expert`),
makes ONE streaming pass for the Gram matrix, the sign conflicts and the per-operator
Grams of the coverage comparison (:func:`mergetheory.io.pool.stream_pool_statistics`
feeding :class:`~mergetheory.analysis.pool_coverage.OperatorGrams`), and then works on
``[n, n]`` Grams alone:

* norms :math:`\|\tau_i\| = \sqrt{G_{ii}}`, cosines :math:`G_{ij}/(\|\tau_i\|\|\tau_j\|)`
  and sign conflicts (fraction of coordinates where :math:`\tau_i, \tau_j` disagree in sign);
* the width curves :math:`n \mapsto w(\mathrm{hull}_0(\tau_1..\tau_n))` and the statistical
  dimensions :math:`\delta(\mathrm{span})`, :math:`\delta(\mathrm{cone})`
  (:func:`mergetheory.nested_width`, common random numbers along the order) for the given
  (or greedy) order, and their mean over ``num_orders`` random orders;
* the concavity verdict of the hull0 curve (:func:`mergetheory.theory.concavity_verdict`)
  and :math:`n^\star` under the three definitions of
  :mod:`mergetheory.theory.threshold`, each with its confidence set and verdict: the gain
  ratio for several :math:`\kappa` (on the hull0 curve), the utility
  :math:`\log w_n - c\,n` (hull0 curve, cost ``utility_cost``) and the kinematic crossing
  :math:`\delta(C_n) + m \ge D - a_\eta\sqrt D` (cone statistical-dimension curve).
  The dimension :math:`m` of the loss-preserving subspace is not known from checkpoints:
  pass it (``kinematic_m``), else it is reported for
  :math:`m = D - a_\eta\sqrt D - q\,\delta(C_N)`, :math:`q = 1/4, 1/2, 3/4`, i.e.
  :math:`n^\star` is the first :math:`n` whose cone reaches that fraction of the whole
  pool's statistical dimension;
* the RHT / TIES / DARE coverage comparison at equal norm budget, plus any registered or
  plugin operator named in ``operators``
  (:mod:`mergetheory.analysis.pool_coverage`).

``order="greedy"`` orders experts by marginal hull0 width gain: with :math:`G = L L^\top`
the support values on a Gaussian draw are :math:`(L z)_i`, so the gain of adding
:math:`j` is :math:`\mathbb E[\max(h_S, (Lz)_j)] - \mathbb E[h_S]` on fixed draws.

Reference: Sources S2 (concavity) and 5 (:math:`n^\star`) in ``paper/``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..verdict import Verdict
from .pool_coverage import (
    COVERAGE_OPERATORS,
    OperatorGrams,
    coverage_comparison,
    gram_factor,
    operator_hparams,
)

__all__ = [
    "CURVE_KINDS",
    "KAPPAS",
    "KINEMATIC_FRACTIONS",
    "PoolAnalysis",
    "analyze_pool",
    "greedy_order",
]

CURVE_KINDS = (("hull0", "width"), ("span", "statdim"), ("cone", "statdim"))
"""The width curves computed: (set family, quantity)."""

KAPPAS = (0.5, 0.25, 0.1)
r"""The ratios :math:`\kappa` of the gain-ratio :math:`n^\star`."""

KINEMATIC_FRACTIONS = (0.25, 0.5, 0.75)
r"""Default kinematic :math:`m`: the fractions :math:`q` of :math:`\delta(C_N)` (module doc)."""


class PoolAnalysis(NamedTuple):
    """Everything :func:`analyze_pool` computes (host NumPy arrays and plain Python).

    Attributes:
      experts: the experts' paths, in the input order.
      base: the base model's path or ``None``.
      config: the analysis settings (seed, samples, orders, order rule).
      fingerprints: ``{file: sha256}`` of every input file.
      versions: package versions.
      num_params: ``D``.
      factored: LoRA adapters (Gram from the factors).
      norms: ``[n]``.  cosine: ``[n, n]``.  sign_conflict: ``[n, n]``.  gram: ``[n, n]``.
      order: ``[n]`` the order of the "given" curves (input order, or greedy).
      curves: ``{kind: {"order": {...}, "random_orders": {...}}}`` with ``mean`` and
        ``stderr`` lists per ``n`` (and ``diff1``/``diff2`` with stderrs for the order).
      concavity: ``{"verdict": Verdict, "details": {...}}`` of the hull0 curve.
      n_star: ``{"gain_ratio_kappa=K" | "utility_log_cost=C" | "kinematic_m=M": {...}}``
        threshold outputs (``n_star``, ``ci_low``, ``ci_high``, ``censored``, ``unique``,
        ``verdict``; the kinematic ones also ``m``, ``n_center``, ``n_upper``, the window).
      coverage: ``{"kind", "density", "operators": {name: {...}}}``, see
        :func:`mergetheory.analysis.pool_coverage.coverage_comparison`.
    """

    experts: list[str]
    base: str | None
    config: dict[str, Any]
    fingerprints: dict[str, str]
    versions: dict[str, str]
    num_params: int
    factored: bool
    norms: np.ndarray
    cosine: np.ndarray
    sign_conflict: np.ndarray
    gram: np.ndarray
    order: np.ndarray
    curves: dict[str, Any]
    concavity: dict[str, Any]
    n_star: dict[str, Any]
    coverage: dict[str, Any]


def greedy_order(gram: np.ndarray, *, seed: int, num_samples: int) -> np.ndarray:
    """Experts ordered by marginal hull0 width gain (fixed Gaussian draws; see module doc)."""
    factor = gram_factor(gram)  # G = F F^T
    z = np.random.default_rng(seed).standard_normal((num_samples, factor.shape[1]))
    values = z @ factor.T  # [M, n] support values <g, tau_i>
    current = np.zeros(num_samples)
    left = list(range(gram.shape[0]))
    order = []
    while left:
        gains = [np.mean(np.maximum(current, values[:, j])) for j in left]
        j = left.pop(int(np.argmax(gains)))
        current = np.maximum(current, values[:, j])
        order.append(j)
    return np.asarray(order)


def _curve_dict(est: Any) -> dict[str, list[float]]:
    return {
        f: np.asarray(getattr(est, f), np.float64).tolist()
        for f in ("mean", "stderr", "diff1", "diff1_stderr", "diff2", "diff2_stderr")
    }


def _versions() -> dict[str, str]:
    import jax

    from .. import __version__

    return {
        "mergetheory": __version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _threshold_dict(out: Any) -> dict[str, Any]:
    return {
        "n_star": int(out.n_star),
        "ci_low": int(out.ci_low),
        "ci_high": int(out.ci_high),
        "censored": bool(out.censored),
        "unique": bool(out.unique),
        "verdict": Verdict.parse(out.verdict),
    }


def _n_star(
    hull0: Any, cone: Any, num_params: int, *, utility_cost: float, kinematic_m: Any, eta: float
) -> dict[str, Any]:
    r""":math:`n^\star` under the three definitions (see the module docstring)."""
    from ..theory.threshold import (
        threshold_gain_ratio,
        threshold_kinematic,
        threshold_utility,
        width_curve,
    )

    n_star = {}
    wc = width_curve(hull0)
    for kappa in KAPPAS:
        n_star[f"gain_ratio_kappa={kappa}"] = _threshold_dict(threshold_gain_ratio(wc, kappa=kappa))
    util = threshold_utility(wc, utility_fn=np.log, cost=utility_cost)
    n_star[f"utility_log_cost={utility_cost:g}"] = _threshold_dict(util)
    delta = np.asarray(cone.mean, np.float64)
    delta_se = np.asarray(cone.stderr, np.float64)
    if kinematic_m is None:
        a = threshold_kinematic(delta, m=0.0, ambient_dim=num_params, eta=eta)
        kinematic_m = [a.lower_edge - q * float(delta[-1]) for q in KINEMATIC_FRACTIONS]
    for m in kinematic_m:
        k = threshold_kinematic(
            delta, m=float(m), ambient_dim=num_params, eta=eta, delta_stderr=delta_se
        )
        n_star[f"kinematic_m={float(m):.10g}"] = {
            **_threshold_dict(k.threshold),
            "m": float(m),
            "eta": eta,
            "n_center": int(k.n_center),
            "n_upper": int(k.n_upper),
            "lower_edge": float(k.lower_edge),
            "upper_edge": float(k.upper_edge),
            "monotone": bool(k.monotone),
        }
    return n_star


def analyze_pool(
    experts: Sequence[str | Path],
    base: str | Path | None = None,
    *,
    seed: int = 0,
    num_samples: int = 4096,
    num_orders: int = 8,
    order: str = "given",
    step: int | None = None,
    fmt: str | None = None,
    operators: Sequence[str] = (),
    density: float = 0.7,
    coverage_kind: str = "hull",
    utility_cost: float = 0.05,
    kinematic_m: Sequence[float] | None = None,
    eta: float = 0.05,
    progress: Callable[[str, int, int], None] | None = None,
) -> PoolAnalysis:
    r"""Analyze ``n`` experts (files or folders in any supported format) against ``base``.

    Keys: ``key(seed)`` is split into (given order, random orders, permutations) for the
    width curves; the coverage comparison uses ``fold_in(key(seed), 3)`` for its Gaussian
    draws and ``fold_in(key(seed), 4)`` for stochastic operators (DARE's masks).

    Args:
      experts: the experts (PEFT adapter folders, HF model folders, safetensors, orbax,
        msgpack, npz); PEFT adapters need no base.
      base: the base model, subtracted from dense experts (omit for task vectors).
      seed: every random number derives from it (same inputs + seed: same numbers).
      num_samples: Gaussian samples per width curve (and per coverage width).
      num_orders: random orders averaged for the order-free curves.
      order: ``"given"`` (input order) or ``"greedy"`` (marginal hull0 width gain).
      step: orbax ``CheckpointManager`` step.
      fmt: force the format of every expert and the base (one of
        :data:`mergetheory.io.pool.EXPERT_FORMATS`); ``None`` detects it per path.
      operators: registered or plugin operators compared besides
        :data:`~mergetheory.analysis.pool_coverage.COVERAGE_OPERATORS`.
      density: the density given to every compared operator that takes one (0.7: the
        released RHT code's value).
      coverage_kind: ``"hull"`` or ``"hull0"`` for the coverage comparison.
      utility_cost: the cost :math:`c` per expert of the utility :math:`n^\star`.
      kinematic_m: dimensions :math:`m` of the loss-preserving subspace for the kinematic
        :math:`n^\star` (default: see the module docstring).
      eta: the ALMT failure probability of the kinematic :math:`n^\star`.
      progress: ``fn(stage, done, total)``.

    Returns:
      A :class:`PoolAnalysis`.

    Raises:
      CheckpointError: unreadable or mismatching inputs (naming the file);
      ValueError: fewer than 3 experts, an unknown ``order``, an unknown operator or one
        that cannot act on one expert, a bad setting.

    Example:
      >>> res = analyze_pool(["ad0", "ad1", "ad2", "ad3"], seed=0, num_samples=2048)
      >>> res.n_star["gain_ratio_kappa=0.5"]["n_star"]
    """
    import math

    import jax

    from .. import Span, nested_width
    from ..io.pool import file_fingerprint, open_expert, stream_pool_statistics
    from ..theory import concavity_verdict

    if order not in ("given", "greedy"):
        raise ValueError(f"order must be 'given' or 'greedy', got {order!r}")
    if len(experts) < 3:
        raise ValueError(f"a pool analysis needs at least 3 experts, got {len(experts)}")
    if coverage_kind not in ("hull", "hull0"):
        raise ValueError(f"coverage kind must be 'hull' or 'hull0', got {coverage_kind!r}")
    if not (0.0 < density <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not (math.isfinite(utility_cost) and utility_cost > 0):
        raise ValueError(f"utility cost must be a finite number > 0, got {utility_cost}")
    if not (0.0 < eta < 1.0):
        raise ValueError(f"eta must be in (0, 1), got {eta}")
    compared = list(dict.fromkeys([*COVERAGE_OPERATORS, *operators]))
    op_hparams = {name: operator_hparams(name, density)[1] for name in compared}  # fail fast
    opened = [open_expert(p, step=step, fmt=fmt) for p in experts]
    base_opened = open_expert(base, step=step, fmt=fmt) if base is not None else None
    root = jax.random.key(seed)
    # one read of the inputs: the coverage comparison's per-operator Grams are fed by the
    # same per-tensor pass as the experts' Gram and sign counts
    op_acc = OperatorGrams(
        compared, jax.random.fold_in(root, 4), num_experts=len(opened), density=density
    )
    stats = stream_pool_statistics(opened, base_opened, progress=progress, visit=op_acc.update)
    gram = stats.gram
    n = gram.shape[0]
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    denom = np.outer(norms, norms)
    cosine = np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0)
    sign_conflict = stats.opposite / max(stats.num_params, 1)
    perm = (
        greedy_order(gram, seed=seed, num_samples=num_samples)
        if order == "greedy"
        else np.arange(n)
    )
    key_order, key_random, key_perm = jax.random.split(root, 3)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_perm)).tolist())
    perms = [rng.permutation(n) for _ in range(num_orders)]
    curves: dict[str, Any] = {}
    order_estimates = {}
    total = len(CURVE_KINDS) * (1 + num_orders)
    done = 0
    for kind, quantity in CURVE_KINDS:

        def curve(p, k, kind=kind, quantity=quantity):
            g = gram[np.ix_(p, p)]
            return nested_width(
                k, Span.from_gram(g), kind=kind, quantity=quantity, num_samples=num_samples
            )

        est = curve(perm, key_order)
        done += 1
        if progress:
            progress("width curves", done, total)
        means = []
        for r, p in enumerate(perms):
            means.append(np.asarray(curve(p, jax.random.fold_in(key_random, r)).mean))
            done += 1
            if progress:
                progress("width curves", done, total)
        means = np.stack(means)
        spread = means.std(axis=0, ddof=1) / np.sqrt(len(perms)) if len(perms) > 1 else 0 * means[0]
        curves[f"{kind}_{quantity}"] = {
            "order": _curve_dict(est),
            "random_orders": {
                "mean": means.mean(axis=0).tolist(),
                "stderr": spread.tolist(),
                "num_orders": len(perms),
            },
        }
        order_estimates[kind] = est
    status, details = concavity_verdict(order_estimates["hull0"])
    concavity = {
        "verdict": Verdict.parse(status),
        "details": {k: float(v) for k, v in details.items()},
    }
    n_star = _n_star(
        order_estimates["hull0"],
        order_estimates["cone"],
        int(stats.num_params),
        utility_cost=utility_cost,
        kinematic_m=kinematic_m,
        eta=eta,
    )
    op_grams = op_acc.grams
    coverage = {
        "kind": coverage_kind,
        "density": density,
        "operators": coverage_comparison(
            jax.random.fold_in(root, 3),
            gram,
            op_grams,
            num_samples=num_samples,
            kind=coverage_kind,
            hparams=op_hparams,
        ),
    }
    files = [f for e in [*opened, *([base_opened] if base_opened else [])] for f in e.files]
    fingerprints = {str(f): file_fingerprint(f) for f in sorted(set(files)) if Path(f).is_file()}
    config = {
        "seed": seed,
        "num_samples": num_samples,
        "num_orders": num_orders,
        "order": order,
        "step": step,
        "format": fmt,
        "kappas": list(KAPPAS),
        "operators": compared,
        "density": density,
        "coverage_kind": coverage_kind,
        "utility_cost": utility_cost,
        "kinematic_m": None if kinematic_m is None else [float(m) for m in kinematic_m],
        "eta": eta,
    }
    return PoolAnalysis(
        experts=[str(Path(p).absolute()) for p in experts],
        base=None if base is None else str(Path(base).absolute()),
        config=config,
        fingerprints=fingerprints,
        versions=_versions(),
        num_params=int(stats.num_params),
        factored=stats.factored,
        norms=norms,
        cosine=cosine,
        sign_conflict=sign_conflict,
        gram=gram,
        order=perm,
        curves=curves,
        concavity=concavity,
        n_star=n_star,
        coverage=coverage,
    )
