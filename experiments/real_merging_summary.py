r"""The analysis of :mod:`experiments.real_merging`: curves, tests, n*, verdicts, Hessian.

Takes the per-path results of the merges (``[S, N]`` curves per operator and expert set)
and the width of the same paths, and returns ``(arrays, summary)`` for the results files:
paired curves, Holm concavity tests, :math:`n^\star` predicted (width) and observed
(performance) under each definition, paired RHT comparisons, the 1/k law, and the
verdicts of the empirical hypotheses as :class:`~mergetheory.verdict.Verdict` objects
(rules in :mod:`mergetheory.analysis.bridge_verdicts`). The Hessian part estimates the base
loss's spectrum by stochastic Lanczos quadrature and the kinematic :math:`n^\star`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mergetheory.analysis import (
    N_STAR_DEFINITIONS,
    compare_n_star,
    concavity_test,
    effect_sign_verdict,
    forecast_verdict,
    hessian_spectrum,
    interval_verdict,
    n_star,
    nstar_agreement_verdict,
    paired_curve,
    paired_difference,
    performance_concavity_verdict,
    sublevel_statistical_dimension,
)
from mergetheory.theory.scaling_law import three_point_forecast
from mergetheory.theory.threshold import threshold_kinematic

__all__ = ["RHT_COMPARISONS", "analyse", "fmt_nstar", "hessian_summary", "tag"]

# (a, b) pairs compared as a - b on the same paths; C5 reads the ones against TIES
RHT_COMPARISONS = (
    ("rht", "ties"),
    ("rht", "average"),
    ("rht@norm", "ties@norm"),
    ("rht@norm", "average@norm"),
    ("rht[AB]", "ties[AB]"),
)


def tag(label: str) -> str:
    """Results key of a label (``rht@norm`` -> ``rht_at_norm``, ``rht[AB]`` -> ``rht_ab``)."""
    return label.replace("@", "_at_").replace("[AB]", "_ab")


def _try_n_star(curve, definition: str, kappa: float):
    """``n_star`` or ``None`` where the definition is undefined (utility, first gain <= 0)."""
    try:
        return n_star(curve, definition, kappa=kappa)
    except ValueError:
        return None


def _nstar_row(out) -> list[float]:
    """``[n*, ci_low, ci_high, censored]`` (NaN when undefined)."""
    if out is None:
        return [np.nan] * 4
    return [out.n_star, out.ci_low, out.ci_high, float(out.censored)]


def fmt_nstar(out) -> str:
    """``n* [lo, hi]`` with ``>=`` on censored values; a phrase when undefined."""
    if out is None:
        return "undefined (first gain <= 0)"
    hi = f">={out.ci_high}" if out.censored else f"{out.ci_high}"
    star = f">={out.n_star}" if out.censored else f"{out.n_star}"
    return f"{star} [{out.ci_low}, {hi}]"


def _loss_curve(res: dict, higher_is_better: bool) -> np.ndarray:
    """``[S, N]`` all-task loss: bits/byte as is, accuracy as error rate."""
    m = res["metric"].mean(axis=2)
    return 1.0 - m if higher_is_better else m


def _operator_summary(p: str, res: dict, wc, config, higher_is_better: bool, evidence: dict):
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    for k in ("metric", "perf_merged", "perf_all", "tuned_scale"):
        arrays[f"{p}_{k}"] = res[k]
    if not np.all(np.isnan(res["tuned_scale"])):
        summary[f"{p}_tuned_scale"] = ", ".join(f"{v:.2g}" for v in res["tuned_scale"])
    pa, pm = paired_curve(res["perf_all"]), paired_curve(res["perf_merged"])
    ctest = concavity_test(pa, alpha=config.alpha)
    evidence["concavity"].append(ctest)
    summary[f"{p}_perf_merged_n1"] = float(pm.mean[0])
    summary[f"{p}_perf_merged_nN"] = f"{pm.mean[-1]:.3f} +- {pm.stderr[-1]:.3f}"
    summary[f"{p}_perf_all_nN"] = f"{pa.mean[-1]:.3f} +- {pa.stderr[-1]:.3f}"
    summary[f"{p}_perf_concavity"] = (
        f"{ctest.verdict} ({ctest.num_concave} concave, {ctest.num_convex} convex "
        f"of {ctest.ns.size})"
    )
    rows = []
    for definition in N_STAR_DEFINITIONS:
        pred = _try_n_star(wc, definition, config.kappa)
        obs = _try_n_star(pa, definition, config.kappa)
        key = f"{p}_nstar_{definition}"
        summary[key + "_pred"], summary[key + "_obs"] = fmt_nstar(pred), fmt_nstar(obs)
        cmp = compare_n_star(wc, pa, definition, kappa=config.kappa)
        summary[key + "_agree"] = "n/a" if cmp is None else ("yes" if cmp.overlap else "no")
        if cmp is not None and definition == "gain_ratio":
            evidence["nstar"].append(cmp)
        rows.append(_nstar_row(pred) + _nstar_row(obs))
    arrays[f"{p}_nstar"] = np.asarray(rows, np.float64)  # [definition, 8]
    loss = _loss_curve(res, higher_is_better)
    n_max = loss.shape[1]
    lm, lse = loss.mean(0), loss.std(0, ddof=1) / np.sqrt(loss.shape[0])
    arrays[f"{p}_loss"] = loss
    fit_ks = tuple(k for k in config.fit_ks if k <= n_max)
    if len(fit_ks) >= 3 and n_max > max(fit_ks):
        fc = three_point_forecast(np.arange(1, n_max + 1), lm, fit_ks=fit_ks)
        summary[f"{p}_law_max_abs_error"] = fc.max_abs_error
        summary[f"{p}_law_max_rel_error"] = fc.max_rel_error
        summary[f"{p}_law_noise"] = float(np.max(lse))
        arrays[f"{p}_law_forecast"] = fc.forecast
    else:  # too few k to fit on fit_ks and forecast another k
        for k in ("max_abs_error", "max_rel_error", "noise"):
            summary[f"{p}_law_{k}"] = f"n/a (N = {n_max})"
    return arrays, summary


def analyse(
    mod: str, higher_is_better: bool, results: dict, widths: dict, config
) -> tuple[dict, dict]:
    """Curves, tests, n* and verdicts of one modality (module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    evidence: dict[str, list] = {"concavity": [], "nstar": [], "rht": []}
    for set_name, ops in results.items():
        pre = f"{mod}_{set_name}"
        wc = paired_curve(widths[set_name]["width"])
        arrays[f"{pre}_width"] = widths[set_name]["width"]
        arrays[f"{pre}_statdim"] = widths[set_name]["statdim"]
        wtest = concavity_test(wc, alpha=config.alpha)
        summary[f"{pre}_width_concavity"] = (
            f"{wtest.verdict} ({wtest.num_concave}/{wtest.ns.size} steps concave, "
            f"{wtest.num_convex} convex)"
        )
        summary[f"{pre}_width_growth"] = float(wc.mean[-1] / wc.mean[0])
        for label, res in ops.items():
            a, s = _operator_summary(
                f"{pre}_{tag(label)}", res, wc, config, higher_is_better, evidence
            )
            arrays.update(a)
            summary.update(s)
        n_max = wc.mean.size
        for a, b in RHT_COMPARISONS:
            if a not in ops or b not in ops:
                continue
            for curve in ("perf_merged", "perf_all"):
                d = paired_difference(ops[a][curve], ops[b][curve], alpha=config.alpha)
                name = f"{pre}_{tag(a)}_vs_{tag(b)}_{curve}"
                arrays[name + "_mean"], arrays[name + "_stderr"] = d.mean, d.stderr
                arrays[name + "_avg"] = np.asarray([d.avg, d.avg_stderr])
                summary[name] = (
                    f"{d.avg:+.3f} +- {d.avg_stderr:.3f} (better at {d.num_better}, "
                    f"worse at {d.num_worse} of {n_max - 1} n, Holm)"
                )
                if curve == "perf_merged" and b.startswith("ties"):
                    evidence["rht"].append(d)
    c3 = performance_concavity_verdict(evidence["concavity"])
    c4 = nstar_agreement_verdict(evidence["nstar"])
    c5 = effect_sign_verdict(evidence["rht"])
    summary[f"{mod}_verdict_c3"], summary[f"{mod}_verdict_c4"] = c3, c4
    summary[f"{mod}_verdict_c5"] = c5
    err, noise = (summary.get(f"{mod}_full_average_law_{k}") for k in ("max_abs_error", "noise"))
    if isinstance(err, float):
        summary[f"{mod}_verdict_law"] = forecast_verdict(err, noise)
    else:
        summary[f"{mod}_verdict_law"] = forecast_verdict(np.nan, np.nan)
    return arrays, summary


def hessian_summary(
    mod: str, zoo: Any, loss_fn: Any, widths: dict, config, key, observed: float | None
) -> tuple[dict, dict]:
    """SLQ spectrum of the base loss, the sublevel set's statistical dimension and the
    kinematic n* with it, against the observed n* of the average merge."""
    spec = hessian_spectrum(
        key,
        loss_fn,
        zoo.base_params,
        num_probes=config.hessian_probes,
        num_steps=config.hessian_steps,
    )
    base_loss = float(loss_fn(zoo.base_params))
    radius = float(np.median(np.sqrt(np.diag(widths["full"]["gram"]))))
    eps = config.eps_fraction * base_loss
    arrays = {f"{mod}_hessian_nodes": spec.nodes, f"{mod}_hessian_weights": spec.weights}
    summary: dict[str, Any] = {
        f"{mod}_num_params": spec.dim,
        f"{mod}_hessian_max_eig": float(spec.nodes.max()),
        f"{mod}_hessian_min_eig": float(spec.nodes.min()),
        f"{mod}_eps": eps,
        f"{mod}_radius": radius,
    }
    ms = []
    for factor in (0.1, 1.0, 10.0):
        m = sublevel_statistical_dimension(spec, eps=eps * factor, radius=radius)
        ms.append((m.mean, m.stderr))
    arrays[f"{mod}_m_eff"] = np.asarray(ms)
    m_eff = ms[1][0]
    summary[f"{mod}_m_eff"] = f"{ms[1][0]:.4g} +- {ms[1][1]:.2g}"
    summary[f"{mod}_m_eff_range"] = f"{ms[0][0]:.4g} .. {ms[2][0]:.4g}"
    dc = paired_curve(widths["full"]["statdim"])
    kin = threshold_kinematic(dc.mean, delta_stderr=dc.stderr, m=m_eff, ambient_dim=spec.dim)
    summary[f"{mod}_kinematic_nstar"] = fmt_nstar(kin.threshold)
    summary[f"{mod}_kinematic_gap"] = float(kin.lower_edge - m_eff - dc.mean[-1])
    summary[f"{mod}_verdict_kinematic"] = interval_verdict(kin.threshold, observed)
    return arrays, summary
