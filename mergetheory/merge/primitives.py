r"""Merge primitives: trim, DARE drop, sign election and disjoint aggregation.

The sparsify-elect-aggregate operators (TIES, magnitude pruning, DARE-linear / DARE-TIES,
the code-level RHT, KnOTS) are compositions of these pieces, as optax's transforms are
compositions of its primitives. For task vectors :math:`\tau_1, \dots, \tau_T` of one
tensor with optional weights :math:`w_t`:

* **trim** (:func:`trim_parts`, :func:`trim_top_k`, :func:`prune_by_threshold`):
  :math:`\hat\tau_t = \tau_t \odot 1[|\tau_t| \ge \theta_t]` with :math:`\theta_t` from
  :func:`mergetheory.merge.magnitude_threshold`;
* **DARE drop** (:func:`dare_rescale`, :func:`dare_drop_parts`):
  :math:`\tilde\tau_t = m_t \odot \tau_t / \rho` with :math:`m_t \sim \mathrm{Bernoulli}(\rho)`;
* **sign election** (:func:`election_score`, :func:`sign_of_score`, :func:`majority_sign`,
  :func:`elect_sign`): :math:`\gamma = \operatorname{sgn}^+(S)` with
  :math:`S = \sum_t \hat\tau_t` (``"mass"``) or :math:`\sum_t \operatorname{sgn}\hat\tau_t`
  (``"count"``), optionally weighted;
* **disjoint aggregation** (:func:`disjoint_aggregate`, :func:`disjoint_merge`): with
  :math:`a_t = 1[\hat\tau_t \gamma > 0]`, ``"mean"``
  :math:`\sum_t a_t w_t \hat\tau_t / \max(1, \sum_t a_t)`, ``"sum"``, ``"weighted_mean"``
  (:math:`/ \sum_t a_t w_t`, divisor 1 where it is below :math:`10^{-8}` in magnitude) or
  ``"max"`` (:math:`\gamma \max_t a_t |w_t \hat\tau_t|`);
* :func:`elect_and_merge`: election then disjoint aggregation then the scale
  :math:`\lambda`, for several trimmed leaves at once (the majority zero-sign rule may span
  them).

The ``*_parts`` forms take and return one array per task (a Python list): the kernels of
:mod:`mergetheory.merge.kernels` sum such lists in one fused pass. ``elect_sign`` and
``disjoint_merge`` are the same maths on one ``[T, ...]`` array.

Example:
  >>> x = jnp.array([[3.0, -1.0, 0.5], [2.0, 2.0, -0.4]])
  >>> trimmed = trim_top_k(x, 2)
  >>> disjoint_merge(trimmed, elect_sign(trimmed))
  Array([2.5, 2. , 0. ], dtype=float32)

References (``paper/refs.bib``): ``yadav2023ties``, ``yu2024dare``; PEFT ``merge_utils.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._types import Key
from ._common import as_weights, check_choice, task_broadcast
from .dare_mask import dare_keep_mask_rows
from .kernels import max_tasks, sum_parts
from .topk import magnitude_threshold

__all__ = [
    "AGGREGATES",
    "ELECTIONS",
    "ZERO_SIGNS",
    "dare_drop_parts",
    "dare_rescale",
    "disjoint_aggregate",
    "disjoint_merge",
    "elect_and_merge",
    "elect_and_merge_array",
    "elect_sign",
    "election_score",
    "majority_sign",
    "prune_by_threshold",
    "sign_of_score",
    "task_parts",
    "trim_parts",
    "trim_top_k",
]

ELECTIONS = ("mass", "count")
AGGREGATES = ("mean", "sum", "weighted_mean", "max")
ZERO_SIGNS = ("positive", "majority")


# --------------------------------------------------------------------------------------
# trim and drop
# --------------------------------------------------------------------------------------


def task_parts(x: jax.Array) -> list[jax.Array]:
    """``[x[0], x[1], ...]``: one array per task of ``x`` ``[T, ...]``."""
    return [x[t] for t in range(x.shape[0])]


def prune_by_threshold(x: jax.Array, threshold: jax.Array) -> jax.Array:
    r"""Zero the entries of each task below its threshold: :math:`x_t \odot 1[|x_t| \ge \theta_t]`.

    Args:
      x: ``[T, ...]``.
      threshold: ``[T]`` (from :func:`mergetheory.merge.magnitude_threshold`).
    """
    keep = jnp.abs(x).astype(threshold.dtype) >= task_broadcast(threshold, x.ndim)
    return jnp.where(keep, x, jnp.zeros_like(x))


def trim_top_k(x: jax.Array, k: Any) -> jax.Array:
    """Keep the ``k`` largest magnitudes of each ``x[t]`` (ties at the threshold kept)."""
    return prune_by_threshold(x, magnitude_threshold(x, k))


def trim_parts(x: jax.Array, threshold: jax.Array) -> list[jax.Array]:
    """:func:`prune_by_threshold` as per-task parts (``threshold`` ``[T]``)."""
    zero = jnp.zeros((), x.dtype)
    return [
        jnp.where(jnp.abs(x[t]).astype(threshold.dtype) >= threshold[t], x[t], zero)
        for t in range(x.shape[0])
    ]


def dare_rescale(x: jax.Array, keep_mask: jax.Array, density: Any) -> jax.Array:
    r"""Dropped and rescaled :math:`m \odot x / \rho` (PEFT ``random_pruning`` with ``rescale``)."""
    d = jnp.asarray(density).astype(x.dtype)
    return jnp.where(keep_mask, x / d, jnp.zeros_like(x))


def dare_drop_parts(
    key: Key | None, x: jax.Array, density: Any, keep_mask: Any = None
) -> list[jax.Array]:
    r"""Per-task :math:`m_t \odot x_t / \rho` with the masks of :func:`dare_keep_mask_rows`.

    Args:
      key: PRNG key of this leaf (ignored when ``keep_mask`` is given).
      x: ``[T, ...]``.
      density: keep probability :math:`\rho`.
      keep_mask: optional explicit boolean ``[T, ...]`` mask.
    """
    if keep_mask is not None:
        masks = [jnp.asarray(keep_mask, dtype=bool)[t] for t in range(x.shape[0])]
    elif key is None:
        raise ValueError("DARE needs a PRNG key (or an explicit keep_mask)")
    else:
        masks = dare_keep_mask_rows(key, x.shape, density)
    return [dare_rescale(x[t], m, density) for t, m in enumerate(masks)]


# --------------------------------------------------------------------------------------
# sign election
# --------------------------------------------------------------------------------------


def election_score(
    parts: Sequence[jax.Array],
    weights: jax.Array | None,
    election: str,
    weights_before_election: bool,
) -> jax.Array:
    r"""Election score :math:`S = \sum_t [w_t]\, \hat\tau_t` (``"mass"``), or of the signs."""
    base = list(parts) if election == "mass" else [jnp.sign(p) for p in parts]
    return sum_parts(base, weights if weights_before_election else None)


def sign_of_score(score: jax.Array, zero_sign: str, majority: jax.Array | None) -> jax.Array:
    r"""``+1`` / ``-1``: :math:`\operatorname{sgn}^+(S)` (``majority`` where ``S = 0``)."""
    one = jnp.ones((), score.dtype)
    if zero_sign == "positive":
        return jnp.where(score >= 0, one, -one)
    gamma = jnp.sign(score)
    return jnp.where(gamma == 0, majority.astype(score.dtype), gamma)


def majority_sign(scores: Sequence[jax.Array]) -> jax.Array:
    """``sgn+(sum_p sgn(S_p))`` over every entry of every score array (official TIES)."""
    total = sum(jnp.sum(jnp.sign(s).astype(jnp.float32)) for s in scores)
    return jnp.where(total >= 0, 1.0, -1.0)


def disjoint_aggregate(
    parts: Sequence[jax.Array], sign: jax.Array, weights: jax.Array | None, aggregate: str
) -> jax.Array:
    """Disjoint aggregation of per-task parts agreeing with ``sign`` (see the module doc)."""
    agree = [p * sign > 0 for p in parts]
    zero = jnp.zeros((), sign.dtype)
    one = jnp.ones((), sign.dtype)
    if aggregate == "max":
        mags = [jnp.abs(p if weights is None else weights[t] * p) for t, p in enumerate(parts)]
        return sign * max_tasks(
            jnp.stack([jnp.where(a, m, zero) for a, m in zip(agree, mags, strict=True)])
        )
    total = sum_parts([jnp.where(a, p, zero) for a, p in zip(agree, parts, strict=True)], weights)
    if aggregate == "sum":
        return total
    indicator = [jnp.where(a, one, zero) for a in agree]
    if aggregate == "mean" or weights is None:
        return total / jnp.maximum(sum_parts(indicator), one)
    den = sum_parts(indicator, weights)
    return total / jnp.where(jnp.abs(den) < 1e-8, one, den)


def elect_sign(
    pruned: jax.Array,
    weights: jax.Array | None = None,
    *,
    election: str = "mass",
    weights_before_election: bool = False,
    zero_sign: str = "positive",
) -> jax.Array:
    r"""Elected sign :math:`\gamma \in \{-1, +1\}` per entry of a trimmed ``[T, ...]`` array.

    :math:`\gamma = \operatorname{sgn}^+(S)` with :math:`S = \sum_t \hat\tau_t` (``"mass"``)
    or :math:`\sum_t \operatorname{sgn}\hat\tau_t` (``"count"``), weighted by :math:`w_t` if
    ``weights_before_election``; ``zero_sign`` resolves :math:`S = 0` (``"majority"`` is
    taken over this array).

    Returns:
      ``[...]`` array of ``+1`` / ``-1`` in ``pruned``'s dtype.
    """
    check_choice(election, ELECTIONS, name="election")
    check_choice(zero_sign, ZERO_SIGNS, name="zero_sign")
    w = as_weights(weights, pruned.shape[0], pruned.dtype)
    score = election_score(task_parts(pruned), w, election, weights_before_election)
    majority = majority_sign([score]) if zero_sign == "majority" else None
    return sign_of_score(score, zero_sign, majority)


def disjoint_merge(
    pruned: jax.Array,
    sign: jax.Array,
    weights: jax.Array | None = None,
    *,
    aggregate: str = "mean",
) -> jax.Array:
    r"""Merge the entries that agree with the elected sign (PEFT ``disjoint_merge`` and variants).

    Agreement :math:`a_t = 1[\hat\tau_t \gamma > 0]` (so pruned zeros never agree). Then
    ``"mean"``: :math:`\sum_t a_t w_t \hat\tau_t / \max(1, \sum_t a_t)`; ``"sum"``:
    :math:`\sum_t a_t w_t \hat\tau_t`; ``"weighted_mean"``:
    :math:`\sum_t a_t w_t \hat\tau_t / \sum_t a_t w_t`; ``"max"``:
    :math:`\gamma \max_t a_t |w_t \hat\tau_t|`.

    Args:
      pruned: ``[T, ...]`` trimmed task vectors.
      sign: ``[...]`` elected signs.
      weights: optional ``[T]``.
      aggregate: one of ``AGGREGATES``.
    """
    check_choice(aggregate, AGGREGATES, name="aggregate")
    w = as_weights(weights, pruned.shape[0], pruned.dtype)
    return disjoint_aggregate(task_parts(pruned), sign.astype(pruned.dtype), w, aggregate)


def elect_and_merge(
    pruned: Sequence[Sequence[jax.Array]],
    weights: jax.Array | None,
    scale: jax.Array,
    *,
    weights_before_election: bool = False,
    election: str = "mass",
    aggregate: str = "mean",
    zero_sign: str = "positive",
    majority_scope: str = "tensor",
) -> list[jax.Array]:
    """Elect + disjoint-merge + scale trimmed leaves, each given as its list of per-task parts.

    Args:
      pruned: one list of ``T`` parts per leaf.
      weights: optional ``[T]``.
      scale: :math:`\\lambda` (array).
      weights_before_election, election, aggregate, zero_sign: see
        :func:`mergetheory.merge.ties`.
      majority_scope: ``"tensor"`` (a zero score takes each leaf's majority sign) or
        ``"global"`` (the majority over all leaves).

    Returns:
      One merged array per leaf.
    """
    num = len(pruned[0])
    ws = [as_weights(weights, num, parts[0].dtype) for parts in pruned]
    scores = [
        election_score(parts, w, election, weights_before_election)
        for parts, w in zip(pruned, ws, strict=True)
    ]
    if zero_sign == "majority":
        if majority_scope == "global":
            majority = majority_sign(scores)
            majorities = [majority] * len(scores)
        else:
            majorities = [majority_sign([s]) for s in scores]
    else:
        majorities = [None] * len(scores)
    out = []
    for parts, w, s, maj in zip(pruned, ws, scores, majorities, strict=True):
        gamma = sign_of_score(s, zero_sign, maj)
        merged = disjoint_aggregate(parts, gamma, w, aggregate)
        out.append(scale.astype(merged.dtype) * merged)
    return out


def elect_and_merge_array(
    parts: Sequence[jax.Array],
    weights: Any,
    scale: Any,
    weights_before_election: bool,
    election: str,
    aggregate: str,
    zero_sign: str,
) -> jax.Array:
    """:func:`elect_and_merge` of one trimmed (or dropped) tensor, majority taken per tensor.

    Args:
      parts: the ``T`` per-task parts of one tensor.
      weights: optional ``[T]``.
      scale: :math:`\\lambda` (array-like).
      weights_before_election, election, aggregate, zero_sign: see
        :func:`mergetheory.merge.ties`.

    Returns:
      The merged ``[...]`` array.
    """
    return elect_and_merge(
        [parts],
        weights,
        jnp.asarray(scale),
        weights_before_election=weights_before_election,
        election=election,
        aggregate=aggregate,
        zero_sign=zero_sign,
        majority_scope="tensor",
    )[0]
