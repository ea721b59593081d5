r"""Mergeability of many small updates, one merge scoring every member (reconstruction).

The estimator of :mod:`mergetheory.mergeability`,

.. math::

   \hat S(\tau_i) = \frac1N \sum_{n=1}^{N}
       f_i\big(\theta_0 + \mathrm{Merge}(\{\tau_i\} \cup P_n(i))\big),
   \qquad P_n(i) \text{ a uniform } M\text{-subset of } \{\tau_j\}_{j \ne i},

at the paper's per-instance unit (Rahamim et al., arXiv 2601.06672: hundreds of updates,
:math:`M = 50`, :math:`N = 5`), where one merge per update and trial would cost
:math:`KN` merges of :math:`M + 1` updates.

**Design (partition trials).** A merge of :math:`M + 1` updates gives a survival bit for
*every* member at once. For trial :math:`n` (:func:`partition_groups`) the pool of
:math:`K` updates is shuffled and cut into :math:`G = \lceil K / (M+1) \rceil` groups of
:math:`M + 1`; the last group's :math:`K - (G-1)(M+1)` members are padded with updates
drawn uniformly without replacement from the other groups, and the padded entries'
bits are not counted. Every update is counted **exactly once per trial**, so it gets its
own :math:`N` trials, and conditionally on :math:`i` its partners are a uniform
:math:`M`-subset of the other updates (the construction is exchangeable in the labels
:math:`j \ne i`, padding included), as the estimator requires; trials are independent
shuffles. Cost: :math:`N \lceil K/(M+1) \rceil` merges instead of :math:`NK`. What is
shared: members of one group share their merge, so their bits in that trial are
dependent (the per-update estimates are unbiased; intervals across updates should
resample groups of related updates, e.g. :func:`mergetheory.stats.grouped_bootstrap`).

:func:`partition_estimate` runs the design around any group scorer;
:func:`partition_mergeability` runs it for any operator of
:data:`mergetheory.merge.MERGE_OPERATORS` on LoRA updates (factors ``B [K, d, r]``,
``A [K, r, k]``, one scaling), merged factored (KnOTS: its shared basis from the
factors) or densified (:math:`s B_i A_i`: mean, TIES), and any survival function
``survive(delta, members) -> bits``. :func:`bin_partner_survival` is the locality test:
chosen updates merged with partners drawn from one bin of the pool.

Example:
  >>> problem = LoraSurvivalProblem(B, A, 2.0, "knots", survive)
  >>> est = partition_mergeability(key, problem, num_partners=50, num_trials=5)
  >>> est.mean.shape  # [K]

Reference: Rahamim et al. (``rahamim2026mergeability`` in ``paper/refs.bib``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._types import Key, LoraFactors
from .merge import MERGE_OPERATORS

__all__ = [
    "FACTORED_OPERATORS",
    "LoraSurvivalProblem",
    "PartitionEstimate",
    "bin_partner_survival",
    "merge_lora_tree",
    "merge_lora_updates",
    "partition_estimate",
    "partition_groups",
    "partition_mergeability",
]

FACTORED_OPERATORS = frozenset({"knots", "knots_dare_ties"})
"""Operators merged on the LoRA factors (the others get the dense :math:`sBA`)."""


def partition_groups(
    key: Key, num_updates: int, num_partners: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""One trial of the partition design: groups of :math:`M + 1` covering every update once.

    Args:
      key: PRNG key of the trial.
      num_updates: ``K``.
      num_partners: ``M`` (``M + 1 <= K``).

    Returns:
      ``(groups [G, M + 1] int, counted [G, M + 1] bool)``: every index ``0..K-1`` appears
      exactly once with ``counted`` True; padding entries (last group) are False.

    Raises:
      ValueError: ``M + 1 > K`` or ``M < 0``.
    """
    size = num_partners + 1
    if num_partners < 0 or size > num_updates:
        raise ValueError(f"num_partners must be in [0, K - 1 = {num_updates - 1}], "
                         f"got {num_partners}")  # fmt: skip
    k_perm, k_pad = jr.split(key)
    perm = np.asarray(jr.permutation(k_perm, num_updates))
    num_groups = -(-num_updates // size)
    full = (num_groups - 1) * size
    rest = perm[full:]
    pad = size - rest.size
    head = perm[:full]
    if pad:
        extra = head[np.asarray(jr.permutation(k_pad, head.size))[:pad]]
        rest = np.concatenate([rest, extra])
    groups = np.concatenate([head, rest]).reshape(num_groups, size)
    counted = np.ones_like(groups, bool)
    counted[-1, size - pad :] = False
    return groups, counted


def merge_lora_tree(
    name: str,
    factors: Mapping[str, LoraFactors],
    key: Key,
    hparams: Mapping[str, Any] | None = None,
) -> dict[str, jax.Array]:
    r"""Merge LoRA experts ``{path: LoraFactors(B [T, d, r], A [T, r, k], s)}`` with an operator.

    Traceable. Operators in :data:`FACTORED_OPERATORS` get the factors (KnOTS takes its
    shared basis from them, trimming over all paths at once); every other operator gets the
    dense ``s B_t A_t`` ``[T, d, k]`` per path.

    Args:
      name: key of :data:`mergetheory.merge.MERGE_OPERATORS`.
      factors: the experts' factors per adapted kernel.
      key: the operator's key.
      hparams: operator hyperparameters (default: the registry's ``default_hparams``).

    Returns:
      ``{path: [d, k]}`` merged updates (PEFT layout, ``d = d_out``).
    """
    op = MERGE_OPERATORS[name]
    hp = dict(op.default_hparams if hparams is None else hparams)
    if name in FACTORED_OPERATORS:
        return dict(op.fn(dict(factors), key, **hp))
    dense = {
        p: jnp.matmul(f.B, f.A) * jnp.asarray(f.scaling, f.B.dtype) for p, f in factors.items()
    }
    return dict(op.fn(dense, key, **hp))


def merge_lora_updates(
    name: str,
    b: jax.Array,
    a: jax.Array,
    scaling: float,
    key: Key,
    hparams: Mapping[str, Any] | None = None,
) -> jax.Array:
    r"""Merge single-kernel LoRA updates ``s B_t A_t``; flax kernel layout ``[k, d]``.

    :func:`merge_lora_tree` on one kernel, transposed to the ``[d_in, d_out]`` layout of
    the adapted flax kernel. Traceable (``vmap`` over groups works).

    Args:
      name: key of :data:`mergetheory.merge.MERGE_OPERATORS`.
      b: ``[T, d, r]``.
      a: ``[T, r, k]``.
      scaling: ``alpha / r``.
      key: the operator's key.
      hparams: operator hyperparameters (default: the registry's ``default_hparams``).

    Returns:
      ``[k, d]``.
    """
    merged = merge_lora_tree(name, {"w": LoraFactors(B=b, A=a, scaling=scaling)}, key, hparams)
    return jnp.swapaxes(merged["w"], -1, -2)


class PartitionEstimate(NamedTuple):
    r"""Per-update mergeability from the partition design.

    Attributes:
      mean: ``[K]`` :math:`\hat S`.
      stderr: ``[K]`` ``std(ddof=1) / sqrt(N)`` over the update's trials (NaN if ``N = 1``).
      bits: ``[N, K]`` score of every update in every trial (float; 0/1 survival bits
        for :func:`partition_mergeability`).
      groups: ``[N, G, M + 1]`` the merged groups.
      counted: ``[N, G, M + 1]`` which entries count (False: padding).
      num_partners: ``M``.
      num_trials: ``N``.
      num_merges: merges performed (``N G``).
    """

    mean: np.ndarray
    stderr: np.ndarray
    bits: np.ndarray
    groups: np.ndarray
    counted: np.ndarray
    num_partners: int
    num_trials: int
    num_merges: int


@functools.partial(jax.jit, static_argnames=("name", "survive", "hp_items"))
def _groups_bits(
    b: jax.Array,
    a: jax.Array,
    scaling: Any,
    groups: jax.Array,
    keys: jax.Array,
    survive_args: Any,
    *,
    name: str,
    survive: Callable[..., jax.Array],
    hp_items: tuple[tuple[str, Any], ...],
) -> jax.Array:
    def one(members: jax.Array, k: Key) -> jax.Array:
        delta = merge_lora_updates(name, b[members], a[members], scaling, k, dict(hp_items))
        return survive(delta, members, survive_args)

    return jax.vmap(one)(groups, keys)


class LoraSurvivalProblem(NamedTuple):
    r"""A pool of single-kernel LoRA updates, a merge operator and a survival function.

    What :func:`partition_mergeability` and :func:`bin_partner_survival` merge and score.

    Attributes:
      b: ``[K, d, r]`` LoRA ``B`` factors.
      a: ``[K, r, k]`` LoRA ``A`` factors.
      scaling: ``alpha / r``.
      name: merge operator (registry key).
      survive: ``survive(delta [k, d], members [M + 1] int, survive_args) -> [M + 1]``
        bool, whether each member's own instance survives ``theta_0 + delta``; traceable
        and static (pass the same function object to reuse the compiled program).
      survive_args: traced pytree handed to ``survive`` (e.g. features and labels).
      hparams: operator hyperparameters (default: the registry's).

    Example:
      >>> problem = LoraSurvivalProblem(B, A, 2.0, "knots", survive)
      >>> problem.bits(groups, key)  # [G, M + 1] survival of every member
    """

    b: Any
    a: Any
    scaling: float
    name: str
    survive: Callable[..., jax.Array]
    survive_args: Any = None
    hparams: Mapping[str, Any] | None = None

    def bits(self, groups: np.ndarray, key: Key) -> np.ndarray:
        """Merge every row of ``groups`` (``[G, M + 1]`` int, key ``split(key, G)[g]``)
        and return the ``[G, M + 1]`` survival bits of its members (a ``score_groups`` of
        :func:`partition_estimate`)."""
        hp = MERGE_OPERATORS[self.name].default_hparams if self.hparams is None else self.hparams
        keys = jr.split(key, groups.shape[0])
        out = _groups_bits(
            jnp.asarray(self.b), jnp.asarray(self.a), self.scaling, jnp.asarray(groups), keys,
            self.survive_args, name=self.name, survive=self.survive,
            hp_items=tuple(sorted(dict(hp).items())),
        )  # fmt: skip
        return np.asarray(out, bool)


def partition_estimate(
    key: Key,
    num_updates: int,
    score_groups: Callable[[np.ndarray, Key], Any],
    *,
    num_partners: int,
    num_trials: int,
) -> PartitionEstimate:
    r"""The partition design around any group scorer (eager; see the module docstring).

    Trial ``n`` uses ``jr.split(key, N)[n]``, split into the partition key
    (:func:`partition_groups`) and the scorer's key, so one ``key`` gives the *same*
    partitions for every scorer (paired comparisons of operators).

    Args:
      key: PRNG key.
      num_updates: ``K``.
      score_groups: ``score_groups(groups [G, M + 1] int, key) -> [G, M + 1]`` the score
        :math:`f_i` of every member of every merged group (bits or real numbers).
      num_partners: ``M``.
      num_trials: ``N``.

    Returns:
      :class:`PartitionEstimate` (``bits`` holds the scores, float).
    """
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}")
    scores = np.zeros((num_trials, num_updates))
    all_groups, all_counted = [], []
    for n, k in enumerate(jr.split(key, num_trials)):
        k_part, k_score = jr.split(k)
        groups, counted = partition_groups(k_part, num_updates, num_partners)
        g_scores = np.asarray(score_groups(groups, k_score), np.float64)
        scores[n, groups[counted]] = g_scores[counted]
        all_groups.append(groups)
        all_counted.append(counted)
    mean = scores.mean(0)
    if num_trials > 1:
        stderr = scores.std(0, ddof=1) / np.sqrt(num_trials)
    else:
        stderr = np.full(num_updates, np.nan)
    groups = np.stack(all_groups)
    return PartitionEstimate(
        mean, stderr, scores, groups, np.stack(all_counted), num_partners, num_trials,
        int(groups.shape[0] * groups.shape[1]),
    )  # fmt: skip


