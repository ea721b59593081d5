r"""Real experts: merged performance for n = 1..N against the width of the same task vectors.

For each modality of the expert zoo (:mod:`mergetheory.models.zoo`; built or loaded from its
cache, not timed here) and each expert set (``full`` fine-tunes; ``lora`` experts, merged on
the dense updates :math:`sBA` and, for the seed code's setting, factor-wise on A and B):

1. **Subsets.** ``num_paths`` random permutations of the experts; the :math:`n`-subset of
   path :math:`s` is its first :math:`n` experts (nested, so differences are paired). The
   same paths serve every operator and the width curve.
2. **Merges** (registry operators, data first, key second, ``jit(vmap)`` over the paths):
   average; Task Arithmetic, TSV-M and Iso-C with their scale (:math:`\lambda`,
   :math:`\alpha`) chosen on the *val* split (:data:`TUNED`; grid ``tune_grid``, the first
   ``tune_paths`` paths, at ``tune_ns`` with log-linear interpolation between, criterion:
   mean raw val metric on the merged tasks); TIES (density 0.2); DARE-TIES (density 0.5); RHT
   (the seed code's density 0.7); base-knowledge weighted (temperature 0.1; vision: the
   base's accuracy per task; language: :math:`\min_t b_t / b_t` of the base's bits per
   byte, a reconstruction). At *equal norm budget* the average, TIES and
   RHT updates are rescaled to the mean norm of the merged task vectors. For LoRA also
   factor-wise average / TIES / RHT (``lora_factorwise``, as the seed code merges).
3. **Performance** on the *test* split, normalised per task (1 = the task's own expert):
   on the merged tasks, and on all tasks (coverage). Curves over paths with paired
   standard errors (:func:`mergetheory.analysis.paired_curve`). Scored on ``eval_workers``
   threads while the main thread merges the next operator (the numbers do not depend on
   it).
4. **Width** of the same task vectors per path: hull0 width and the cone's statistical
   dimension (:func:`mergetheory.width.nested_width` on the path's Gram matrix).
5. **Tests.** Concavity of every curve: one-sided z-tests of each paired second difference,
   *Holm-adjusted across the n tested* (:func:`mergetheory.analysis.concavity_test`);
   :math:`n^\star` under the gain-ratio and utility definitions with the same
   :math:`\kappa` on the width curve (predicted) and the all-task performance curve
   (observed); RHT minus TIES and minus the mean, paired, Holm across n; the 1/k law
   :math:`L(k) = L_\infty + A/(k+b)` fitted on ``fit_ks`` of the all-task loss (bits per
   byte, or error rate for vision) and forecast at the held-out k.
6. **Hessian** of the base's loss by stochastic Lanczos quadrature, the effective dimension
   of the quadratic sublevel set (:math:`\varepsilon` = ``eps_fraction`` x base loss, R =
   median task-vector norm), and the kinematic :math:`n^\star` with it (reconstructions).

All keys derive from ``config.seed``. Output ``<out-dir>/real_merging.npz`` + ``.json``
(``summary`` feeds ``paper/sections/real_merging.md``); the zoo is cached under
``<out-dir>/zoo``.

Run: ``python -m experiments.real_merging [--quick | --large] [--out-dir DIR]``;
``--large`` runs :data:`LARGE` (zoo preset ``large``, N = 16, 32 paths; meant for a
machine with more cores or an accelerator).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import run_experiment
from experiments.real_merging_paths import (
    OPERATORS,
    PADDED,
    PADDED_SUM,
    THRESHOLDED,
    TRIPLETS,
    TUNED,
    expert_thresholds,
    merge_paths,
    per_expert,
    same_model,
    subset_norms,
)
from experiments.real_merging_summary import analyse, hessian_summary, tag
from mergetheory.analysis import (
    nested_subsets,
    normalized_performance,
    rescale_to_norm,
    width_paths,
)
from mergetheory.geometry import make_set
from mergetheory.lora import densify
from mergetheory.models.zoo import build_zoo, zoo_spec
from mergetheory.models.zoo_eval import (
    base_loss_fn,
    evaluate,
    evaluate_deltas,
    evaluate_experts,
    kernel_deltas,
)

NAME = "real_merging"

EXPERT_SETS = ("full", "lora")
__all__ = [
    "LARGE",
    "OPERATORS",
    "PADDED",
    "PADDED_SUM",
    "QUICK",
    "THRESHOLDED",
    "TRIPLETS",
    "TUNED",
    "RealMergingConfig",
    "expert_thresholds",
    "main",
    "merge_paths",
    "run",
    "same_model",
    "tag",
]


class RealMergingConfig(NamedTuple):
    """Configuration (``seed`` drives every key; the zoo has its own seed in its spec)."""

    modalities: tuple[str, ...] = ("vision", "language")
    zoo_size: str = "default"
    seed: int = 0
    max_experts: int = 10
    num_paths: int = 12
    # language: all 16 experts, on fewer paths (a merged model costs ~0.1 s of CPU to
    # score on 16 windows x 16 tasks; --large: 32 paths, all 32 windows)
    language_max_experts: int = 16
    language_num_paths: int = 4
    operators: tuple[str, ...] = tuple(OPERATORS)
    kappa: float = 0.5
    alpha: float = 0.05
    width_samples: int = 4000
    statdim_samples: int = 400
    # the TA scale and the TSV-M / Iso-C alpha: grid, paths scored on val, and the n at
    # which they are chosen (None: every n; otherwise log-linear interpolation between)
    tune_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
    tune_paths: int = 2
    tune_ns: tuple[int, ...] | None = (1, 4, 16)
    hessian_probes: int = 4
    hessian_steps: int = 40
    eps_fraction: float = 0.05
    fit_ks: tuple[int, ...] = (1, 2, 4)
    # evaluation examples per task and split scored for every merged model (evenly spaced,
    # the same for the base, the experts and every merge: comparisons stay paired); None =
    # all. Language windows are 64 bytes; the zoo holds 32 per task and split.
    eval_examples: int | None = None
    language_eval_examples: int | None = 16
    # merged models scored at once: 1, because on CPU a batch only adds memory (its
    # temporaries exceed what malloc keeps for reuse and are page-faulted on every call)
    eval_batch: int = 1
    # scoring threads, run while the main thread merges the next operator: on CPU one
    # scoring program keeps ~1.7 of 2 cores busy, two (and a merge) keep both busy.
    # Numbers do not depend on it (each model's program and inputs are the same)
    eval_workers: int = 2
    # (modality, operator) pairs not run (none by default)
    skip: tuple[tuple[str, str], ...] = ()


QUICK = RealMergingConfig(
    modalities=("vision",),
    zoo_size="tiny",
    max_experts=5,
    num_paths=4,
    operators=("average", "task_arithmetic", "ties", "rht", "rht@norm", "ties@norm", "rht[AB]"),
    width_samples=400,
    statdim_samples=64,
    tune_grid=(0.5, 1.0),
    tune_paths=2,
    tune_ns=(1, 3),
    hessian_probes=2,
    hessian_steps=8,
)


LARGE = RealMergingConfig(
    zoo_size="large",
    max_experts=16,
    num_paths=32,
    language_max_experts=16,
    language_num_paths=32,
    language_eval_examples=None,
    tune_ns=None,
    width_samples=8000,
)


def load_zoo(modality: str, size: str, seed: int, cache_dir: str, progress: bool) -> Any:
    """Build or load the zoo of one modality (``mergetheory.models.zoo``)."""
    spec = zoo_spec(modality, size, seed)
    return build_zoo(spec, cache_dir=cache_dir, progress=progress)


# --------------------------------------------------------------------------------------
# merging over paths
# --------------------------------------------------------------------------------------


def _knowledge(zoo: Any) -> np.ndarray:
    """Base knowledge in (0, 1]: accuracies as they are; losses as ``min_t b_t / b_t``."""
    k = np.asarray(zoo.base_knowledge, np.float64)
    return k if zoo.higher_is_better else k.min() / k


class _ExpertSet(NamedTuple):
    dense: Any  # [T, ...] merged by dense operators: a base-shaped tree, or {path: [T, o, i]}
    factors: tuple[dict, dict] | None  # (Bs, As) with scaling folded into B (LoRA only)
    peft: bool  # dense is a {path: update} dict in PEFT's [d_out, d_in] layout
    gram: np.ndarray  # [T, T]


class _Scorer(NamedTuple):
    """Scores merged updates on a fixed subset of every task's examples (paired).

    :meth:`submit` runs :meth:`score` on ``pool`` (threads): XLA releases the GIL, so the
    scorings run concurrently with each other and with the main thread's merges.
    """

    zoo: Any
    examples: int | None  # per task and split (None: all)
    batch_size: int
    pool: ThreadPoolExecutor

    def score(self, merged: Any, split: str, peft: bool, tasks: Any = None) -> np.ndarray:
        """``[S, T]`` metrics of ``S`` merged updates (leading axis); ``tasks``: only those."""
        deltas = kernel_deltas(self.zoo, merged) if peft else merged
        return evaluate_deltas(
            self.zoo,
            deltas,
            split=split,
            tasks=tasks,
            max_examples=self.examples,
            batch_size=self.batch_size,
        )

    def submit(self, merged: Any, split: str, peft: bool, tasks: Any = None) -> Future:
        """:meth:`score` on the pool; the future's result is its ``[S, T]`` metrics."""
        return self.pool.submit(self.score, merged, split, peft, tasks)

    def base(self, split: str) -> np.ndarray:
        return evaluate(self.zoo, self.zoo.base_params, split=split, max_examples=self.examples)

    def experts(self, es: _ExpertSet, split: str) -> np.ndarray:
        """Each expert's metric on its own task: ``[T]``."""
        deltas = kernel_deltas(self.zoo, es.dense) if es.peft else es.dense
        return evaluate_experts(self.zoo, deltas, split=split, max_examples=self.examples)


