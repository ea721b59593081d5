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
   standard errors (:func:`mergetheory.analysis.paired_curve`).
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

import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import run_experiment
from experiments.real_merging_summary import analyse, hessian_summary, tag
from mergetheory.analysis import (
    nested_subsets,
    normalized_performance,
    rescale_to_norm,
    subset_task_vectors,
    width_paths,
)
from mergetheory.geometry import make_set
from mergetheory.lora import LoraFactors, densify
from mergetheory.merge import (
    MERGE_OPERATORS,
    base_knowledge_weights,
    lora_delta,
    lora_factorwise,
    magnitude_threshold,
    num_kept,
    rht_merge_thresholded,
    ties_kept,
    ties_merge_thresholded,
)
from mergetheory.models.zoo import build_zoo, zoo_spec
from mergetheory.models.zoo_eval import (
    base_loss_fn,
    evaluate,
    evaluate_deltas,
    evaluate_experts,
    kernel_deltas,
)

NAME = "real_merging"

# label -> (registry name, hyperparameters, mode); mode: "dense" (merge the task vectors),
# "norm" (dense, then rescaled to the norm budget), "factorwise" (LoRA A and B apart)
OPERATORS: dict[str, tuple[str, dict, str]] = {
    "average": ("average", {}, "dense"),
    "task_arithmetic": ("task_arithmetic", {}, "dense"),
    "ties": ("ties", {"density": 0.2, "scale": 1.0}, "dense"),
    "dare_ties": ("dare_ties", {"density": 0.5, "scale": 1.0}, "dense"),
    "rht": ("rht", {"density": 0.7}, "dense"),
    "base_knowledge": ("base_knowledge_weighted", {"temperature": 0.1}, "dense"),
    "tsv_m": ("tsv_m", {"alpha": 1.0}, "dense"),
    "iso_c": ("iso_c", {"alpha": 1.0}, "dense"),
    "average@norm": ("average", {}, "norm"),
    "ties@norm": ("ties", {"density": 0.2, "scale": 1.0}, "norm"),
    "rht@norm": ("rht", {"density": 0.7}, "norm"),
    "average[AB]": ("average", {}, "factorwise"),
    "ties[AB]": ("ties", {"density": 0.2, "scale": 1.0}, "factorwise"),
    "rht[AB]": ("rht", {"density": 0.7}, "factorwise"),
}
EXPERT_SETS = ("full", "lora")
__all__ = [
    "LARGE",
    "OPERATORS",
    "QUICK",
    "RealMergingConfig",
    "expert_thresholds",
    "main",
    "merge_paths",
    "run",
    "tag",
]
# operators whose n-subset merge equals the merge of the subset padded to N experts with
# zero task vectors of weight 0 (checked in tests/analysis/test_real_merging_padding.py):
# they compile once at n = N instead of once per n. Not TSV-M (its per-task rank is
# floor(r / T)), not Iso-C (non-matrix leaves are a mean over T). Base-knowledge weighting
# is not either (its softmax is normalised over T), but it is Task Arithmetic with weights
# omega = base_knowledge_weights(subset's knowledge): it is merged as such, with omega
# computed on the subset and padded with zeros (the operator's own two steps).
PADDED = ("average", "task_arithmetic", "ties", "dare_ties", "rht", "base_knowledge_weighted")
# PADDED operators whose per-expert trim does not depend on the subset: each expert's
# per-tensor threshold is computed once per expert set (:func:`expert_thresholds`), and
# every subset is merged by the operator's own second stage given the thresholds
# (``ties_merge_thresholded``, ``rht_merge_thresholded``): bit for bit the registry
# operator (tested), without a threshold search per subset and n
THRESHOLDED = ("ties", "rht")
# operators linear in one hyperparameter (registry name -> its name): merged once at 1,
# then scaled by the value chosen on the val split (exact: the scale multiplies the output)
TUNED = {"task_arithmetic": "scale", "tsv_m": "alpha", "iso_c": "alpha"}


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


def expert_thresholds(label: str, data_all: Any) -> Any:
    """Each expert's per-tensor trim threshold for a :data:`THRESHOLDED` label.

    Args:
      label: a key of :data:`OPERATORS` whose registry operator is in :data:`THRESHOLDED`.
      data_all: ``[T, ...]`` task vectors, or ``(Bs, As)`` factor dicts (factor-wise).

    Returns:
      The same tree with ``[T]`` leaves: :math:`\theta_t`, the ``k``-th largest magnitude
      of expert ``t``'s tensor (``k`` as the registry operator keeps).
    """
    reg, hp, _ = OPERATORS[label]
    kept = ties_kept if reg == "ties" else num_kept

    def one(x: jax.Array) -> jax.Array:
        return magnitude_threshold(x, kept(hp["density"], math.prod(x.shape[1:])))

    return jax.tree.map(one, data_all)