def partition_mergeability(
    key: Key, problem: LoraSurvivalProblem, *, num_partners: int, num_trials: int
) -> PartitionEstimate:
    r""":math:`\hat S` of every single-kernel LoRA update with the partition design.

    :func:`partition_estimate` with one jitted program per trial that merges every group
    (``vmap``) and scores its members.

    Args:
      key: PRNG key (the same key gives the same partitions for every operator).
      problem: the pool, operator and survival function (:class:`LoraSurvivalProblem`).
      num_partners: ``M``.
      num_trials: ``N``.

    Returns:
      :class:`PartitionEstimate`.
    """
    return partition_estimate(
        key,
        int(np.shape(problem.b)[0]),
        problem.bits,
        num_partners=num_partners,
        num_trials=num_trials,
    )


def bin_partner_survival(
    key: Key,
    problem: LoraSurvivalProblem,
    focal: Any,
    bins: Any,
    *,
    num_partners: int,
    num_trials: int,
) -> np.ndarray:
    r"""Locality: survival of ``focal`` updates merged with partners from each bin.

    For focal update :math:`i`, bin :math:`b` and trial :math:`n`, the merge is
    :math:`\{\tau_i\} \cup P`, :math:`P` a uniform :math:`M`-subset of bin :math:`b`'s
    updates other than :math:`i`; only :math:`i`'s bit is recorded. Focal update ``f``,
    bin ``b``, trial ``n`` draw from ``fold_in(fold_in(fold_in(key, b), n), f)``.

    Args:
      key: PRNG key.
      problem: the pool, operator and survival function (:class:`LoraSurvivalProblem`).
      focal: ``[F]`` indices of the focal updates.
      bins: list of index arrays, one per bin (each with more than ``M`` members).
      num_partners: ``M``.
      num_trials: ``N``.

    Returns:
      ``[num_bins, F]`` survival rate over the ``N`` trials.
    """
    focal = np.asarray(focal)
    out = np.zeros((len(bins), focal.size))
    for j, members in enumerate(bins):
        members = np.asarray(members)
        if members.size <= num_partners:
            raise ValueError(f"bin {j} has {members.size} updates; need > M = {num_partners}")
        rows = []
        for n in range(num_trials):
            kb = jr.fold_in(jr.fold_in(key, j), n)
            groups = []
            for f, i in enumerate(focal):
                pool = members[members != i]
                u = np.asarray(jr.permutation(jr.fold_in(kb, f), pool.size))[:num_partners]
                groups.append(np.concatenate([[i], pool[u]]))
            groups = np.stack(groups)
            g_bits = problem.bits(groups, kb)
            rows.append(g_bits[:, 0])
        out[j] = np.mean(rows, axis=0)
    return out