def _expert_sets(zoo: Any) -> dict[str, _ExpertSet]:
    full_set = make_set("hull0", zoo.full_task_vectors)
    lf = zoo.lora_factors
    dense_lora = densify(lf)  # {path: [T, d_out, d_in]} with the scaling applied
    bs = {p: f.B * jnp.asarray(f.scaling, f.B.dtype).reshape(-1, 1, 1) for p, f in lf.items()}
    as_ = {p: f.A for p, f in lf.items()}
    lora_gram = make_set("hull0", dense_lora).gram
    return {
        "full": _ExpertSet(zoo.full_task_vectors, None, False, np.asarray(full_set.gram)),
        "lora": _ExpertSet(dense_lora, (bs, as_), True, np.asarray(lora_gram)),
    }


def _merged_task_mean(norm_perf: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    return np.take_along_axis(norm_perf, subsets, axis=1).mean(axis=1)


class _Refs(NamedTuple):
    """Base and expert metrics on the scored test examples (for normalising)."""

    base: np.ndarray
    expert: np.ndarray


_rescale = jax.jit(rescale_to_norm)


def _scaled(tree: Any, scale: Any) -> Any:
    """``scale * tree`` in each leaf's dtype (``scale`` scalar or ``[S]``)."""

    return jax.tree.map(lambda x: per_expert(jnp.asarray(scale), x) * x, tree)


def _tuned_scales(
    scorer, merged: list, paths: np.ndarray, config, peft: bool, label: str
) -> np.ndarray:
    """Scale per n (TA's lambda, TSV-M / Iso-C's alpha) chosen on the val split.

    At each tuned n (``config.tune_ns``, N always included; None: every n) every value of
    ``tune_grid`` scales the merges of the first ``tune_paths`` paths, each path's grid
    scored in one batched call on its merged tasks only (the only tasks the criterion
    reads); the criterion is the mean raw val metric on the merged tasks (lowest
    bits per byte, highest accuracy; raw, because normalising by an expert's gain over the
    base is unstable on a handful of val examples), ties to the first grid value. Between
    tuned n the scale is interpolated linearly in (log n, log scale). Where the tuning
    paths hold the same experts (n = T; :func:`same_model`) the first path's grid is scored
    once and counts for each of them.
    """
    n_max = len(merged)
    grid = np.asarray(config.tune_grid, np.float64)
    k = min(config.tune_paths, paths.shape[0])
    ns = range(1, n_max + 1) if config.tune_ns is None else config.tune_ns
    ns = sorted({n for n in ns if n <= n_max} | {n_max})
    jobs: dict[int, list[Future]] = {}  # every grid scored concurrently, read in order
    for n in ns:
        one = same_model(label, paths[:k, :n])  # one model: path 0's grid for every path
        for p in range(1 if one else k):
            head = jax.tree.map(lambda x, p=p: x[p : p + 1], merged[n - 1])
            stacked = jax.tree.map(
                lambda *xs: jnp.concatenate(xs), *[_scaled(head, lam) for lam in grid]
            )  # [grid, ...]
            jobs.setdefault(n, []).append(scorer.submit(stacked, "val", peft, paths[p, :n]))
    chosen = []
    for n in ns:
        vals = np.zeros(grid.size)
        for job in jobs[n]:  # [grid, n]: mean over the path's merged tasks, then over paths
            vals += job.result().mean(axis=1) / len(jobs[n])
        best = np.argmax(vals) if scorer.zoo.higher_is_better else np.argmin(vals)
        chosen.append(grid[int(best)])
    scales = np.exp(np.interp(np.log(np.arange(1, n_max + 1)), np.log(ns), np.log(chosen)))
    scales[np.asarray(ns) - 1] = chosen  # exactly the grid's values where tuned
    return scales


def _run_operators(
    scorer: _Scorer,
    es: _ExpertSet,
    labels: list[str],
    paths: np.ndarray,
    config: RealMergingConfig,
    key: jax.Array,
    bar: Any,
    refs: _Refs,
    timings: dict[str, float],
) -> dict[str, dict[str, np.ndarray]]:
    zoo = scorer.zoo
    n_max = paths.shape[1]
    hib = bool(zoo.higher_is_better)
    knowledge = _knowledge(zoo)
    lora_paths = tuple(es.factors[0]) if es.factors is not None else None
    out: dict[str, dict[str, np.ndarray]] = {}
    dense: dict[tuple, list] = {}  # merges of the "dense" labels, reused at equal norm
    pending: list[tuple[str, np.ndarray, list[Future]]] = []  # scoring, not yet read

    def finish(label: str, scales: np.ndarray, jobs: list[Future]) -> None:
        t0 = time.perf_counter()
        metric = np.zeros((paths.shape[0], n_max, refs.base.size))
        for n, job in enumerate(jobs, start=1):
            metric[:, n - 1] = job.result()  # one row (path 0's merge) fills every path
        timings["evaluate"] += time.perf_counter() - t0
        norm = normalized_performance(metric, refs.base, refs.expert, higher_is_better=hib)
        merged_tasks = np.stack(
            [_merged_task_mean(norm[:, n - 1], paths[:, :n]) for n in range(1, n_max + 1)], axis=1
        )
        out[label] = {
            "metric": metric,
            "perf_merged": merged_tasks,
            "perf_all": norm.mean(axis=2),
            "tuned_scale": scales,
        }

    for label in labels:
        reg, hp, mode = OPERATORS[label]
        if mode == "factorwise" and es.factors is None:
            continue
        data_all = es.factors if mode == "factorwise" else es.dense
        peft = es.peft or mode == "factorwise"  # lora_delta gives PEFT-layout updates
        same = (reg, tuple(sorted(hp.items())))
        if mode == "norm" and same in dense:  # the same merge, rescaled to the budget
            t0 = time.perf_counter()
            merged = [
                _rescale(m, jnp.asarray(subset_norms(np.diag(es.gram), paths[:, : n + 1])))
                for n, m in enumerate(dense[same])
            ]
            timings["merge"] += time.perf_counter() - t0
        else:
            merged = merge_paths(
                label,
                data_all,
                paths,
                key,
                sq_norms=np.diag(es.gram),
                knowledge=knowledge,
                lora_paths=lora_paths,
                timings=timings,
            )
        if mode == "dense":
            dense[same] = merged
        t0 = time.perf_counter()
        scales = np.full(n_max, np.nan)
        if reg in TUNED:
            scales = _tuned_scales(scorer, merged, paths, config, peft, label)
            merged = [_scaled(m, lam) for m, lam in zip(merged, scales, strict=True)]
        jobs = []
        for n in range(1, n_max + 1):
            if same_model(label, paths[:, :n]):  # path 0's merge scored once for all paths
                job = scorer.submit(jax.tree.map(lambda x: x[:1], merged[n - 1]), "test", peft)
            else:
                job = scorer.submit(merged[n - 1], "test", peft)
            job.add_done_callback(lambda _: bar.update(1))
            jobs.append(job)
        timings["evaluate"] += time.perf_counter() - t0
        # the next operator merges while these score: the previous one is read first
        pending.append((label, scales, jobs))
        if len(pending) > 1:
            finish(*pending.pop(0))
    for item in pending:
        finish(*item)
    return out


# --------------------------------------------------------------------------------------
# width over the same paths
# --------------------------------------------------------------------------------------


def _width_paths(key, gram: np.ndarray, paths: np.ndarray, config) -> dict:
    return {
        "width": width_paths(key, gram, paths, num_samples=config.width_samples),
        "statdim": width_paths(
            jr.fold_in(key, 1),
            gram,
            paths,
            kind="cone",
            quantity="statdim",
            num_samples=config.statdim_samples,
        ),
    }


def _modality(mod: str, mi: int, config: RealMergingConfig, out_dir: Path, progress: bool):
    """Merges, width, analysis and Hessian of one modality: ``(arrays, summary)``."""
    t_start = time.perf_counter()
    zoo = load_zoo(mod, config.zoo_size, config.seed, str(Path(out_dir) / "zoo"), progress)
    timings = {"zoo": time.perf_counter() - t_start, "merge": 0.0, "evaluate": 0.0}
    num_tasks = len(zoo.task_names)
    lang = mod == "language"
    n_max = min(config.language_max_experts if lang else config.max_experts, num_tasks)
    num_paths = config.language_num_paths if lang else config.num_paths
    examples = config.language_eval_examples if lang else config.eval_examples
    pool = ThreadPoolExecutor(max(1, config.eval_workers), thread_name_prefix="score")
    scorer = _Scorer(zoo, examples, config.eval_batch, pool)
    hib = bool(zoo.higher_is_better)
    kmod = jr.fold_in(jr.key(config.seed), mi)
    paths = nested_subsets(jr.fold_in(kmod, 0), num_tasks=num_tasks, num_paths=num_paths)
    arrays: dict[str, Any] = {f"{mod}_paths": paths}
    paths = paths[:, :n_max]
    sets = _expert_sets(zoo)
    labels = [lb for lb in config.operators if (mod, lb) not in config.skip]
    total = sum(
        n_max
        for es in sets.values()
        for lb in labels
        if not (OPERATORS[lb][2] == "factorwise" and es.factors is None)
    )
    bar = tqdm(total=total, desc=f"{NAME}[{mod}]", leave=False, disable=not progress)
    results, widths = {}, {}
    base = scorer.base("test")
    try:
        for si, (set_name, es) in enumerate(sets.items()):
            refs = _Refs(base, scorer.experts(es, "test"))
            # fails now, not after the merges, when an expert does not beat the base on the
            # scored examples (the normalisation would divide by a gain <= 0)
            normalized_performance(refs.expert, base, refs.expert, higher_is_better=hib)
            key = jr.fold_in(kmod, 10 + si)
            results[set_name] = _run_operators(
                scorer, es, labels, paths, config, key, bar, refs, timings
            )
            t0 = time.perf_counter()
            w = _width_paths(jr.fold_in(kmod, 20 + si), es.gram, paths, config)
            widths[set_name] = {**w, "gram": es.gram}
            timings["width"] = timings.get("width", 0.0) + time.perf_counter() - t0
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, nothing queued runs on
    bar.close()
    a, summary = analyse(mod, bool(zoo.higher_is_better), results, widths, config)
    arrays.update(a)
    nstar = a.get(f"{mod}_full_average_nstar")
    observed = None if nstar is None else float(nstar[0, 4])  # gain ratio, observed n*
    t0 = time.perf_counter()
    a, s = hessian_summary(
        mod, zoo, base_loss_fn(zoo), widths, config, jr.fold_in(kmod, 30), observed
    )
    timings["hessian"] = time.perf_counter() - t0
    arrays.update(a)
    summary.update(s)
    summary.update(
        {
            f"{mod}_num_tasks": num_tasks,
            f"{mod}_zoo_size": config.zoo_size,
            f"{mod}_n_max": n_max,
            f"{mod}_num_paths": num_paths,
            f"{mod}_eval_examples": "all" if examples is None else examples,
            f"{mod}_metric": zoo.metric_name,
            f"{mod}_base_metric_mean": float(np.mean(zoo.base_metric)),
            f"{mod}_full_expert_metric_mean": float(np.mean(zoo.full_expert_metric)),
            f"{mod}_lora_expert_metric_mean": float(np.mean(zoo.lora_expert_metric)),
            f"{mod}_lora_rank": int(zoo.spec.lora_rank),
            f"{mod}_fingerprint": zoo.info.get("fingerprint", ""),
            f"{mod}_timings_s": {k: round(v, 1) for k, v in timings.items()},
        }
    )
    return arrays, summary


def run(config: RealMergingConfig, *, out_dir: Path, progress: bool = True) -> tuple[dict, dict]:
    """Run the bridge experiment; returns ``(arrays, summary)``.

    The zoo is built (or loaded) under ``<out_dir>/zoo`` (``results/zoo`` by default).
    """
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {"operators": list(config.operators)}
    for mi, mod in enumerate(config.modalities):
        a, s = _modality(mod, mi, config, Path(out_dir), progress)
        arrays.update(a)
        summary.update(s)
    summary["num_paths"] = config.num_paths
    return arrays, summary


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.real_merging [--quick | --large] [--out-dir DIR]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    large = "--large" in argv
    if large:
        argv.remove("--large")
    return run_experiment(
        NAME,
        __doc__,
        lambda config, args: run(config, out_dir=args.out_dir, progress=not args.no_progress),
        LARGE if large else RealMergingConfig(),
        QUICK,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