def _merge_thresholded(reg: str, hp: dict, data: Any, threshold: Any, weights: Any) -> Any:
    if reg == "ties":
        scale = jnp.asarray(hp["scale"])
        f = lambda x, t: ties_merge_thresholded(x, t, weights=weights, scale=scale)  # noqa: E731
    else:
        density = jnp.asarray(hp["density"])
        f = lambda x, t: rht_merge_thresholded(x, t, weights=weights, density=density)  # noqa: E731
    return jax.tree.map(f, data, threshold)


def _merge_fn(label: str, lora_paths: tuple[str, ...] | None):
    """``jit(vmap(f))`` with ``f(data, key, extra) -> dense update``.

    ``data`` is a ``[n, ...]`` task-vector pytree (dense) or ``(Bs, As)`` dicts of factors
    (factor-wise); ``extra`` carries the per-subset inputs (0/1 mask of the padded
    experts, norm budget, the experts' thresholds for :data:`THRESHOLDED`, the padded
    base-knowledge weights). :data:`TUNED` operators merge at scale 1.
    """
    reg, hp, mode = OPERATORS[label]
    fn = MERGE_OPERATORS[reg].fn

    def factors(bs: dict, as_: dict) -> dict:
        return {p: LoraFactors(B=bs[p], A=as_[p], scaling=1.0) for p in lora_paths}

    def one(data, key, extra):
        kw = dict(hp)
        if reg in PADDED:  # zero task vectors of weight 0 beyond the first n
            mask = extra["mask"]
            data = jax.tree.map(lambda x: x * _per_expert(mask, x), data)
            kw["weights"] = mask
        if reg in TUNED:
            kw[TUNED[reg]] = 1.0
        if reg == "base_knowledge_weighted":
            out = MERGE_OPERATORS["task_arithmetic"].fn(data, key, weights=extra["omega"])
        elif reg in THRESHOLDED:
            out = _merge_thresholded(reg, hp, data, extra["threshold"], kw["weights"])
            if mode == "factorwise":
                out = lora_delta(factors(*out))
        elif mode == "factorwise":
            out = lora_delta(lora_factorwise(fn, factors(*data), key, **kw))
        else:
            out = fn(data, key, **kw)
        return rescale_to_norm(out, extra["budget"]) if mode == "norm" else out

    return jax.jit(jax.vmap(one))


