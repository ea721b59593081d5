r"""H-RHT (claim C5): does a reparameterization extend the coverage of the expert hull?

For isotropic and correlated experts, and for every reparameterization of
:mod:`mergetheory.theory.rht` (the released code's RHT step, plain magnitude pruning, DARE,
all swept over the density; the Student-t scale mixture swept over the tail index
:math:`\nu`), measure the width of :math:`\mathrm{conv}\{\tau_i\}` before and after, and
split the log-gain into *rescaling* (:math:`\log` of the max-norm ratio) and *geometry*
(the gain left at equal norm budget), with paired standard errors and the
:math:`D\to\infty` prediction of the geometric part
(:func:`~mergetheory.theory.rht.coverage_gain`,
:func:`~mergetheory.theory.rht.predicted_geometry_gain`).

Also: the code-level RHT norm ratio on Gaussian entries against
:func:`~mergetheory.theory.rht.predicted_norm_ratio` (1.4182 at density 0.7) with the
kurtosis before and after (Sources S6), and the coverage curve :math:`w(S_n)/R_n`
against ``n`` of correlated experts before / after (does RHT delay saturation, or only
shift the level?).

Keys: ``seed -> (tasks, gains, norms, curves)``, then ``fold_in`` by family / method /
parameter. Output: ``<out-dir>/rht_coverage.npz`` + ``.json`` (``config.summary`` feeds
``paper/sections/rht_coverage.md``).

Run: ``python -m experiments.rht_coverage [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import experiment_main
from experiments.concavity import draw_family
from mergetheory.theory.rht import (
    REPARAMETERIZATIONS,
    coverage_gain,
    predicted_geometry_gain,
    predicted_norm_ratio,
    rht_reparameterize,
)
from mergetheory.theory.saturation import check_width_bounds
from mergetheory.verdict import FAILS, HOLDS, Verdict

NAME = "rht_coverage"
DENSITY_METHODS = ("rht", "magnitude_prune", "dare")
CURVE_METHODS = ("original", "rht", "dare", "heavy_tailed")


class RHTCoverageConfig(NamedTuple):
    """Frozen configuration.

    Attributes:
      seed: the one integer every PRNG key derives from.
      num_experts: experts per family.
      shape: shape of one task vector.
      rhos: coordinate correlations of the families (0: isotropic).
      densities: density sweep of rht / magnitude_prune / dare.
      nus: tail-index sweep of the Student-t scale mixture (``inf`` = identity).
      num_samples: Gaussian paths per width.
      num_replicates: independent draws of the experts and of the reparameterization keys;
        the quoted gains are means over them, with their standard error across draws (the
        Monte Carlo error given one draw is much smaller).
      main_density: density quoted in the summary.
      main_nu: tail index quoted in the summary.
      norm_entries: Gaussian entries per expert of the norm-ratio check.
      norm_experts: experts of the norm-ratio check.
      curve_num_experts: ``N`` of the coverage curves.
      curve_rho: correlation of the coverage-curve family.
      z: significance in standard errors.
      min_effect: smallest geometric log-gain counted as extending coverage.
      dtype: dtype of the task vectors.
    """

    seed: int = 20261126
    num_experts: int = 8
    shape: tuple[int, ...] = (64, 64)
    rhos: tuple[float, ...] = (0.0, 0.5)
    densities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
    nus: tuple[float, ...] = (2.5, 3.0, 4.0, 6.0, 10.0, 30.0, math.inf)
    num_samples: int = 10_000
    num_replicates: int = 6
    main_density: float = 0.7
    main_nu: float = 3.0
    norm_entries: int = 200_000
    norm_experts: int = 4
    curve_num_experts: int = 16
    curve_rho: float = 0.5
    z: float = 3.0
    min_effect: float = 0.01
    dtype: str = "float64"


QUICK_CONFIG = RHTCoverageConfig(
    num_experts=4,
    shape=(16, 16),
    densities=(0.3, 0.7, 1.0),
    nus=(3.0, math.inf),
    num_samples=2000,
    num_replicates=2,
    norm_entries=20_000,
    norm_experts=2,
    curve_num_experts=6,
)


def run(config: RHTCoverageConfig, *, progress: bool = True) -> tuple[dict, dict]:
    """Run the sweeps; return ``(arrays, summary)``."""
    dtype = jnp.dtype(config.dtype)
    root = jr.key(config.seed)
    key_tasks, key_gain, key_norm, key_curve = jr.split(root, 4)
    num_f, num_d, num_nu = len(config.rhos), len(config.densities), len(config.nus)
    total = num_f * config.num_replicates * (len(DENSITY_METHODS) * num_d + num_nu)
    total += len(CURVE_METHODS) + 1
    bar = tqdm(total=total, desc=NAME, leave=False, disable=not progress)

    fields = (
        "log_total",
        "log_rescale",
        "log_geometry",
        "log_geometry_mc_se",
        "identity_residual",
        "cosine_before",
        "cosine_after",
        "coverage_before",
        "coverage_after",
    )
    num_r, num_m = config.num_replicates, len(DENSITY_METHODS)
    dens_r = {k: np.zeros((num_f, num_m, num_d, num_r)) for k in fields}
    heavy_r = {k: np.zeros((num_f, num_nu, num_r)) for k in fields}

    def record(store, idx, ev):
        store["log_total"][idx] = ev.log_total_gain
        store["log_rescale"][idx] = ev.log_rescale_gain
        store["log_geometry"][idx] = ev.log_geometry_gain
        store["log_geometry_mc_se"][idx] = ev.log_geometry_gain_stderr
        store["identity_residual"][idx] = ev.identity_residual
        store["cosine_before"][idx] = ev.mean_cosine_before
        store["cosine_after"][idx] = ev.mean_cosine_after
        store["coverage_before"][idx] = ev.coverage_before[0]
        store["coverage_after"][idx] = ev.coverage_after[0]

    common = dict(num_samples=config.num_samples, z=config.z, min_effect=config.min_effect)
    for f, rho in enumerate(config.rhos):
        for r in range(num_r):
            # replicate r: a fresh draw of the experts and of the reparameterization keys
            tv = draw_family(
                jr.fold_in(jr.fold_in(key_tasks, f), r),
                "correlated",
                rho,
                config.num_experts,
                config.shape,
                dtype,
            )
            key_fr = jr.fold_in(jr.fold_in(key_gain, f), r)
            for m, name in enumerate(DENSITY_METHODS):
                for j, d in enumerate(config.densities):
                    # same key for every method at (family, replicate, density): common
                    # random numbers, so rht and magnitude_prune agree to round-off
                    ev = coverage_gain(jr.fold_in(key_fr, j), tv, name, density=float(d), **common)
                    record(dens_r, (f, m, j, r), ev)
                    bar.update()
            for j, nu in enumerate(config.nus):
                ev = coverage_gain(
                    jr.fold_in(key_fr, 1000 + j), tv, "heavy_tailed", nu=float(nu), **common
                )
                record(heavy_r, (f, j, r), ev)
                bar.update()

    def reduce(store):
        out = {k: v.mean(axis=-1) for k, v in store.items()}
        out["identity_residual"] = store["identity_residual"].max(axis=-1)
        out["log_geometry_se"] = store["log_geometry"].std(axis=-1, ddof=1) / math.sqrt(num_r)
        out["log_geometry_reps"] = store["log_geometry"]
        return out

    dens, heavy = reduce(dens_r), reduce(heavy_r)
    dens["predicted_geometry"] = np.array(
        [
            [
                [predicted_geometry_gain(n, rho, d) for d in config.densities]
                for n in DENSITY_METHODS
            ]
            for rho in config.rhos
        ]
    )
    heavy["predicted_geometry"] = np.array(
        [
            [predicted_geometry_gain("heavy_tailed", rho, nu) for nu in config.nus]
            for rho in config.rhos
        ]
    )

    def verdict(mean, se):
        if mean > config.z * se and mean >= config.min_effect:
            return Verdict(HOLDS)
        if mean < -config.z * se:
            what = "a loss"
        elif mean > config.z * se:
            what = f"a gain below {config.min_effect:g}"
        else:
            what = "no significant gain"
        return Verdict(
            FAILS,
            f"{what} at equal norm budget: geometric log-gain {mean:+.4f} +- {se:.2g} "
            f"over {num_r} replicates",
        )

    verdicts: dict[tuple, Verdict] = {}
    dens_code = np.zeros((num_f, num_m, num_d), dtype=np.int64)
    heavy_code = np.zeros((num_f, num_nu), dtype=np.int64)
    for f in range(num_f):
        for m, name in enumerate(DENSITY_METHODS):
            for j, d in enumerate(config.densities):
                v = verdict(dens["log_geometry"][f, m, j], dens["log_geometry_se"][f, m, j])
                verdicts[(f, name, float(d))] = v
                dens_code[f, m, j] = 0 if v == "holds" else 2
        for j, nu in enumerate(config.nus):
            v = verdict(heavy["log_geometry"][f, j], heavy["log_geometry_se"][f, j])
            verdicts[(f, "heavy_tailed", float(nu))] = v
            heavy_code[f, j] = 0 if v == "holds" else 2

    # code-level RHT norm ratio on Gaussian entries (Sources S6)
    x = jr.normal(key_norm, (config.norm_experts, config.norm_entries), dtype)
    norm_ratio = np.zeros((num_d, config.norm_experts))
    norm_ratio_se = np.zeros(num_d)
    kurt_after = np.zeros(num_d)
    x2 = np.asarray(x * x, np.float64)
    kurt_before = float(np.mean(x2 * x2) / np.mean(x2) ** 2)
    for j, d in enumerate(config.densities):
        y = np.asarray(rht_reparameterize(x, None, density=float(d)), np.float64)
        y2 = y * y
        r2 = y2.sum(axis=1) / x2.sum(axis=1)
        norm_ratio[j] = np.sqrt(r2)
        # delta method for sqrt(mean y^2 / mean x^2), per expert (ratio estimator)
        ratio = r2[:, None]
        infl = (y2 - ratio * x2) / x2.mean(axis=1, keepdims=True)
        se_r2 = infl.std(axis=1, ddof=1) / math.sqrt(config.norm_entries)
        norm_ratio_se[j] = float(np.mean(se_r2 / (2.0 * np.sqrt(r2))))
        kurt_after[j] = float(np.mean(y2 * y2) / np.mean(y2) ** 2)
    norm_pred = np.array([predicted_norm_ratio("rht", float(d)) for d in config.densities])
    bar.update()

    # coverage curves of correlated experts before / after
    nc = config.curve_num_experts
    tvc = draw_family(
        jr.fold_in(key_tasks, 10_000), "correlated", config.curve_rho, nc, config.shape, dtype
    )
    curves = np.zeros((len(CURVE_METHODS), nc))
    curves_se = np.zeros((len(CURVE_METHODS), nc))
    for i, name in enumerate(CURVE_METHODS):
        if name == "original":
            after = tvc
        else:
            fn, pname = REPARAMETERIZATIONS[name]
            param = config.main_nu if pname == "nu" else config.main_density
            after = fn(tvc, jr.fold_in(key_curve, 100 + i), **{pname: param})
        ev = check_width_bounds(
            jr.fold_in(key_curve, 0), after, kind="hull", num_samples=config.num_samples
        )
        curves[i], curves_se[i] = ev.coverage, ev.coverage_stderr
        bar.update()
    bar.close()

    arrays = {
        **{f"density_{k}": v for k, v in dens.items()},
        **{f"heavy_{k}": v for k, v in heavy.items()},
        "density_verdict_code": dens_code,
        "heavy_verdict_code": heavy_code,
        "rhos": np.asarray(config.rhos),
        "densities": np.asarray(config.densities),
        "nus": np.asarray(config.nus),
        "norm_ratio": norm_ratio,
        "norm_ratio_se": norm_ratio_se,
        "norm_ratio_predicted": norm_pred,
        "kurtosis_before": np.asarray(kurt_before),
        "kurtosis_after": kurt_after,
        "curve_ns": np.arange(1, nc + 1),
        "curve_coverage": curves,
        "curve_coverage_se": curves_se,
    }
    summary = _summary(config, arrays, verdicts)
    return arrays, summary


def _summary(config, a, verdicts) -> dict:
    labels = ["isotropic" if r == 0 else f"correlated rho={r:g}" for r in config.rhos]
    dj = config.densities.index(config.main_density)
    nj = config.nus.index(config.main_nu)
    rows = [
        "| experts | reparameterization | total log-gain | rescaling | "
        "geometry (+- s.e. over draws) | predicted geometry | cosine before -> after | "
        "verdict (equal budget) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, label in enumerate(labels):
        entries = [
            (f"{name} (density {config.main_density:g})", "density", (f, m, dj), name)
            for m, name in enumerate(DENSITY_METHODS)
        ]
        entries.append((f"heavy_tailed (nu {config.main_nu:g})", "heavy", (f, nj), "heavy_tailed"))
        for title, prefix, idx, name in entries:
            g = a[f"{prefix}_log_geometry"][idx]
            gse = a[f"{prefix}_log_geometry_se"][idx]
            param = config.main_nu if name == "heavy_tailed" else config.main_density
            v = verdicts[(f, name, float(param))]
            short = v.status if v.holds else f"fails ({v.reason.split(' at')[0].strip()})"
            rows.append(
                f"| {label} | {title} | {a[f'{prefix}_log_total'][idx]:+.4f} | "
                f"{a[f'{prefix}_log_rescale'][idx]:+.4f} | {g:+.4f} +- {gse:.1g} | "
                f"{a[f'{prefix}_predicted_geometry'][idx]:+.4f} | "
                f"{a[f'{prefix}_cosine_before'][idx]:.3f} -> {a[f'{prefix}_cosine_after'][idx]:.3f}"
                f" | {short} |"
            )
    corr = [f for f, r in enumerate(config.rhos) if r > 0]
    iso = [f for f, r in enumerate(config.rhos) if r == 0]
    resid = max(
        float(np.max(a["density_identity_residual"])), float(np.max(a["heavy_identity_residual"]))
    )
    summ = {
        "gain_table": "\n".join(rows),
        "num_experts": config.num_experts,
        "dim": int(np.prod(config.shape)),
        "main_density": config.main_density,
        "main_nu": config.main_nu,
        "max_identity_residual": resid,
        "num_replicates": config.num_replicates,
        "norm_ratio_main": f"{float(np.mean(a['norm_ratio'][dj])):.5f}",
        "norm_ratio_main_se": f"{float(a['norm_ratio_se'][dj]):.1g}",
        "norm_ratio_main_predicted": f"{float(a['norm_ratio_predicted'][dj]):.5f}",
        "kurtosis_before": float(a["kurtosis_before"]),
        "kurtosis_after_main": float(a["kurtosis_after"][dj]),
        "rht_rescale_gain_main": float(np.exp(a["density_log_rescale"][0, 0, dj])),
    }
    m_rht = DENSITY_METHODS.index("rht")
    m_mag = DENSITY_METHODS.index("magnitude_prune")
    summ["rht_vs_magnitude_max_geometry_diff"] = float(
        np.max(np.abs(a["density_log_geometry"][:, m_rht] - a["density_log_geometry"][:, m_mag]))
    )
    if iso:
        f = iso[0]
        not_identity_d = np.asarray(config.densities) < 1.0
        not_identity_nu = np.isfinite(np.asarray(config.nus))
        geo = np.concatenate(
            [
                a["density_log_geometry"][f][:, not_identity_d].reshape(-1),
                a["heavy_log_geometry"][f][not_identity_nu],
            ]
        )
        summ["isotropic_max_geometry_gain"] = float(np.max(geo))
        summ["isotropic_min_geometry_gain"] = float(np.min(geo))
        summ["isotropic_rht_geometry_main"] = float(a["density_log_geometry"][f, m_rht, dj])
        summ["isotropic_num_holds"] = int(
            np.sum(a["density_verdict_code"][f][:, not_identity_d] == 0)
            + np.sum(a["heavy_verdict_code"][f][not_identity_nu] == 0)
        )
        summ["isotropic_num_tested"] = int(
            len(DENSITY_METHODS) * np.sum(not_identity_d) + np.sum(not_identity_nu)
        )
    if corr:
        f = corr[0]
        m_dare = DENSITY_METHODS.index("dare")
        summ["correlated_rho"] = float(config.rhos[f])
        summ["correlated_rht_geometry_main"] = float(a["density_log_geometry"][f, m_rht, dj])
        summ["correlated_rht_geometry_main_se"] = float(a["density_log_geometry_se"][f, m_rht, dj])
        summ["correlated_rht_main_verdict"] = verdicts[(f, "rht", float(config.main_density))]
        summ["correlated_rht_geometry_pred"] = float(a["density_predicted_geometry"][f, m_rht, dj])
        summ["correlated_dare_geometry_main"] = float(a["density_log_geometry"][f, m_dare, dj])
        summ["correlated_dare_geometry_pred"] = float(
            a["density_predicted_geometry"][f, m_dare, dj]
        )
        summ["correlated_heavy_geometry_main"] = float(a["heavy_log_geometry"][f, nj])
        summ["correlated_heavy_geometry_pred"] = float(a["heavy_predicted_geometry"][f, nj])
        d0 = int(np.argmin(config.densities))
        summ["min_density"] = float(config.densities[d0])
        summ["correlated_rht_geometry_min_density"] = float(a["density_log_geometry"][f, m_rht, d0])
        summ["correlated_rht_geometry_min_density_pred"] = float(
            a["density_predicted_geometry"][f, m_rht, d0]
        )
        summ["correlated_rht_rescale_min_density"] = float(a["density_log_rescale"][f, m_rht, d0])
        relevant = [
            f"{name} {p:g}"
            for (ff, name, p), v in sorted(verdicts.items())
            if ff == f and v == "holds"
        ]
        summ["correlated_holds"] = ", ".join(relevant) or "none"
        summ["correlated_rht_rescale_share"] = float(
            a["density_log_rescale"][f, m_rht, dj] / a["density_log_total"][f, m_rht, dj]
        )
    curves = a["curve_coverage"]
    ratio = curves[:, 1:] / curves[0:1, 1:]  # n >= 2 (w_1 = 0 for a hull)
    summ["curve_ratio_spread"] = float(np.max(np.ptp(ratio[1:], axis=1)))
    return summ


main = experiment_main(NAME, __doc__, run, RHTCoverageConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
