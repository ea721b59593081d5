r"""Code-level RHT: the operator the released code of arXiv 2505.21226 runs as "RHT".

"Why Do More Experts Fail?" (arXiv 2505.21226) proposes a "Reparameterized Heavy-Tailed"
(RHT) method whose formula is not public. Its repository's ``scripts/RHT.sh`` runs GENOME
with the merge ``dare_ties_magnitude_with_rescaler`` (seed repository
``src/base/merge_utils.py``); this module implements that operator **exactly** as
documented in Sources S6 (provenance: the released code). Per tensor, for
experts :math:`x_1, \dots, x_K` with weights :math:`c`:

1. normalize the weights, :math:`c \leftarrow c / \sum_k c_k` (default :math:`c_k = 1/K`);
2. keep the :math:`\lfloor \rho n \rfloor` largest magnitudes of each :math:`x_k` and
   divide by :math:`\rho`: :math:`\tilde x_k = \mathrm{TopMask}_\rho(x_k) \odot x_k / \rho`;
3. elect signs on the **unweighted** sum, ties to :math:`+1`:
   :math:`s = \operatorname{where}(\sum_k \tilde x_k \ge 0, +1, -1)`;
4. agreement :math:`a_k = 1[\operatorname{sgn}\tilde x_k = s]` (pruned zeros never agree);
5. :math:`\mathrm{RHT}(x; c) = \sum_k c_k \tilde x_k a_k / \max(1, \sum_k a_k)`
   (a weighted *sum* over the *count* of agreeing entries, PEFT's ``disjoint_merge``).

:math:`\rho` = ``density`` defaults to 0.7, hard-coded at every call site of the seed
code. This is PEFT ``ties`` on the rescaled tensors :math:`x_k / \rho`, so it shares the
TIES primitives (top-k ties at the threshold are kept, see
:mod:`mergetheory.merge.topk`).

Measured effect (Sources S6): with one Gaussian tensor, :math:`\|RHT(x)\| / \|x\| =
\sqrt{2(c\varphi(c) + 1 - \Phi(c))}/\rho` with :math:`c = \Phi^{-1}(1 - \rho/2)`, i.e.
1.4182 at :math:`\rho = 0.7`; the operator enlarges scale (and any width-based coverage)
by that factor and makes tails slightly heavier.

The seed code merges every LoRA tensor separately, so the A and B factors are merged
independently; :mod:`mergetheory.merge.lora` makes both paths explicit.

References (``paper/refs.bib``): ``wang2025moreexperts`` (arXiv 2505.21226) and its
repository wzj1718/ModelMergingAnalysis.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._types import Key, Merged, TaskVectors
from ._common import checked, is_concrete
from .leafwise import map_leaves
from .primitives import elect_and_merge, trim_parts
from .topk import leaf_thresholds, magnitude_threshold, num_kept

__all__ = ["rht", "rht_array", "rht_merge_thresholded"]


def _normalized(weights: Any, num: int, dtype: Any) -> jax.Array:
    if weights is None:
        return jnp.full((num,), 1.0 / num, dtype)
    w = jnp.asarray(weights).astype(dtype)
    return w / jnp.sum(w)


def _rht_thresholded(x: jax.Array, threshold: jax.Array, c: jax.Array, density: Any) -> jax.Array:
    d = jnp.asarray(density).astype(x.dtype)
    rescaled = [p / d for p in trim_parts(x, threshold)]
    return elect_and_merge([rescaled], c, jnp.ones((), x.dtype))[0]


def _rht_leaf(
    x: jax.Array, k: jax.Array, c: jax.Array, density: jax.Array, thr: jax.Array | None = None
) -> jax.Array:
    thr = magnitude_threshold(x, k) if thr is None else thr
    return _rht_thresholded(x, thr, c, density)


def rht_merge_thresholded(
    x: jax.Array, threshold: jax.Array, *, weights: Any = None, density: Any = 0.7
) -> jax.Array:
    r"""Code-level RHT of ``x`` ``[K, ...]`` given each expert's trim threshold ``[K]``.

    Steps 1 and 3-5 of the module docstring, with step 2's
    :math:`\mathrm{TopMask}_\rho` replaced by :math:`|x_k| \ge \theta_k`. With
    :math:`\theta_k` = ``magnitude_threshold(x, num_kept(density, size))`` (one per
    expert, independent of the others) it equals :func:`rht` bit for bit, so a caller
    merging many subsets of the same experts can compute each expert's threshold once.

    Example:
      >>> x = jnp.array([[3.0, -1.0, 0.5], [2.0, 2.0, -0.4]])
      >>> rht_merge_thresholded(x, jnp.array([1.0, 2.0]), density=0.5)
      Array([2.5, 2. , 0. ], dtype=float32)
    """
    return _rht_thresholded(x, threshold, _normalized(weights, x.shape[0], x.dtype), density)


def rht_array(
    x: jax.Array, key: Key | None = None, *, weights: Any = None, density: Any = 0.7
) -> jax.Array:
    """Code-level RHT of one array ``x`` ``[K, ...]`` (see the module docstring)."""
    del key
    c = _normalized(weights, x.shape[0], x.dtype)
    return _rht_leaf(x, num_kept(density, math.prod(x.shape[1:])), c, jnp.asarray(density))


@jax.jit
def _rht_leaf_jit(
    x: jax.Array,
    k: jax.Array,
    thr: jax.Array | None,
    *,
    weights: jax.Array | None,
    density: jax.Array,
) -> jax.Array:
    """Code-level RHT of one leaf (thresholds ``thr`` if known); compiled once per shape."""
    return _rht_leaf(x, k, _normalized(weights, x.shape[0], x.dtype), density, thr)


@checked(densities=("density",))
def rht(task_vectors: TaskVectors, key: Key, *, weights: Any = None, density: Any = 0.7) -> Merged:
    r"""Code-level RHT (``dare_ties_magnitude_with_rescaler`` of the seed repository).

    .. math::
       \tilde x_k = \frac{\mathrm{TopMask}_\rho(x_k) \odot x_k}{\rho}, \quad
       s = \operatorname{sgn}^+\Big(\sum_k \tilde x_k\Big), \quad
       \mathrm{RHT}(x; c) = \frac{\sum_k c_k\, \tilde x_k\, 1[\operatorname{sgn}\tilde x_k = s]}
                               {\max(1, \sum_k 1[\operatorname{sgn}\tilde x_k = s])},

    per tensor, with :math:`c` normalized to sum 1. Not linear; permutation invariant;
    scale equivariant; with one expert it is :math:`\mathrm{TopMask}_\rho(x) \odot x/\rho`
    (the identity at ``density=1``).

    Args:
      task_vectors: pytree of ``[K, ...]`` leaves (e.g. LoRA factors, merged one by one).
      key: unused (deterministic operator).
      weights: optional ``[K]`` weights :math:`c` (normalized by their sum; default equal).
      density: :math:`\rho \in (0, 1]`, fraction kept, default 0.7 (traceable).

    Returns:
      The merged pytree (dtypes preserved).
    """
    del key
    if weights is not None and is_concrete(weights) and float(jnp.sum(jnp.asarray(weights))) == 0:
        raise ValueError("rht: weights sum to 0; they cannot be normalized")
    leaves = jtu.tree_leaves(task_vectors)
    ks = [num_kept(density, math.prod(x.shape[1:])) for x in leaves]
    thrs = leaf_thresholds(leaves, ks)
    return map_leaves(
        _rht_leaf_jit, task_vectors, ks, thrs, weights=weights, density=jnp.asarray(density)
    )
