"""The bridge experiment's merges: the operator labels and merging nested subsets over paths.

:data:`OPERATORS` maps each label of ``experiments.real_merging`` to a registry operator,
its hyperparameters and a mode; :func:`merge_paths` merges the n-subsets of every path
with one label, ``jit(vmap)`` over the paths, with the exact shortcuts described at
:data:`PADDED`, :data:`PADDED_SUM`, :data:`THRESHOLDED`, :data:`TRIPLETS` and :data:`TUNED`
(each tested against the registry operator in
``tests/analysis/test_real_merging_padding.py``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from mergetheory.analysis import rescale_to_norm, subset_task_vectors
from mergetheory.lora import LoraFactors
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
    tsv_m_from_triplets,
    tsv_m_triplets,
)
from mergetheory.tree import sum_tasks

__all__ = [
    "OPERATORS",
    "PADDED",
    "PADDED_SUM",
    "THRESHOLDED",
    "TRIPLETS",
    "TUNED",
    "expert_thresholds",
    "merge_paths",
    "per_expert",
    "same_model",
    "subset_norms",
]

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
# operators whose n-subset merge equals the merge of the subset padded to N experts with
# zero task vectors of weight 0 (checked in tests/analysis/test_real_merging_padding.py):
# they compile once at n = N instead of once per n. Not TSV-M (its per-task rank is
# floor(r / T)), not Iso-C (non-matrix leaves are a mean over T: see PADDED_SUM).
# Base-knowledge weighting is not either (its softmax is normalised over T), but it is
# Task Arithmetic with weights omega = base_knowledge_weights(subset's knowledge): it is
# merged as such, with omega computed on the subset and padded with zeros (the operator's
# own two steps).
PADDED = ("average", "task_arithmetic", "ties", "dare_ties", "rht", "base_knowledge_weighted")
# operators whose matrix leaves depend on the subset only through its sum: Iso-C (the SVD
# of sum_t tau_t, summed left to right, so zero task vectors appended leave the bits of the
# sum, hence of the SVD, unchanged). Padded as PADDED, the non-matrix leaves' mean taken
# over the n experts (the mask's sum) instead of N: bit for bit the registry operator on
# the subset (tested), one compile instead of one per n
PADDED_SUM = ("iso_c",)
# PADDED operators whose per-expert trim does not depend on the subset: each expert's
# per-tensor threshold is computed once per expert set (:func:`expert_thresholds`), and
# every subset is merged by the operator's own second stage given the thresholds
# (``ties_merge_thresholded``, ``rht_merge_thresholded``): bit for bit the registry
# operator (tested), without a threshold search per subset and n
THRESHOLDED = ("ties", "rht")
# operators whose per-expert SVDs do not depend on the subset (TSV-M: each expert's thin
# SVD, truncated per n to floor(r / n) triplets): computed once per expert set
# (``tsv_m_triplets``) and every subset merged by ``tsv_m_from_triplets``, bit for bit the
# registry operator (tested)
TRIPLETS = ("tsv_m",)
# operators linear in one hyperparameter (registry name -> its name): merged once at 1,
# then scaled by the value chosen on the val split (exact: the scale multiplies the output)
TUNED = {"task_arithmetic": "scale", "tsv_m": "alpha", "iso_c": "alpha"}


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
    experts, norm budget, the experts' thresholds for :data:`THRESHOLDED`, the subsets'
    SVD triplets for :data:`TRIPLETS`, the padded base-knowledge weights). :data:`TUNED`
    operators merge at scale 1.
    """
    reg, hp, mode = OPERATORS[label]
    fn = MERGE_OPERATORS[reg].fn

    def factors(bs: dict, as_: dict) -> dict:
        return {p: LoraFactors(B=bs[p], A=as_[p], scaling=1.0) for p in lora_paths}

    def one(data, key, extra):
        kw = dict(hp)
        if reg in PADDED or reg in PADDED_SUM:  # zero task vectors of weight 0 after n
            mask = extra["mask"]
            data = jax.tree.map(lambda x: x * per_expert(mask, x), data)
            kw["weights"] = mask
        if reg in TUNED:
            kw[TUNED[reg]] = 1.0
        if reg == "base_knowledge_weighted":
            out = MERGE_OPERATORS["task_arithmetic"].fn(data, key, weights=extra["omega"])
        elif reg in THRESHOLDED:
            out = _merge_thresholded(reg, hp, data, extra["threshold"], kw["weights"])
            if mode == "factorwise":
                out = lora_delta(factors(*out))
        elif reg in PADDED_SUM:  # the mean over the n experts on the non-matrix leaves
            n = jnp.sum(mask)
            out = jax.tree.map(
                lambda o, x: o if x.ndim == 3 else (sum_tasks(x) / n.astype(x.dtype)),
                fn(data, key, **kw),
                data,
            )
        elif reg == "tsv_m":  # the experts' SVDs come precomputed (TRIPLETS)
            out = tsv_m_from_triplets(data, extra["triplets"], alpha=kw["alpha"])
        elif mode == "factorwise":
            out = lora_delta(lora_factorwise(fn, factors(*data), key, **kw))
        else:
            out = fn(data, key, **kw)
        return rescale_to_norm(out, extra["budget"]) if mode == "norm" else out

    return jax.jit(jax.vmap(one))


def subset_norms(sq_norms: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Equal-norm budget of each subset: the mean norm of its task vectors, ``[S]``."""
    return np.sqrt(sq_norms[subsets]).mean(axis=1)


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
    padded = reg in PADDED or reg in PADDED_SUM
    data = subset_task_vectors(data_all, paths) if padded else None
    thr = None
    if reg in THRESHOLDED:
        thr = subset_task_vectors(expert_thresholds(label, data_all), paths)
    timings = {"merge": 0.0} if timings is None else timings
    t0 = time.perf_counter()
    triplets = tsv_m_triplets(data_all) if reg in TRIPLETS else None
    timings["merge"] += time.perf_counter() - t0
    merged = []
    for n in range(1, n_max + 1):
        subsets = paths[:, :n]
        keys = jax.vmap(lambda s, n=n: jr.fold_in(jr.fold_in(key, n), s))(jnp.arange(s_num))
        # every input has the same shape at every n (one trace, one compile for PADDED)
        extra = {
            "budget": jnp.asarray(subset_norms(sq_norms, subsets)),
            "mask": jnp.broadcast_to(jnp.arange(n_max) < n, (s_num, n_max)).astype(float),
        }
        if thr is not None:
            extra["threshold"] = thr
        if triplets is not None:
            extra["triplets"] = subset_task_vectors(triplets, subsets)
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


def same_model(label: str, subsets: np.ndarray) -> bool:
    """Whether every row of ``subsets`` ``[S, n]`` merges into the same model with ``label``.

    True when the rows hold the same experts (in any order; e.g. every path at n = T) and
    the operator is deterministic (not ``stochastic`` in the registry: DARE draws its
    masks from a per-path key). The merges then agree up to the float32 round-off of the
    order of summation, and the experiment scores the first row's merge once for all rows.
    """
    rows = np.sort(np.asarray(subsets), axis=1)
    reg = OPERATORS[label][0]
    return not MERGE_OPERATORS[reg].stochastic and bool((rows == rows[:1]).all())


def per_expert(v: jax.Array, x: jax.Array) -> jax.Array:
    """``v`` ``[n]`` shaped to broadcast over ``x`` ``[n, ...]``, in ``x``'s dtype."""
    return v.astype(x.dtype).reshape(v.shape + (1,) * (x.ndim - v.ndim))