def _subset_norms(sq_norms: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    return np.sqrt(sq_norms[subsets]).mean(axis=1)


class _ExpertSet(NamedTuple):
    dense: Any  # [T, ...] merged by dense operators: a base-shaped tree, or {path: [T, o, i]}
    factors: tuple[dict, dict] | None  # (Bs, As) with scaling folded into B (LoRA only)
    peft: bool  # dense is a {path: update} dict in PEFT's [d_out, d_in] layout
    gram: np.ndarray  # [T, T]


class _Scorer(NamedTuple):
    """Scores merged updates on a fixed subset of every task's examples (paired)."""

    zoo: Any
    examples: int | None  # per task and split (None: all)
    batch_size: int

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


def merge_paths(
    label: str,
    data_all: Any,
    paths: np.ndarray,
    key: jax.Array,
    *,
    sq_norms: np.ndarray,
    knowledge: np.ndarray,
    lora_paths: tuple[str, ...] | None = None,
    timings: dict[str, float] | None = None,
) -> list[Any]:
    """Merge the nested subsets of every path with one :data:`OPERATORS` label.

    Args:
      label: key of :data:`OPERATORS`.
      data_all: ``[T, ...]`` task vectors, or ``(Bs, As)`` factor dicts (factor-wise
        labels, with ``lora_paths`` their keys).
      paths: ``[S, N]`` expert indices; the ``n``-subset of path ``s`` is ``paths[s, :n]``.
      key: PRNG key (subset ``(n, s)`` uses ``fold_in(fold_in(key, n), s)``).
      sq_norms: ``[T]`` squared task-vector norms (the equal-norm budget).
      knowledge: ``[T]`` base knowledge (base-knowledge weighting).
      timings: if given, ``timings["merge"]`` accumulates the seconds spent.

    Returns:
      A list of ``N`` pytrees (dense updates) with leaves ``[S, ...]``.
    """
    reg = OPERATORS[label][0]
    fn = _merge_fn(label, lora_paths)
    s_num, n_max = paths.shape
    padded = reg in PADDED
    data = subset_task_vectors(data_all, paths) if padded else None
    thr = None
    if reg in THRESHOLDED:
        thr = subset_task_vectors(expert_thresholds(label, data_all), paths)
    timings = {"merge": 0.0} if timings is None else timings
    merged = []
    for n in range(1, n_max + 1):
        subsets = paths[:, :n]
        keys = jax.vmap(lambda s, n=n: jr.fold_in(jr.fold_in(key, n), s))(jnp.arange(s_num))
        # every input has the same shape at every n (one trace, one compile for PADDED)
        extra = {
            "budget": jnp.asarray(_subset_norms(sq_norms, subsets)),
            "mask": jnp.broadcast_to(jnp.arange(n_max) < n, (s_num, n_max)).astype(float),
        }
        if thr is not None:
            extra["threshold"] = thr
        if reg == "base_knowledge_weighted":
            temp = OPERATORS[label][1]["temperature"]
            omega = jax.vmap(lambda a, t=temp: base_knowledge_weights(a, temperature=t))(
                jnp.asarray(knowledge[subsets])
            )
            extra["omega"] = jnp.pad(omega, ((0, 0), (0, n_max - n)))
        t0 = time.perf_counter()
        sub = data if padded else subset_task_vectors(data_all, subsets)
        merged.append(jax.block_until_ready(fn(sub, keys, extra)))
        timings["merge"] += time.perf_counter() - t0
    return merged


_rescale = jax.jit(rescale_to_norm)


def _per_expert(v: jax.Array, x: jax.Array) -> jax.Array:
    """``v`` ``[n]`` shaped to broadcast over ``x`` ``[n, ...]``, in ``x``'s dtype."""
    return v.astype(x.dtype).reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _scaled(tree: Any, scale: Any) -> Any:
    """``scale * tree`` in each leaf's dtype (``scale`` scalar or ``[S]``)."""

    return jax.tree.map(lambda x: _per_expert(jnp.asarray(scale), x) * x, tree)


def _tuned_scales(scorer, merged: list, paths: np.ndarray, config, peft: bool) -> np.ndarray:
    """Scale per n (TA's lambda, TSV-M / Iso-C's alpha) chosen on the val split.

    At each tuned n (``config.tune_ns``, N always included; None: every n) every value of
    ``tune_grid`` scales the merges of the first ``tune_paths`` paths, each path's grid
    scored in one batched call on its merged tasks only (the only tasks the criterion
    reads); the criterion is the mean raw val metric on the merged tasks (lowest
    bits per byte, highest accuracy; raw, because normalising by an expert's gain over the
    base is unstable on a handful of val examples), ties to the first grid value. Between
    tuned n the scale is interpolated linearly in (log n, log scale).
    """
    n_max = len(merged)
    grid = np.asarray(config.tune_grid, np.float64)
    k = min(config.tune_paths, paths.shape[0])
    ns = range(1, n_max + 1) if config.tune_ns is None else config.tune_ns
    ns = sorted({n for n in ns if n <= n_max} | {n_max})
    chosen = []
    for n in ns:
        vals = np.zeros(grid.size)
        for p in range(k):
            head = jax.tree.map(lambda x, p=p: x[p : p + 1], merged[n - 1])
            stacked = jax.tree.map(
                lambda *xs: jnp.concatenate(xs), *[_scaled(head, lam) for lam in grid]
            )  # [grid, ...]
            metric = scorer.score(stacked, "val", peft, tasks=paths[p, :n])  # [grid, n]
            vals += metric.mean(axis=1) / k
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
                _rescale(m, jnp.asarray(_subset_norms(np.diag(es.gram), paths[:, : n + 1])))
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
            scales = _tuned_scales(scorer, merged, paths, config, peft)
            merged = [_scaled(m, lam) for m, lam in zip(merged, scales, strict=True)]
        metric = np.zeros((paths.shape[0], n_max, refs.base.size))
        for n in range(1, n_max + 1):
            metric[:, n - 1] = scorer.score(merged[n - 1], "test", peft)
            bar.update(1)
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
    scorer = _Scorer(zoo, examples, config.eval_batch)
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
