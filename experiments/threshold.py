r"""The optimal threshold :math:`n^\star` (claim C4 of arXiv 2505.21226, a reconstruction).

For every sampler family in ``config.families`` (isotropic Gaussian at several ``D``,
correlated, sparse, heavy-tailed, LoRA at several ranks) draw ``num_replicates``
independent sets of ``num_experts`` task vectors and measure the nested widths
:math:`w_n = w(\operatorname{conv}\{0, \tau_1..\tau_n\})`, ``n = 1..N``, with
:func:`mergetheory.width.nested_width` (``kind="hull0"``, common random numbers across
``n``). Then, with :mod:`mergetheory.theory.threshold`:

* definition (i), :math:`n^\star_\kappa = \min\{n: g_n < \kappa g_1\}`, for every
  :math:`\kappa` in ``kappas``, on the *replicate-averaged* curve
  :math:`\mathbb E_\tau w_n` (standard errors across replicates, which include the Monte
  Carlo error), with its confidence set and uniqueness verdict;
* definition (i) on every *single* draw (experts merged in the order drawn): how often the
  crossing is unique, and the first counterexample;
* definition (iii), :math:`\arg\max_n \log w_n - c\,n` (stop when the next expert adds
  less than a relative :math:`e^c - 1` of width);
* definition (ii), :math:`\min\{n: \delta(C_n) + m \ge D - a_\eta\sqrt D\}`, for isotropic
  experts in ``cone_dim`` dimensions, as a function of ``m`` (``kind="cone"``,
  ``quantity="statdim"``).

All keys derive from ``config.seed`` (``fold_in`` by purpose, family and replicate).
Output: ``<out-dir>/threshold.npz`` + ``.json`` (``config.summary`` feeds
``paper/sections/threshold.md``).

Run: ``python -m experiments.threshold [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import experiment_main
from mergetheory.geometry import ConvexHullWithOrigin
from mergetheory.lora import lora_gram_matrix
from mergetheory.tasks import family_spec, sample_task_vectors
from mergetheory.theory.threshold import (
    WidthCurve,
    threshold_gain_ratio,
    threshold_kinematic,
    threshold_utility,
)
from mergetheory.width import nested_width

NAME = "threshold"


class ThresholdConfig(NamedTuple):
    """Frozen configuration.

    Attributes:
      seed: the one integer every PRNG key derives from.
      num_experts: ``N``, the longest nested sequence.
      num_replicates: independent expert draws per family.
      num_samples: Monte Carlo samples per nested width curve.
      kappas: ratios for definition (i).
      kappa_main: the ratio quoted in the summary.
      log_cost: cost per expert of definition (iii) with :math:`U = \\log`.
      z: standard errors for confidence sets and significance.
      families: ``(label, family, parameter, D)``: ``family`` in ``gaussian``,
        ``correlated`` (``rho``), ``sparse`` (``fraction``), ``heavy`` (``nu``),
        ``lora`` (``rank``; the leaf is ``sqrt(D) x sqrt(D)``).
      cone_dim: ambient dimension of the definition-(ii) run.
      cone_num_experts: generators of the nested cones.
      cone_num_samples: Monte Carlo samples of :math:`\\delta(C_n)`.
      etas: ALMT :math:`\\eta` values for definition (ii).
    """

    seed: int = 20261123
    num_experts: int = 16
    num_replicates: int = 16
    num_samples: int = 10_000
    kappas: tuple[float, ...] = (0.5, 0.4, 0.3, 0.25)
    kappa_main: float = 0.5
    log_cost: float = 0.05
    z: float = 1.96
    families: tuple[tuple[str, str, float, int], ...] = (
        ("iso_d1024", "gaussian", 0.0, 1024),
        ("iso_d32", "gaussian", 0.0, 32),
        ("iso_d8", "gaussian", 0.0, 8),
        ("iso_d4", "gaussian", 0.0, 4),
        ("iso_d2", "gaussian", 0.0, 2),
        ("corr_rho02", "correlated", 0.2, 1024),
        ("corr_rho05", "correlated", 0.5, 1024),
        ("corr_rho08", "correlated", 0.8, 1024),
        ("sparse_f001", "sparse", 0.01, 1024),
        ("heavy_nu3", "heavy", 3.0, 1024),
        ("heavy_nu15", "heavy", 1.5, 1024),
        ("lora_r1", "lora", 1, 1024),
        ("lora_r4", "lora", 4, 1024),
        ("lora_r16", "lora", 16, 1024),
    )
    cone_dim: int = 16
    cone_num_experts: int = 24
    cone_num_samples: int = 2000
    etas: tuple[float, ...] = (0.05, 0.5)


QUICK_CONFIG = ThresholdConfig(
    num_experts=8,
    num_replicates=2,
    num_samples=1000,
    kappas=(0.5, 0.3),
    families=(
        ("iso_d1024", "gaussian", 0.0, 1024),
        ("corr_rho05", "correlated", 0.5, 64),
        ("heavy_nu15", "heavy", 1.5, 64),
        ("lora_r4", "lora", 4, 64),
    ),
    cone_dim=6,
    cone_num_experts=8,
    cone_num_samples=200,
)


def _curve(key_tasks, key_width, family, param, dim, config):
    spec = family_spec(family, param, config.num_experts)
    if family == "lora":
        side = int(round(dim**0.5))
        factors = sample_task_vectors(key_tasks, spec, {"w": (side, side)}, jnp.float64)
        gens = ConvexHullWithOrigin.from_gram(lora_gram_matrix(factors))
    else:
        gens = sample_task_vectors(key_tasks, spec, {"w": (dim,)}, jnp.float64)
    return nested_width(key_width, gens, kind="hull0", num_samples=config.num_samples)


def _avg_curve(means: np.ndarray) -> WidthCurve:
    """Replicate-averaged curve with between-replicate standard errors ([R, N] input)."""
    r = means.shape[0]
    d1 = np.diff(means, axis=1)
    d2 = np.diff(d1, axis=1)

    def ms(x):
        return x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(r)

    (m, s), (g, gs), (h, hs) = ms(means), ms(d1), ms(d2)
    return WidthCurve.from_arrays(np.arange(1, means.shape[1] + 1), m, s, g, gs, h, hs, r)


def run(config: ThresholdConfig, *, progress: bool = True) -> tuple[dict, dict]:
    """Run the sweep; return ``(arrays, summary)``."""
    root = jr.key(config.seed)
    key_tasks_root, key_width_root, key_cone_tasks, key_cone_width = jr.split(root, 4)
    num_f, num_r, num_n = len(config.families), config.num_replicates, config.num_experts
    num_k = len(config.kappas)
    curves = np.zeros((num_f, num_r, num_n))
    curves_se = np.zeros((num_f, num_r, num_n))
    single_n_star = np.zeros((num_f, num_r), dtype=int)
    single_unique = np.zeros((num_f, num_r), dtype=bool)
    single_violation = np.zeros((num_f, num_r), dtype=bool)
    avg_mean = np.zeros((num_f, num_n))
    avg_se = np.zeros((num_f, num_n))
    avg_d1 = np.zeros((num_f, num_n - 1))
    avg_d1_se = np.zeros((num_f, num_n - 1))
    n_star = np.zeros((num_f, num_k), dtype=int)
    ci = np.zeros((num_f, num_k, 2), dtype=int)
    censored = np.zeros((num_f, num_k), dtype=bool)
    unique = np.zeros((num_f, num_k), dtype=bool)
    n_star_util = np.zeros(num_f, dtype=int)
    ci_util = np.zeros((num_f, 2), dtype=int)
    verdicts, util_verdicts, counterexamples = [], [], []
    main_idx = config.kappas.index(config.kappa_main)

    it = tqdm(list(enumerate(config.families)), desc=NAME, leave=False, disable=not progress)
    for f, (_label, family, param, dim) in it:
        for r in range(num_r):
            kt = jr.fold_in(jr.fold_in(key_tasks_root, f), r)
            kw = jr.fold_in(jr.fold_in(key_width_root, f), r)
            est = _curve(kt, kw, family, param, dim, config)
            curves[f, r] = np.asarray(est.mean)
            curves_se[f, r] = np.asarray(est.stderr)
            out = threshold_gain_ratio(est, kappa=config.kappa_main, z=config.z)
            single_n_star[f, r] = out.n_star
            single_unique[f, r] = out.unique
            single_violation[f, r] = out.significant_violation
            if out.significant_violation and len(counterexamples) < 3:
                counterexamples.append(f"{_label} draw {r}: {out.verdict}")
        avg = _avg_curve(curves[f])
        avg_mean[f], avg_se[f], avg_d1[f], avg_d1_se[f] = (
            avg.mean,
            avg.stderr,
            avg.diff1,
            avg.diff1_stderr,
        )
        fam_verdicts = []
        for j, kappa in enumerate(config.kappas):
            out = threshold_gain_ratio(avg, kappa=kappa, z=config.z)
            n_star[f, j], ci[f, j] = out.n_star, (out.ci_low, out.ci_high)
            censored[f, j], unique[f, j] = out.censored, out.unique
            fam_verdicts.append(out.verdict)
        verdicts.append(fam_verdicts)
        u = threshold_utility(avg, utility_fn=np.log, cost=config.log_cost, z=config.z)
        n_star_util[f], ci_util[f] = u.n_star, (u.ci_low, u.ci_high)
        util_verdicts.append(u.verdict)

    # definition (ii): nested cones of isotropic experts
    gens = sample_task_vectors(
        key_cone_tasks,
        family_spec("gaussian", None, config.cone_num_experts),
        {"w": (config.cone_dim,)},
        jnp.float64,
    )
    # nested cones cost O(M N) NNLS solves of size <= N; a small chunk bounds the memory
    dl = nested_width(
        key_cone_width,
        gens,
        kind="cone",
        quantity="statdim",
        num_samples=config.cone_num_samples,
        chunk_size=256,
    )
    delta, delta_se = np.asarray(dl.mean), np.asarray(dl.stderr)
    ms = np.arange(config.cone_dim + 1)
    n_lower = np.zeros((len(config.etas), ms.size), dtype=int)
    n_upper = np.zeros((len(config.etas), ms.size), dtype=int)
    n_center = np.zeros(ms.size, dtype=int)
    kin_unique = np.ones((len(config.etas), ms.size), dtype=bool)
    for e, eta in enumerate(config.etas):
        for i, m in enumerate(ms):
            k = threshold_kinematic(
                delta, m=float(m), ambient_dim=config.cone_dim, eta=eta, delta_stderr=delta_se
            )
            t = k.threshold
            n_lower[e, i] = -1 if t.censored else t.n_star
            n_upper[e, i] = k.n_upper
            n_center[i] = k.n_center
            kin_unique[e, i] = k.monotone and not t.significant_violation

    arrays = {
        "ns": np.arange(1, num_n + 1),
        "kappas": np.asarray(config.kappas),
        "curves": curves,
        "curves_stderr": curves_se,
        "avg_mean": avg_mean,
        "avg_stderr": avg_se,
        "avg_diff1": avg_d1,
        "avg_diff1_stderr": avg_d1_se,
        "n_star": n_star,
        "n_star_ci": ci,
        "n_star_censored": censored,
        "n_star_unique": unique,
        "single_n_star": single_n_star,
        "single_unique": single_unique,
        "single_violation": single_violation,
        "n_star_utility": n_star_util,
        "n_star_utility_ci": ci_util,
        "cone_delta": delta,
        "cone_delta_stderr": delta_se,
        "cone_ms": ms,
        "cone_etas": np.asarray(config.etas),
        "cone_n_lower": n_lower,
        "cone_n_center": n_center,
        "cone_n_upper": n_upper,
        "cone_unique": kin_unique,
    }
    summary = _summary(config, arrays, verdicts, util_verdicts, counterexamples, main_idx)
    return arrays, summary


def _fmt_n(n: int, cens: bool) -> str:
    return f">= {n}" if cens else str(n)


def _summary(config, a, verdicts, util_verdicts, counterexamples, main_idx) -> dict:
    labels = [fam[0] for fam in config.families]
    rows = [
        "| family | D | "
        + " | ".join(f"n* (kappa={k})" for k in config.kappas)
        + f" | n* (log w - {config.log_cost} n) | single draws unique | verdict (kappa="
        + f"{config.kappa_main}) |",
        "|" + "---|" * (len(config.kappas) + 5),
    ]
    summary: dict = {}
    for f, (label, family, param, dim) in enumerate(config.families):
        cells = []
        for j in range(len(config.kappas)):
            lo, hi = a["n_star_ci"][f, j]
            cens = bool(a["n_star_censored"][f, j])
            cells.append(f"{_fmt_n(int(a['n_star'][f, j]), cens)} [{lo}, {hi}]")
        uniq = float(np.mean(a["single_unique"][f]))
        desc = family if family == "gaussian" else f"{family} {param:g}"
        rows.append(
            f"| {desc} | {dim} | "
            + " | ".join(cells)
            + f" | {a['n_star_utility'][f]} | {uniq:.0%} | {verdicts[f][main_idx]} |"
        )
        summary[f"n_star_{label}"] = int(a["n_star"][f, main_idx])
        lo, hi = a["n_star_ci"][f, main_idx]
        summary[f"ci_{label}"] = f"[{lo}, {hi}]"
        summary[f"unique_frac_{label}"] = f"{uniq:.0%}"
    avg_ok = all(v[main_idx] == "holds" for v in verdicts)
    avg_fail = any(v[main_idx].startswith("fails") for v in verdicts)
    single_fail = bool(a["single_violation"].any())
    if avg_fail:
        verdict = "fails"
    elif avg_ok and not single_fail:
        verdict = "holds"
    else:
        verdict = "holds under stated assumptions"
    delta = a["cone_delta"]
    main_verdicts = [v[main_idx] for v in verdicts]
    counts = {
        key: sum(v.startswith(key) if key == "fails" else v == key for v in main_verdicts)
        for key in ("holds", "holds under stated assumptions", "fails")
    }
    noisy = [lab for lab, v in zip(labels, main_verdicts, strict=True) if v != "holds"]
    summary.update(
        {
            "verdict": verdict,
            "avg_holds": counts["holds"],
            "avg_holds_assumptions": counts["holds under stated assumptions"],
            "avg_fails": counts["fails"],
            "avg_not_holds_families": ", ".join(noisy) or "none",
            "num_families": len(labels),
            "table": "\n".join(rows),
            "kappa_main": config.kappa_main,
            "num_experts": config.num_experts,
            "num_replicates": config.num_replicates,
            "num_samples": config.num_samples,
            "log_cost": config.log_cost,
            "single_draw_failures": int(a["single_violation"].sum()),
            "single_draws": int(a["single_violation"].size),
            "counterexample": counterexamples[0] if counterexamples else "none",
            "families_failing_single": ", ".join(
                lab for f, lab in enumerate(labels) if a["single_violation"][f].any()
            )
            or "none",
            "utility_verdicts": ", ".join(sorted(set(util_verdicts))),
            "cone_dim": config.cone_dim,
            "cone_num_experts": config.cone_num_experts,
            "cone_delta_first": float(delta[0]),
            "cone_delta_last": float(delta[-1]),
            "cone_delta_at_d": float(delta[min(config.cone_dim, delta.size) - 1]),
            "cone_monotone": bool(np.all(a["cone_unique"])),
            "cone_n_center_half": int(a["cone_n_center"][config.cone_dim // 2]),
        }
    )
    return summary


main = experiment_main(NAME, __doc__, run, ThresholdConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
