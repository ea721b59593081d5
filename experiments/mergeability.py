r"""Mergeability of digits experts and the base-knowledge hypothesis (reconstruction).

Pipeline (all keys from ``config.seed``: one key per replicate, split by purpose into
``train, partners, weighted``, and one key for the bootstraps), repeated for
``num_replicates`` independent base models:

1. train a small Flax MLP base model on an unbalanced subset of scikit-learn's digits and
   one expert per class (:func:`mergetheory.models.train.train_digits_experts`); save all
   of them as orbax checkpoints under ``<out-dir>/checkpoints/rep_<r>`` and **reload** them through
   :func:`mergetheory.io.task_vectors_from_checkpoints` (so the real load path,
   lineage check included, is what the analysis uses);
2. base knowledge of task ``t`` = the base model's accuracy on class ``t``'s test images;
3. mergeability :math:`\hat S(\tau_t)` (:func:`mergetheory.mergeability.mergeability`,
   ``M = num_partners`` random partners, ``N = num_trials`` trials, the *same* partner
   draws for every operator) for ``average``, ``task_arithmetic`` and ``ties``, at the
   example level (0/1 per test image) and the task level (accuracy);
4. H-BK (task level): Spearman / Pearson of base accuracy with :math:`\hat S`, with a
   bootstrap CI over experts; also with the *retained gain*
   :math:`(\hat S - \mathrm{acc}_0)/(\mathrm{acc}_t - \mathrm{acc}_0)` (raw :math:`\hat S`
   is partly base accuracy itself, so the gain version is the stricter test);
5. H-BK (example level, the PopQA analogue): on test images the base gets wrong and the
   expert gets right ("fixed" examples), Spearman of
   :math:`\Delta_\text{base} = p_0(\text{top}) - p_0(y)` with the example's :math:`\hat S`
   (predicted negative), and the binomial null of the success counts;
6. H-MOD: change of the base-knowledge correlation from ``average`` to the other
   operators (paired bootstrap);
7. the base-knowledge weighted merge of all ``T`` experts over a temperature grid,
   against the plain mean: accuracy on the tasks the base knows least / best (halves
   split at each replicate's median base accuracy).

Correlations pool the experts of all replicates (``R * T`` points; bootstrap over
experts); per-replicate Spearman values are saved too.

Output: ``<out-dir>/mergeability.npz`` + ``.json``; the scalars the paper quotes are in
the sidecar's ``config["summary"]``. Checkpoints in ``<out-dir>/checkpoints`` are not
committed.

Run: ``python -m experiments.mergeability [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from experiments import run_experiment
from mergetheory._types import Key
from mergetheory.io import load_checkpoint, task_vectors_from_checkpoints
from mergetheory.mergeability import (
    base_margin,
    binomial_null_test,
    mergeability,
    moderation_test,
)
from mergetheory.models.mlp import mlp_apply
from mergetheory.models.train import (
    DigitsSpec,
    TaskSet,
    evaluate,
    example_correct,
    predict_proba,
    save_digits_checkpoints,
    train_digits_experts,
)
from mergetheory.stats import bootstrap_correlation, hypothesis_verdict, spearman_correlation

NAME = "mergeability"


class MergeabilityConfig(NamedTuple):
    """Frozen configuration of the mergeability experiment.

    Attributes:
      seed: the one integer every PRNG key derives from.
      num_replicates: independent base models (each with its own class-count assignment,
        data split and ``T = 10`` experts); correlations pool their experts.
      digits: base / expert training (:class:`~mergetheory.models.train.DigitsSpec`).
      operators: registry names; the first is the reference of H-MOD.
      operator_hparams: ``((name, ((hparam, value), ...)), ...)`` overrides of the
        registry's ``default_hparams``.
      num_partners: ``M``.
      num_trials: ``N``.
      num_resamples: bootstrap replicates.
      confidence: CI coverage.
      min_gain: experts whose fine-tuning gain ``acc_t - acc_0`` is below this are left out
        of the retained-gain correlation (the ratio is undefined near 0 gain).
      num_margin_bins: quantile bins of the base margin for the figure's binned means.
      temperatures: grid of the base-knowledge weighted merge.
      headline_temperature: the temperature quoted in the summary (fixed in advance, not
        picked from the grid after the fact).
      weighted_operator: registry name of the weighted merge.
      mean_operator: registry name of its baseline (the plain mean).
    """

    seed: int = 20261123
    num_replicates: int = 3
    digits: DigitsSpec = DigitsSpec()
    operators: tuple[str, ...] = ("average", "task_arithmetic", "ties")
    operator_hparams: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    num_partners: int = 4
    num_trials: int = 32
    num_resamples: int = 2000
    confidence: float = 0.95
    min_gain: float = 0.1
    num_margin_bins: int = 6
    temperatures: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)
    headline_temperature: float = 0.3
    weighted_operator: str = "base_knowledge_weighted"
    mean_operator: str = "average"


QUICK_CONFIG = MergeabilityConfig(
    num_replicates=1,
    digits=DigitsSpec(hidden=(16,), base_steps=150, expert_steps=60, batch_size=32),
    num_trials=8,
    num_resamples=300,
    temperatures=(0.3, 3.0),
)


def _hparams(config: MergeabilityConfig, name: str, op: Any) -> dict[str, Any]:
    hp = dict(op.default_hparams)
    hp.update(dict(dict(config.operator_hparams).get(name, ())))
    return hp


def _split_hparams(op: Any, hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    static = {k: v for k, v in hp.items() if k in op.static_argnames}
    traced = {k: v for k, v in hp.items() if k not in op.static_argnames}
    return traced, static


def _masked_mean(x: np.ndarray, mask: np.ndarray, axis: int = -1) -> np.ndarray:
    return (x * mask).sum(axis) / mask.sum(axis)


def _score(params: Any, i: jax.Array, tasks: TaskSet) -> jax.Array:
    """Per-example 0/1 correctness of ``params`` on task ``i`` (``[E]``, 0 on padding)."""
    pred = jnp.argmax(mlp_apply(params, tasks.x[i]), -1).astype(tasks.y.dtype)
    return (pred == tasks.y[i]) & tasks.mask[i]


def _add(base: Any, update: Any) -> Any:
    return jax.tree.map(lambda b, u: b + u.astype(b.dtype), base, update)


def run_replicate(
    key: Key, config: MergeabilityConfig, ckpt_dir: Path, timings: dict[str, float]
) -> dict[str, np.ndarray]:
    """One base model, its experts and every per-expert measurement (no statistics)."""
    from mergetheory.merge import MERGE_OPERATORS, base_knowledge_weights

    k_train, k_partners, k_weighted = jr.split(key, 3)

    # 1. train, save with orbax, reload through mergetheory.io --------------------------
    t0 = time.perf_counter()
    trained = train_digits_experts(k_train, config.digits)
    base_path, expert_paths = save_digits_checkpoints(ckpt_dir, trained)
    timings["train_s"] = timings.get("train_s", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    theta0 = load_checkpoint(base_path)
    tv = task_vectors_from_checkpoints(base_path, expert_paths)
    timings["reload_s"] = timings.get("reload_s", 0.0) + time.perf_counter() - t0
    tasks = trained.tasks
    mask = np.asarray(tasks.mask)
    num_tasks = mask.shape[0]

    # 2. base knowledge, expert accuracy, example-level base margins --------------------
    experts = jax.tree.map(lambda b, t: b[None] + t, theta0, tv)
    base_acc = np.asarray(evaluate(theta0, tasks))
    acc_matrix = np.asarray(jax.vmap(evaluate, (0, None))(experts, tasks))  # [expert, task]
    probs0 = predict_proba(theta0, tasks.x)
    base_correct = np.asarray(example_correct(theta0, tasks))
    expert_correct = np.asarray(
        jax.vmap(lambda p, i: _score(p, i, tasks))(experts, jnp.arange(num_tasks))
    )

    # 3. mergeability per operator (same partner draws for all: common random numbers) -----
    num_ops = len(config.operators)
    s_example = np.zeros((num_ops,) + mask.shape)
    s_task = np.zeros((num_ops, num_tasks))
    s_task_stderr = np.zeros((num_ops, num_tasks))
    for k, name in enumerate(config.operators):
        op = MERGE_OPERATORS[name]
        traced, static = _split_hparams(op, _hparams(config, name, op))
        t0 = time.perf_counter()
        est = mergeability(
            k_partners,
            tv,
            theta0,
            _score,
            op.fn,
            num_partners=config.num_partners,
            num_trials=config.num_trials,
            score_args=tasks,
            merge_hparams=traced,
            static_hparams=static,
        )
        scores = np.asarray(est.scores)  # [T, N, E]
        per_trial = _masked_mean(scores, mask[:, None, :])  # [T, N] accuracy per trial
        s_example[k] = np.asarray(est.mean)
        s_task[k] = per_trial.mean(1)
        s_task_stderr[k] = per_trial.std(1, ddof=1) / np.sqrt(config.num_trials)
        key_t = f"mergeability_{name}_s"
        timings[key_t] = timings.get(key_t, 0.0) + time.perf_counter() - t0

    # 7. base-knowledge weighted merge of all T experts vs the plain mean ----------------
    w_op = MERGE_OPERATORS[config.weighted_operator]
    mean_op = MERGE_OPERATORS[config.mean_operator]
    w_hp = {
        k: v
        for k, v in _hparams(config, config.weighted_operator, w_op).items()
        if k not in ("temperature", "base_accuracy")
    }
    temps = config.temperatures
    kw = jr.split(k_weighted, len(temps) + 1)
    mean_merged = mean_op.fn(tv, kw[0], **_hparams(config, config.mean_operator, mean_op))
    acc_mean_merge = np.asarray(evaluate(_add(theta0, mean_merged), tasks))
    acc_weighted = np.zeros((len(temps), num_tasks))
    weights = np.zeros((len(temps), num_tasks))
    base_acc_arr = jnp.asarray(base_acc, jnp.float32)
    for j, temp in enumerate(temps):
        merged = w_op.fn(tv, kw[j + 1], base_accuracy=base_acc_arr, temperature=temp, **w_hp)
        acc_weighted[j] = np.asarray(evaluate(_add(theta0, merged), tasks))
        weights[j] = np.asarray(base_knowledge_weights(base_acc_arr, temperature=temp))

    return {
        "base_acc": base_acc,
        "expert_acc": np.diag(acc_matrix).copy(),
        "acc_matrix": acc_matrix,
        "base_class_counts": np.asarray(trained.base_class_counts),
        "s_task": s_task,
        "s_task_stderr": s_task_stderr,
        "s_example": s_example,
        "mask": mask,
        "fixed": expert_correct & ~base_correct,  # examples fine-tuning fixed
        "base_margin": np.asarray(base_margin(probs0, tasks.y)),
        "weights": weights,
        "acc_weighted": acc_weighted,
        "acc_mean_merge": acc_mean_merge,
        "base_losses": np.asarray(trained.base_losses),
        "expert_losses": np.asarray(trained.expert_losses),
    }


def run(config: MergeabilityConfig, out_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Run the experiment; return ``(arrays, summary)`` (see the module docstring)."""
    key = jr.key(config.seed)
    k_reps, k_boot = jr.split(key)
    timings: dict[str, float] = {}
    reps = [
        run_replicate(jr.fold_in(k_reps, r), config, out_dir / "checkpoints" / f"rep_{r}", timings)
        for r in range(config.num_replicates)
    ]
    t_stats = time.perf_counter()
    # per-replicate arrays stacked on a leading replicate axis R; operator axis first
    arr = {name: np.stack([rep[name] for rep in reps]) for name in reps[0]}
    for name in ("s_task", "s_task_stderr", "s_example"):
        arr[name] = np.moveaxis(arr[name], 1, 0)  # [K, R, ...]
    num_ops = len(config.operators)
    base_acc = arr["base_acc"].reshape(-1)  # pooled experts [R T]
    expert_acc = arr["expert_acc"].reshape(-1)
    s_task = arr["s_task"].reshape(num_ops, -1)
    fixed = arr["fixed"]
    boot = dict(num_resamples=config.num_resamples, confidence=config.confidence)
    kb = jr.split(k_boot, 3)

    # 4. H-BK task level + 6. H-MOD (pooled experts, paired bootstrap) -------------------
    corr = {
        m: moderation_test(kb[0], base_acc, s_task, method=m, **boot)
        for m in ("spearman", "pearson")
    }
    per_rep = np.stack(
        [
            np.asarray(spearman_correlation(arr["base_acc"][r], arr["s_task"][:, r]))
            for r in range(config.num_replicates)
        ],
        axis=-1,
    )  # [K, R]
    gain = expert_acc - base_acc
    keep = gain >= config.min_gain
    retained = (s_task - base_acc) / np.where(keep, gain, 1.0)
    corr_gain = (
        moderation_test(kb[1], base_acc[keep], retained[:, keep], method="spearman", **boot)
        if keep.sum() >= 3
        else None
    )

    # 5. example level: fixed examples, base margin, binomial null ---------------------
    s_fixed = arr["s_example"][:, fixed]  # [K, U]
    corr_example = bootstrap_correlation(kb[2], arr["base_margin"][fixed], s_fixed, **boot)
    null_tests = [
        binomial_null_test(np.rint(s_fixed[k] * config.num_trials).astype(int), config.num_trials)
        for k in range(num_ops)
    ]
    # binned means of S over quantile bins of the base margin (for the figure)
    margin_fixed = arr["base_margin"][fixed]
    edges = np.quantile(margin_fixed, np.linspace(0.0, 1.0, config.num_margin_bins + 1))
    which = np.clip(np.searchsorted(edges, margin_fixed, side="right") - 1, 0, len(edges) - 2)
    margin_bin_s = np.stack(
        [
            [
                s_fixed[k][which == b].mean() if np.any(which == b) else np.nan
                for b in range(len(edges) - 1)
            ]
            for k in range(num_ops)
        ]
    )
    margin_bin_center = np.asarray(
        [
            margin_fixed[which == b].mean() if np.any(which == b) else np.nan
            for b in range(len(edges) - 1)
        ]
    )

    # 7. weighted merge: low / high base-knowledge halves within each replicate -----------
    low = arr["base_acc"] <= np.median(arr["base_acc"], axis=1, keepdims=True)  # [R, T]
    high = ~low
    j = config.temperatures.index(config.headline_temperature)
    acc_w = arr["acc_weighted"][:, j]  # [R, T]
    acc_m = arr["acc_mean_merge"]

    def half(a: np.ndarray, m: np.ndarray) -> float:
        return float((a * m).sum() / m.sum())

    weighted_low_by_temp = np.asarray(
        [half(arr["acc_weighted"][:, i], low) for i in range(len(config.temperatures))]
    )
    weighted_high_by_temp = np.asarray(
        [half(arr["acc_weighted"][:, i], high) for i in range(len(config.temperatures))]
    )

    # summary -------------------------------------------------------------------------
    summary: dict[str, Any] = {
        "num_replicates": config.num_replicates,
        "num_experts": int(base_acc.size),
        "num_partners": config.num_partners,
        "num_trials": config.num_trials,
        "confidence_pct": int(round(100 * config.confidence)),
        "base_acc_min": float(base_acc.min()),
        "base_acc_max": float(base_acc.max()),
        "base_acc_mean": float(base_acc.mean()),
        "expert_acc_mean": float(expert_acc.mean()),
        "num_fixed_examples": int(fixed.sum()),
        "num_gain_experts": int(keep.sum()),
    }
    for k, name in enumerate(config.operators):
        sp, pe = corr["spearman"].correlation, corr["pearson"].correlation
        summary[f"S_mean_{name}"] = float(s_task[k].mean())
        summary[f"spearman_{name}"] = float(sp.value[k])
        summary[f"spearman_{name}_lo"] = float(sp.ci_low[k])
        summary[f"spearman_{name}_hi"] = float(sp.ci_high[k])
        summary[f"spearman_{name}_rep_min"] = float(np.nanmin(per_rep[k]))
        summary[f"spearman_{name}_rep_max"] = float(np.nanmax(per_rep[k]))
        summary[f"pearson_{name}"] = float(pe.value[k])
        summary[f"pearson_{name}_lo"] = float(pe.ci_low[k])
        summary[f"pearson_{name}_hi"] = float(pe.ci_high[k])
        summary[f"verdict_bk_{name}"] = hypothesis_verdict(
            sp.ci_low[k], sp.ci_high[k], predicted_sign=+1
        )
        # always present (NaN / "inconclusive" when too few experts gained enough)
        cg = None if corr_gain is None else corr_gain.correlation
        g_val, g_lo, g_hi = (
            (np.nan, np.nan, np.nan) if cg is None else (cg.value[k], cg.ci_low[k], cg.ci_high[k])
        )
        summary[f"spearman_gain_{name}"] = float(g_val)
        summary[f"spearman_gain_{name}_lo"] = float(g_lo)
        summary[f"spearman_gain_{name}_hi"] = float(g_hi)
        summary[f"verdict_bk_gain_{name}"] = hypothesis_verdict(g_lo, g_hi, predicted_sign=+1)
        summary[f"spearman_margin_{name}"] = float(corr_example.value[k])
        summary[f"spearman_margin_{name}_lo"] = float(corr_example.ci_low[k])
        summary[f"spearman_margin_{name}_hi"] = float(corr_example.ci_high[k])
        summary[f"verdict_bk_example_{name}"] = hypothesis_verdict(
            corr_example.ci_low[k], corr_example.ci_high[k], predicted_sign=-1
        )
        nt = null_tests[k]
        summary[f"null_p_bar_{name}"] = nt.p_bar
        summary[f"null_g_{name}"] = nt.g_statistic
        summary[f"null_dof_{name}"] = nt.dof
        summary[f"null_p_value_{name}"] = nt.p_value
        summary[f"null_log10_p_{name}"] = nt.log10_p_value
        summary[f"null_dispersion_{name}"] = nt.dispersion
        rejected = nt.p_value < 1 - config.confidence and nt.dispersion > 1
        summary[f"verdict_trait_{name}"] = "holds" if rejected else "fails"
        if k > 0:
            d = corr["spearman"].difference
            summary[f"moderation_{name}"] = float(d.value[k])
            summary[f"moderation_{name}_lo"] = float(d.ci_low[k])
            summary[f"moderation_{name}_hi"] = float(d.ci_high[k])
            summary[f"verdict_mod_{name}"] = hypothesis_verdict(
                d.ci_low[k], d.ci_high[k], predicted_sign=-1
            )
    summary.update(
        {
            "weighted_temperature": config.headline_temperature,
            "mean_merge_acc_all": float(acc_m.mean()),
            "mean_merge_acc_low": half(acc_m, low),
            "mean_merge_acc_high": half(acc_m, high),
            "weighted_acc_all": float(acc_w.mean()),
            "weighted_acc_low": half(acc_w, low),
            "weighted_acc_high": half(acc_w, high),
        }
    )
    for part in ("all", "low", "high"):
        summary[f"weighted_gain_{part}"] = (
            summary[f"weighted_acc_{part}"] - summary[f"mean_merge_acc_{part}"]
        )
    # per-replicate gains on the low half: does the improvement hold in every replicate?
    gains_low = [half(acc_w[r], low[r]) - half(acc_m[r], low[r]) for r in range(len(low))]
    summary["weighted_gain_low_rep_min"] = float(min(gains_low))
    summary["verdict_weighted"] = (
        "holds" if min(gains_low) > 0 else ("fails" if max(gains_low) < 0 else "mixed")
    )
    timings["statistics_s"] = time.perf_counter() - t_stats
    summary.update({k: float(v) for k, v in timings.items()})

    arrays: dict[str, np.ndarray] = {
        "operators": np.asarray(config.operators),
        **arr,
        "low_half": low,
        "retained_gain": retained.reshape((num_ops,) + arr["base_acc"].shape),
        "gain_kept": keep.reshape(arr["base_acc"].shape),
        "spearman": np.asarray(corr["spearman"].correlation.value),
        "spearman_ci": np.stack(
            [corr["spearman"].correlation.ci_low, corr["spearman"].correlation.ci_high]
        ),
        "spearman_per_replicate": per_rep,
        "pearson": np.asarray(corr["pearson"].correlation.value),
        "pearson_ci": np.stack(
            [corr["pearson"].correlation.ci_low, corr["pearson"].correlation.ci_high]
        ),
        "moderation": np.asarray(corr["spearman"].difference.value),
        "moderation_ci": np.stack(
            [corr["spearman"].difference.ci_low, corr["spearman"].difference.ci_high]
        ),
        "spearman_margin": np.asarray(corr_example.value),
        "spearman_margin_ci": np.stack([corr_example.ci_low, corr_example.ci_high]),
        "null_observed": np.stack([nt.observed for nt in null_tests]),
        "null_expected": np.stack([nt.expected for nt in null_tests]),
        "temperatures": np.asarray(config.temperatures),
        "weighted_low_by_temp": weighted_low_by_temp,
        "weighted_high_by_temp": weighted_high_by_temp,
        "mean_merge_low": np.asarray(half(acc_m, low)),
        "mean_merge_high": np.asarray(half(acc_m, high)),
        "margin_bin_edges": edges,
        "margin_bin_center": margin_bin_center,
        "margin_bin_s": margin_bin_s,
    }
    if corr_gain is not None:
        arrays["spearman_gain"] = np.asarray(corr_gain.correlation.value)
        arrays["spearman_gain_ci"] = np.stack(
            [corr_gain.correlation.ci_low, corr_gain.correlation.ci_high]
        )
    return arrays, summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return run_experiment(
        NAME,
        __doc__,
        lambda config, args: run(config, Path(args.out_dir)),
        MergeabilityConfig(),
        QUICK_CONFIG,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
