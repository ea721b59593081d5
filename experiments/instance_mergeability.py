r"""Mergeability at the paper's own unit: one LoRA update per probe instance (reconstruction).

The per-instance setting of Rahamim et al. ("Will it Merge?", arXiv 2601.06672) on the
byte-level language model of the expert zoo (:mod:`mergetheory.models.zoo`, loaded from
its cache under ``<out-dir>/zoo``; ``make reproduce`` builds it in ``real_merging``
first). Construction and design choices: ``docs/instance_mergeability.md``.

1. **Probe** (:mod:`mergetheory.models.probe`): ``num_candidates`` multiple-choice
   instances from the zoo's expert families (text the base never saw): a ``prefix``-byte
   prefix, the true ``continuation``-byte continuation among ``num_choices`` choices from
   the same file, scored by the summed log-probability of the choice. The instances the
   base gets wrong are kept, with :math:`\Delta_\text{base} = p_\text{top} - p_\text{label}`
   (:math:`p` = softmax of the scores over the choices) and the unsaturated score gap
   :math:`s_\text{top} - s_\text{label}` (nats).
2. **One LoRA per instance** (:mod:`mergetheory.models.instance_lora`): rank ``r`` on the
   last block's ``mlp_fc1``, trained on the instance's true text until it is fixed by
   ``stop_margin`` nats, all instances under one ``vmap``; the fixed ones form the pool.
3. **Estimator** (:mod:`mergetheory.instance_mergeability`, partition design, the same
   partitions for every operator): :math:`\hat S` at ``M = num_partners``,
   ``N = num_trials`` under KnOTS, TIES and the mean; the binomial null; a stability sweep
   over ``M`` in ``sweep_partners`` (at ``N``) and ``N`` in ``sweep_trials`` (at ``M``),
   fresh draws, against the reference scores.
4. **Dominance**: Spearman :math:`\rho` of :math:`\hat S` with :math:`\Delta_\text{base}`,
   :math:`\|\Delta W\|_F` and :math:`\sigma_\max(\Delta W)`, and the partial Spearman of
   :math:`\hat S` and :math:`\Delta_\text{base}` given the two (rank regression), with
   percentile intervals from a *cluster* bootstrap over source files (and, as a check,
   over families). The same statistics (reference operator, ``M``, ``N``) for the
   instances fixed at each extra rank of ``rank_sweep``
   (:mod:`experiments.instance_rank_sweep`). Weaker vs stronger operators: paired
   differences of these effects between the mean, TIES and KnOTS, the same files resampled
   for all three (:func:`experiments.instance_operators.operator_contrast`).
5. **Locality**: the updates in the top score level merged with ``locality_partners``
   partners drawn from each score bin; survival per bin.
6. **Per-task level**: the zoo's LoRA task experts, :math:`\hat S` at ``task_partners``
   (retained gain in bits per byte) against the base's bits per byte on the task.
7. **Weighted merge**: ``base_knowledge_weighted`` against the mean, and the same weights
   inside KnOTS against plain KnOTS, on random sets of task experts, temperature chosen on
   the val split, reported on test (:func:`experiments.instance_operators.weighted_merge`).

All keys derive from ``config.seed``. Output ``<out-dir>/instance_mergeability.npz`` +
``.json`` (``summary`` feeds ``paper/sections/instance_mergeability.md``).

Run: ``python -m experiments.instance_mergeability [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import run_experiment
from experiments.instance_operators import operator_contrast, weighted_merge, weighted_summary
from experiments.instance_rank_sweep import (
    PREDICTORS,
    dominance_stats,
    dominance_verdicts,
    rank_sweep,
    update_predictors,
)
from mergetheory.instance_mergeability import (
    LoraSurvivalProblem,
    bin_partner_survival,
    partition_mergeability,
)
from mergetheory.mergeability import binomial_null_test
from mergetheory.models.corpus import stdlib_root
from mergetheory.models.instance_lora import InstanceLoraSpec, train_instance_loras
from mergetheory.models.probe import (
    choice_probabilities,
    choice_scores,
    make_probe,
    probe_features,
    probe_survival,
)
from mergetheory.models.zoo import build_zoo, zoo_spec
from mergetheory.stats import grouped_bootstrap, hypothesis_verdict

NAME = "instance_mergeability"
RUN_AFTER = ("real_merging",)  # reuse the language zoo that real_merging builds


class InstanceMergeabilityConfig(NamedTuple):
    r"""Frozen configuration (see the module docstring).

    Attributes:
      seed: the one integer every key derives from.
      zoo_size: the language zoo preset whose base model is probed.
      zoo_seed: the zoo's seed.
      num_candidates: instances screened (the base's wrong ones are trained).
      prefix, continuation, num_choices, max_per_file: the probe (:func:`make_probe`).
      lora: per-instance LoRA training (:class:`InstanceLoraSpec`).
      operators: registry names; the first is the reference (the paper's KnOTS).
      operator_hparams: ``((name, ((hparam, value), ...)), ...)`` overrides.
      num_partners: ``M`` of the reference setting.
      num_trials: ``N`` of the reference setting.
      sweep_partners: ``M`` values of the stability sweep (at ``N = num_trials``).
      sweep_trials: ``N`` values of the stability sweep (at ``M = num_partners``).
      locality_partners: ``M`` of the locality test (bins are small).
      locality_trials: ``N`` of the locality test.
      locality_level: focal updates have :math:`\hat S \ge` this.
      task_partners: ``M`` of the per-task level (the zoo's LoRA task experts).
      task_trials: ``N`` of the per-task level.
      weighted_temperatures: grid of the weighted merges, linear and KnOTS (chosen on val).
      weighted_tasks: experts per weighted-merge replicate (a random subset).
      weighted_replicates: random subsets (the replicates of the intervals).
      num_resamples: bootstrap replicates.
      confidence: interval coverage.
      min_fixed: fewer fixed instances than this is an error (the issue asks >= 300).
      rank_sweep: extra LoRA ranks (``alpha = 2r``), reference operator and setting only
        (:func:`experiments.instance_rank_sweep.rank_sweep`).
    """

    seed: int = 20261203
    zoo_size: str = "default"
    zoo_seed: int = 0
    num_candidates: int = 800
    prefix: int = 48
    continuation: int = 16
    num_choices: int = 8
    max_per_file: int = 16
    lora: InstanceLoraSpec = InstanceLoraSpec(
        rank=4, alpha=8.0, learning_rate=1e-2, max_steps=60, check_every=5, stop_margin=1.0
    )
    operators: tuple[str, ...] = ("knots", "ties", "average")
    operator_hparams: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
        ("knots", (("density", 0.2), ("scale", 1.0))),
        ("ties", (("density", 0.2), ("scale", 1.0))),
    )
    num_partners: int = 50
    num_trials: int = 5
    sweep_partners: tuple[int, ...] = (10, 25)
    sweep_trials: tuple[int, ...] = (1, 3)
    locality_partners: int = 10
    locality_trials: int = 5
    locality_level: float = 0.8
    task_partners: int = 10
    task_trials: int = 5
    weighted_temperatures: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    weighted_tasks: int = 8
    weighted_replicates: int = 8
    num_resamples: int = 2000
    confidence: float = 0.95
    min_fixed: int = 300
    rank_sweep: tuple[int, ...] = (1, 16)


QUICK_CONFIG = InstanceMergeabilityConfig(
    zoo_size="tiny",
    num_candidates=96,
    prefix=20,
    continuation=8,
    max_per_file=48,
    lora=InstanceLoraSpec(rank=2, alpha=4.0, learning_rate=2e-2, max_steps=30, check_every=5),
    num_partners=8,
    num_trials=3,
    sweep_partners=(4,),
    sweep_trials=(1,),
    locality_partners=3,
    locality_trials=2,
    locality_level=0.6,
    task_partners=2,
    task_trials=2,
    weighted_temperatures=(0.1, 1.0),
    weighted_tasks=3,
    weighted_replicates=3,
    num_resamples=200,
    min_fixed=20,
    rank_sweep=(1,),
)


def _loadavg() -> list[float]:
    return [float(x) for x in os.getloadavg()]


def _hparams(config: InstanceMergeabilityConfig, name: str) -> dict[str, Any] | None:
    found = dict(config.operator_hparams).get(name)
    return None if found is None else dict(found)


def _task_stats(base_bpb: np.ndarray, retained: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Spearman of the base's bits per byte with the retained gain and the merged bits."""
    from scipy import stats

    ranks = stats.rankdata(np.stack([base_bpb, retained, raw]), axis=1)
    return np.corrcoef(ranks)[0, 1:]


def _level_means(values: np.ndarray, s: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Mean of ``values`` at each score level ``0, 1/N, ..., 1`` (NaN where empty)."""
    out = np.full(levels.size, np.nan)
    for j, lv in enumerate(levels):
        sel = np.isclose(s, lv)
        if sel.any():
            out[j] = values[sel].mean()
    return out


def _task_level(zoo: Any, config: InstanceMergeabilityConfig, key: Any) -> dict[str, Any]:
    r"""Per-task level: the zoo's LoRA task experts, :math:`\hat S` at ``task_partners``.

    The score of task :math:`t` in a merge is its retained gain
    :math:`(b_0 - b_\text{merged}) / (b_0 - b_t)` in bits per byte on its test windows
    (1 = its own expert, 0 = the base), averaged over ``task_trials`` partition trials; the
    raw merged bits per byte are kept too. Same partitions for every operator.
    """
    from mergetheory._types import LoraFactors
    from mergetheory.instance_mergeability import merge_lora_tree, partition_estimate
    from mergetheory.models.zoo_eval import evaluate, params_from_delta

    lf = zoo.lora_factors
    num = len(zoo.task_names)
    base_b = np.asarray(zoo.base_metric, np.float64)
    gain = base_b - np.asarray(zoo.lora_expert_metric, np.float64)
    m = min(config.task_partners, num - 1)
    merged_b = np.zeros((len(config.operators), config.task_trials, num))
    for k, name in enumerate(config.operators):
        hp = _hparams(config, name)

        def score(groups: np.ndarray, kk: Any, name: str = name, hp: Any = hp) -> np.ndarray:
            out = np.zeros(groups.shape)
            for g, members in enumerate(groups):
                sub = {
                    p: LoraFactors(B=f.B[members], A=f.A[members], scaling=f.scaling)
                    for p, f in lf.items()
                }
                delta = merge_lora_tree(name, sub, jr.fold_in(kk, g), hp)
                out[g] = evaluate(zoo, params_from_delta(zoo, delta), tasks=members)
            return out

        est = partition_estimate(key, num, score, num_partners=m, num_trials=config.task_trials)
        merged_b[k] = est.bits
    retained = (base_b - merged_b) / gain
    return {"task_partners": m, "task_merged_bpb": merged_b, "task_retained": retained,
            "task_base_bpb": base_b, "task_gain": gain}  # fmt: skip


def run(
    config: InstanceMergeabilityConfig, args: Any
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the experiment; return ``(arrays, summary)`` (see the module docstring)."""
    progress = not getattr(args, "no_progress", False)
    timings: dict[str, Any] = {"loadavg_start": _loadavg()}
    k_train, k_est, k_sweep, k_loc, k_boot = jr.split(jr.key(config.seed), 5)
    stages = tqdm(total=9, desc=NAME, unit="stage", disable=not progress)

    # 1. base model and probe -------------------------------------------------------------
    t0 = time.perf_counter()
    spec = zoo_spec("language", config.zoo_size, config.zoo_seed)
    zoo = build_zoo(spec, cache_dir=args.out_dir / "zoo", progress=progress)
    timings["zoo_loaded_from_cache"] = bool(zoo.info.get("loaded_from_cache", False))
    timings["zoo_s"] = time.perf_counter() - t0
    params, heads = zoo.base_params, spec.num_heads
    t0 = time.perf_counter()
    probe = make_probe(
        stdlib_root(), families=spec.tasks, num_instances=config.num_candidates,
        seed=config.seed + 1, prefix=config.prefix, continuation=config.continuation,
        num_choices=config.num_choices, max_per_file=config.max_per_file,
    )  # fmt: skip
    feats = probe_features(params, probe.tokens, num_heads=heads, prefix=config.prefix)
    score_fn = jax.jit(functools.partial(choice_scores, num_heads=heads), static_argnums=())
    base_scores = np.asarray(score_fn(params, feats, probe.targets, None))
    wrong = np.flatnonzero(base_scores.argmax(-1) != probe.label)
    timings["probe_s"] = time.perf_counter() - t0
    stages.update()

    # 2. one LoRA per wrong instance ------------------------------------------------------
    t0 = time.perf_counter()
    out = train_instance_loras(
        k_train, params, feats[wrong], probe.targets[wrong], probe.label[wrong], config.lora,
        num_heads=heads, batch=256,
    )  # fmt: skip
    timings["train_s"] = time.perf_counter() - t0
    timings["loadavg_train"] = _loadavg()
    keep = wrong[out.fixed]
    if keep.size < config.min_fixed:
        raise RuntimeError(f"{NAME}: only {keep.size} instances fixed (< {config.min_fixed})")
    b, a = jnp.asarray(out.B[out.fixed]), jnp.asarray(out.A[out.fixed])
    gap, frobenius, sigma_max, score_gap = update_predictors(
        out, base_scores[keep], probe.label[keep]
    )
    p_base = np.asarray(choice_probabilities(base_scores[keep]), np.float64)
    p_ft = np.asarray(choice_probabilities(out.scores[out.fixed]), np.float64)
    lab = probe.label[keep]
    delta_trained = p_ft[np.arange(keep.size), lab] - p_base[np.arange(keep.size), lab]
    files, families = probe.file_index[keep], probe.family_index[keep]
    stages.update()

    # 3. S-hat at the reference setting, binomial null, stability sweep ---------------------
    surv = functools.partial(probe_survival, num_heads=heads)
    sargs = (params, feats[keep], jnp.asarray(probe.targets[keep]), jnp.asarray(lab))

    def problem(name: str) -> LoraSurvivalProblem:
        return LoraSurvivalProblem(b, a, out.scaling, name, surv, sargs, _hparams(config, name))

    ops = config.operators
    s_ref = np.zeros((len(ops), keep.size))
    s_err = np.zeros_like(s_ref)
    null = []
    t0 = time.perf_counter()
    num_merges = 0
    for k, name in enumerate(ops):
        est = partition_mergeability(
            k_est, problem(name), num_partners=config.num_partners, num_trials=config.num_trials
        )
        s_ref[k], s_err[k] = est.mean, est.stderr
        num_merges += est.num_merges
        null.append(binomial_null_test(np.round(est.mean * config.num_trials), config.num_trials))
    timings["estimator_s"] = time.perf_counter() - t0
    stages.update()
    t0 = time.perf_counter()
    settings = [(m, config.num_trials) for m in config.sweep_partners]
    settings += [(config.num_partners, n) for n in config.sweep_trials]
    sweep = np.zeros((len(ops), len(settings), keep.size))
    for k, name in enumerate(ops):
        for j, (m, n) in enumerate(settings):
            est = partition_mergeability(
                jr.fold_in(k_sweep, j), problem(name), num_partners=m, num_trials=n
            )
            sweep[k, j] = est.mean
    timings["sweep_s"] = time.perf_counter() - t0
    stages.update()

    # 4. dominance: grouped bootstrap over files (and families) -----------------------------
    t0 = time.perf_counter()
    dom = np.zeros((len(ops), 3, len(PREDICTORS)))  # value, lo, hi (by file)
    dom_family = np.zeros_like(dom)
    stab = np.zeros((len(ops), len(settings)))
    for k in range(len(ops)):
        data = (s_ref[k], gap, frobenius, sigma_max, score_gap)
        for target, groups in ((dom, files), (dom_family, families)):
            e = grouped_bootstrap(
                jr.fold_in(k_boot, k), dominance_stats, data, groups,
                num_resamples=config.num_resamples, confidence=config.confidence,
            )  # fmt: skip
            target[k] = np.stack([e.value, e.ci_low, e.ci_high])
        for j in range(len(settings)):
            from scipy import stats

            stab[k, j] = stats.spearmanr(sweep[k, j], s_ref[k]).statistic
    timings["bootstrap_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # 4a. weaker vs stronger operators, paired over the same files
    contrast_arrays, contrast_summary = operator_contrast(
        jr.fold_in(k_boot, 100), s_ref, ops, (gap, frobenius, sigma_max, score_gap), files,
        num_resamples=config.num_resamples, confidence=config.confidence,
    )  # fmt: skip
    timings["operator_contrast_s"] = time.perf_counter() - t0
    stages.update()
    t0 = time.perf_counter()  # 4b. LoRA rank sweep under the reference operator
    rank_arrays, rank_summary = rank_sweep(
        jr.fold_in(k_est, 2000), config, _hparams(config, ops[0]), surv, params, feats[wrong],
        probe.targets[wrong], probe.label[wrong], base_scores[wrong], probe.file_index[wrong],
        num_heads=heads,
    )  # fmt: skip
    timings["rank_sweep_s"] = time.perf_counter() - t0
    timings["loadavg_rank_sweep"] = _loadavg()
    stages.update()

    # 5. locality (reference operator and the others): top updates x partner bins --------
    t0 = time.perf_counter()
    loc_edges = (0.0, 0.3, 0.7, 1.01)  # bins S <= 0.2 | 0.4-0.6 | >= 0.8 (with N = 5)
    locality = np.full((len(ops), 3), np.nan)
    locality_se = np.full_like(locality, np.nan)
    locality_info = []
    for k, name in enumerate(ops):
        s = s_ref[k]
        bins = [
            np.flatnonzero((s >= lo) & (s < hi))
            for lo, hi in zip(loc_edges[:-1], loc_edges[1:], strict=True)
        ]
        focal = np.flatnonzero(s >= config.locality_level)
        sizes = [int(x.size) for x in bins]
        locality_info.append({"focal": int(focal.size), "bin_sizes": sizes})
        if focal.size < 2 or min(sizes) <= config.locality_partners:
            continue
        rates = bin_partner_survival(
            jr.fold_in(k_loc, k), problem(name), focal, bins,
            num_partners=config.locality_partners, num_trials=config.locality_trials,
        )  # fmt: skip
        locality[k] = rates.mean(1)
        locality_se[k] = rates.std(1, ddof=1) / np.sqrt(focal.size)
    timings["locality_s"] = time.perf_counter() - t0
    stages.update()

    # 6. per-task level on the zoo's LoRA task experts; 7. the weighted merge -------------
    t0 = time.perf_counter()
    k_task, k_weighted, k_task_boot = jr.split(jr.fold_in(k_est, 1000), 3)
    task = _task_level(zoo, config, k_task)
    s_task = task["task_retained"].mean(1)  # [ops, T]
    task_rho = np.zeros((len(ops), 2, 3))  # (retained, raw) x (value, lo, hi)
    for k in range(len(ops)):
        raw = task["task_merged_bpb"][k].mean(0)
        e = grouped_bootstrap(
            jr.fold_in(k_task_boot, k), _task_stats, (task["task_base_bpb"], s_task[k], raw),
            np.arange(s_task.shape[1]), num_resamples=config.num_resamples,
            confidence=config.confidence,
        )  # fmt: skip
        task_rho[k] = np.stack([e.value, e.ci_low, e.ci_high]).T
    timings["task_level_s"] = time.perf_counter() - t0
    stages.update()
    t0 = time.perf_counter()
    weighted = weighted_merge(zoo, config, k_weighted, _hparams(config, "knots"))
    timings["weighted_s"] = time.perf_counter() - t0
    timings["loadavg_end"] = _loadavg()
    stages.update()
    stages.close()

    # summary ----------------------------------------------------------------------------
    levels = np.linspace(0.0, 1.0, config.num_trials + 1)  # the values S-hat can take
    level_gap = np.stack([_level_means(gap, s_ref[k], levels) for k in range(len(ops))])
    level_counts = np.stack(
        [[int(np.isclose(s_ref[k], lv).sum()) for lv in levels] for k in range(len(ops))]
    )
    summary: dict[str, Any] = {
        "num_candidates": int(config.num_candidates),
        "num_wrong": int(wrong.size),
        "base_accuracy": float(1.0 - wrong.size / config.num_candidates),
        "num_fixed": int(keep.size),
        "fixed_fraction": float(keep.size / wrong.size),
        "median_steps": float(np.median(out.steps[out.fixed])),
        "num_files": int(np.unique(files).size),
        "num_families": int(np.unique(families).size),
        "lora_rank": int(config.lora.rank),
        "lora_path": out.path,
        "num_partners": config.num_partners,
        "num_trials": config.num_trials,
        "merges_reference": int(num_merges),
        "median_delta_base": float(np.median(gap)),
        "median_score_gap": float(np.median(score_gap)),
        "locality_partners": config.locality_partners,
        "confidence_pct": int(round(100 * config.confidence)),
        "timings": timings,
        "locality_info": locality_info,
        **rank_summary,
        **contrast_summary,
    }
    for k, name in enumerate(ops):
        summary[f"S_mean_{name}"] = float(s_ref[k].mean())
        summary[f"S_one_{name}"] = int(np.isclose(s_ref[k], 1.0).sum())
        summary[f"S_zero_{name}"] = int(np.isclose(s_ref[k], 0.0).sum())
        summary[f"stderr_mean_{name}"] = float(np.nanmean(s_err[k]))
        summary[f"null_dispersion_{name}"] = null[k].dispersion
        summary[f"null_log10_p_{name}"] = null[k].log10_p_value
        for j, pred in enumerate(PREDICTORS):
            v, lo, hi = dom[k, :, j]
            summary[f"rho_{pred}_{name}"] = float(v)
            summary[f"rho_{pred}_{name}_lo"] = float(lo)
            summary[f"rho_{pred}_{name}_hi"] = float(hi)
            summary[f"rho_{pred}_{name}_fam_lo"] = float(dom_family[k, 1, j])
            summary[f"rho_{pred}_{name}_fam_hi"] = float(dom_family[k, 2, j])
        for rule, status in dominance_verdicts(dom[k]).items():  # H-BK: rho < 0, etc.
            summary[f"verdict_{rule}_{name}"] = status
        for j, (m, n) in enumerate(settings):
            summary[f"stability_{name}_M{m}_N{n}"] = float(stab[k, j])
        summary[f"locality_{name}"] = [float(x) for x in locality[k]]
        for j, kind in enumerate(("retained", "raw")):
            v, lo, hi = task_rho[k, j]
            summary[f"task_rho_{kind}_{name}"] = float(v)
            summary[f"task_rho_{kind}_{name}_lo"] = float(lo)
            summary[f"task_rho_{kind}_{name}_hi"] = float(hi)
        summary[f"task_S_mean_{name}"] = float(s_task[k].mean())
        # H-BK at the task level: more base bits (knows less) -> less retained gain
        summary[f"verdict_task_{name}"] = hypothesis_verdict(
            task_rho[k, 0, 1], task_rho[k, 0, 2], predicted_sign=-1
        ).status
    summary["task_partners"] = int(task["task_partners"])
    summary["num_tasks"] = int(s_task.shape[1])
    summary.update(weighted_summary(weighted, config.confidence))
    summary["weighted_replicates"] = int(config.weighted_replicates)
    summary["weighted_tasks"] = int(min(config.weighted_tasks, s_task.shape[1]))
    parts = ("all", "low", "high")
    arrays = {
        "operators": np.array(ops),
        "predictors": np.array(PREDICTORS),
        "levels": levels,
        "s_ref": s_ref,
        "s_stderr": s_err,
        "delta_base": gap,
        "score_gap": score_gap,
        "delta_trained": delta_trained,
        "frobenius": frobenius,
        "sigma_max": sigma_max,
        "file_index": files,
        "family_index": families,
        "steps": out.steps[out.fixed],
        "dominance": dom,
        "dominance_family": dom_family,
        "level_delta_base": level_gap,
        "level_counts": level_counts,
        "null_observed": np.stack([t.observed for t in null]),
        "null_expected": np.stack([t.expected for t in null]),
        "sweep_settings": np.array(settings),
        "sweep": sweep,
        "stability": stab,
        "locality": locality,
        "locality_stderr": locality_se,
        "locality_edges": np.array(loc_edges),
        "task_names": np.array(zoo.task_names),
        "task_base_bpb": task["task_base_bpb"],
        "task_gain": task["task_gain"],
        "task_merged_bpb": task["task_merged_bpb"],
        "task_retained": task["task_retained"],
        "task_rho": task_rho,
        "weighted_chosen_tau": weighted["weighted_chosen_tau"],
        "weighted_diff": np.stack([weighted["diff"]["weighted_minus_mean"][p] for p in parts]),
        "weighted_knots_chosen_tau": weighted["weighted_knots_chosen_tau"],
        **{
            f"{c}_diff": np.stack([d[p] for p in parts])
            for c, d in weighted["diff"].items()
            if c != "weighted_minus_mean"
        },
        **contrast_arrays,
        **rank_arrays,
    }
    return arrays, summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_experiment(NAME, __doc__, run, InstanceMergeabilityConfig(), QUICK_CONFIG, argv)


if __name__ == "__main__":
    sys.exit(main())
