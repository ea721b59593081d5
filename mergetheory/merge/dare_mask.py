r"""DARE keep masks :math:`m \sim \mathrm{Bernoulli}(\rho)` drawn from a JAX key.

:func:`dare_keep_mask` draws the mask of a whole ``[T, ...]`` leaf from one key
(``density`` :math:`\rho` = keep probability = PEFT's ``density``); pytree operators give
leaf ``i`` the key ``fold_in(key, i)`` (:func:`dare_keep_masks`). The bits come from the
counter-based hash :func:`mergetheory.merge.kernels.hash_uniform_bits`, a deterministic
function of the JAX key; the masks' mean, independence across positions / tasks / leaves /
keys and DARE's unbiasedness are tested by Monte Carlo.

Reference: Yu et al., ICML 2024 (``yu2024dare``); PEFT ``merge_utils.random_pruning``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import Key
from ._common import leaf_keys
from .kernels import hash_uniform_bits, hash_uniform_bits_offset

__all__ = ["dare_keep_mask", "dare_keep_mask_rows", "dare_keep_masks"]


def _keep_from_bits(bits: jax.Array, density: Any) -> jax.Array:
    u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    return u < jnp.asarray(density).astype(jnp.float32)


def dare_keep_mask(key: Key, shape: tuple[int, ...], density: Any) -> jax.Array:
    r"""DARE keep mask :math:`m \sim \mathrm{Bernoulli}(\rho)` of ``shape`` from one key.

    ``density`` :math:`\rho` is the keep probability (PEFT / mergekit ``density``; the DARE
    paper's drop rate is :math:`p = 1 - \rho`). Entry :math:`i` is kept iff
    :math:`u_i < \rho` with :math:`u_i = \lfloor b_i / 2^8 \rfloor 2^{-24}` a float32
    uniform on a :math:`2^{-24}` grid and :math:`b_i` the bits of
    :func:`hash_uniform_bits` (so :math:`P(\text{keep}) = \lceil 2^{24}\rho \rceil / 2^{24}`,
    within :math:`6\cdot10^{-8}` of :math:`\rho`; ``density = 1`` keeps everything).
    """
    return _keep_from_bits(hash_uniform_bits(key, shape), density)


def dare_keep_mask_rows(key: Key, shape: tuple[int, ...], density: Any) -> list[jax.Array]:
    """``dare_keep_mask(key, shape, density)`` as a list of its rows ``[0], [1], ...``.

    Drawn row by row (the counter of row ``t`` starts at ``t * prod(shape[1:])``), so the
    rows are bit-identical to the slices of the full mask; the kernels use this form.
    """
    num = int(np.prod(shape, dtype=np.int64))
    if num >= 2**32:
        raise ValueError(f"dare_keep_mask_rows: {num} >= 2**32 draws from one key")
    row = int(np.prod(shape[1:], dtype=np.int64))
    return [
        _keep_from_bits(hash_uniform_bits_offset(key, tuple(shape[1:]), t * row), density)
        for t in range(shape[0])
    ]


def dare_keep_masks(key: Key, task_vectors: Any, density: Any) -> Any:
    """The DARE operators' masks: leaf ``i`` uses ``fold_in(key, i)``, one ``[T, ...]`` draw."""
    keys = leaf_keys(key, task_vectors)
    return jtu.tree_map(lambda kk, x: dare_keep_mask(kk, x.shape, density), keys, task_vectors)
