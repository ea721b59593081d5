r"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024, arXiv 2312.06795).

Each task vector is sparsified by a *two-sided* magnitude mask, dropping the few largest
entries (outliers) and the many smallest ones (noise), then the masked task vectors are
summed and scaled:

.. math::

   \tilde\tau_t = \tau_t \odot \mathbb 1\big[\lfloor n\gamma\rfloor \le
   \operatorname{rank}(|\tau_t|) < \lfloor n\gamma\rfloor + \lfloor n\beta\rfloor\big],
   \qquad \Delta = \alpha \sum_t w_t \tilde\tau_t,

where ranks count from 0 in *descending* order of magnitude within each row (``n`` entries)
or within the whole tensor.

**Two variants** (``scope``):

* ``"row"`` (default; the official code, ``rezazzr/breadcrumbs`` ``TaskVectorMiddleKeep``
  with ``remove_first=True``): per row of the last dimension, ``torch.topk`` removes the top
  ``int(n * gamma)`` entries by magnitude, then keeps the top ``int(n * beta)`` of what is
  left, i.e. the entries ranked :math:`(\gamma, \gamma+\beta]`. 1-D leaves are one row;
  scalar leaves are kept unchanged.
* ``"tensor"`` (mergekit ``breadcrumbs`` / ``magnitude_outliers``): the same over the whole
  flattened tensor, with ``beta`` playing mergekit's ``density`` (the fraction kept) and
  mergekit's cap: if :math:`\gamma + \beta > 1` fewer top entries are removed so that
  :math:`\lfloor N\beta\rfloor` are kept (hence ``beta >= 1`` keeps everything). Not
  reproduced: mergekit's ``indices[n_bot:-n_top]`` keeps *nothing* when
  ``int(gamma * N) = 0`` (an empty slice), and its optional rescaling / weight
  normalisation; here only the mask is taken from mergekit.

Defaults ``beta = 0.15``, ``gamma = 0.006``, ``scale = 0.2`` are the starting point of the
official hyperparameter search (``find_best_hyperparam.py``; ranges
:math:`\alpha\in[0.01, 1]`, :math:`\beta\in[0.05, 0.2]`, :math:`\gamma\in[0.001, 0.01]`).

The band is found by thresholds, not by sorting indices: an entry is kept iff
:math:`\theta_{\text{top}+\text{keep}} \le |x| < \theta_{\text{top}}` with
:math:`\theta_k` the :math:`k`-th largest magnitude of its row (one value sort per row;
rows or tensors longer than ``2**15`` use the exact count search of
:func:`mergetheory.merge.magnitude_threshold` instead of a 26 s sort,
docs/width_engine.md). This equals the index-based rule of the references except when
non-zero magnitudes tie exactly at a band edge (``torch.topk`` breaks such ties in an
unspecified order; here tied entries fall on the same side). ``beta``, ``gamma`` and
``scale`` are traced in the jitted core, so the counts :math:`\lfloor n\beta\rfloor` are
floored in floating point there (float64 under x64; in float32 a product such as
``n * beta = 29`` that is inexact in binary can come out one lower than Python's
``int(n * beta)``).

Cost: one value sort per row, :math:`O(T d \log n)`; a few passes over the data for
rows longer than ``2**15`` (and the ``"tensor"`` scope on large leaves).

Reference (``paper/refs.bib``): ``davari2024breadcrumbs``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import Key, Merged, TaskVectors, Weights
from ..tree import sum_tasks
from ._common import as_weights, check_choice, checked, is_concrete
from .topk import magnitude_threshold, num_kept

__all__ = ["breadcrumbs", "breadcrumbs_mask"]

_SCOPES = ("row", "tensor")


_SORT_MAX = 1 << 15  # rows up to this length are sorted; longer ones use the count search


def _band_mask(mag: jax.Array, beta: Any, gamma: Any, cap: bool) -> jax.Array:
    """Keep-mask of the magnitudes ranked in ``[top, top + keep)`` along the last axis."""
    n = mag.shape[-1]
    keep = num_kept(beta, n)
    top = num_kept(gamma, n)
    if cap:  # mergekit: remove fewer outliers rather than keep fewer than keep
        top = jnp.minimum(top, n - keep)
    hi = jnp.minimum(top + keep, n)
    if n <= _SORT_MAX:
        # non-negative floats order like their bit patterns, and XLA:CPU sorts integers
        # about 6x faster than floats (no total-order comparator)
        idt = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(mag.dtype).itemsize]
        srt = jnp.sort(jax.lax.bitcast_convert_type(mag, idt), axis=-1)

        def kth_largest(k: jax.Array) -> jax.Array:
            v = jax.lax.dynamic_index_in_dim(srt, n - jnp.maximum(k, 1), axis=-1)
            v = jax.lax.bitcast_convert_type(v, mag.dtype)
            return jnp.where(k > 0, v, jnp.asarray(jnp.inf, mag.dtype))

        th_top, th_hi = kth_largest(top), kth_largest(hi)
    else:
        rows = mag.reshape(-1, n)
        th_top = magnitude_threshold(rows, top).reshape(mag.shape[:-1] + (1,))
        th_hi = magnitude_threshold(rows, hi).reshape(mag.shape[:-1] + (1,))
        mag = mag.astype(th_top.dtype)
    return (mag >= th_hi) & (mag < th_top)


def breadcrumbs_mask(
    x: jax.Array,
    *,
    beta: Any = 0.15,
    gamma: Any = 0.006,
    scope: Literal["row", "tensor"] = "row",
) -> jax.Array:
    r"""The Breadcrumbs keep-mask of one ``[T, ...]`` leaf (per task).

    Args:
      x: ``[T, ...]`` task-vector leaf.
      beta: fraction kept (after the top ``gamma`` fraction is removed).
      gamma: fraction of the largest-magnitude entries removed.
      scope: ``"row"`` (last dimension, official) or ``"tensor"`` (mergekit).

    Returns:
      Bool array shaped like ``x`` (all True for scalar-per-task leaves in ``"row"`` scope).
    """
    check_choice(scope, _SCOPES, name="scope")
    mag = jnp.abs(x)
    if scope == "tensor":
        flat = mag.reshape(x.shape[0], -1)
        return _band_mask(flat, beta, gamma, cap=True).reshape(x.shape)
    if x.ndim == 1:  # a scalar per task: the official code leaves 0-d tensors alone
        return jnp.ones(x.shape, bool)
    return _band_mask(mag, beta, gamma, cap=False)


@checked(choices={"scope": _SCOPES})
def breadcrumbs(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Weights | None = None,
    beta: Any = 0.15,
    gamma: Any = 0.006,
    scale: Any = 0.2,
    scope: Literal["row", "tensor"] = "row",
) -> Merged:
    r"""Model Breadcrumbs: drop the top-:math:`\gamma`, keep the next :math:`\beta`, sum.

    .. math::

       \Delta = \alpha \sum_t w_t\, \tau_t \odot M_t(\beta, \gamma),

    with :math:`M_t` from :func:`breadcrumbs_mask` (per row by default).

    Properties: scale-equivariant (ranks do not change under :math:`\tau \mapsto a\tau`,
    :math:`a > 0`), invariant to the task order, not linear; the identity at ``T = 1``
    with ``beta = 1, gamma = 0, scale = 1``.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator).
      weights: optional ``[T]`` weights :math:`w_t` (default all 1).
      beta: fraction of each row kept after the removal (traceable; default 0.15).
      gamma: fraction of each row's largest entries removed (traceable; default 0.006).
      scale: :math:`\alpha` (traceable; default 0.2).
      scope: static, ``"row"`` (official) or ``"tensor"`` (mergekit).

    Returns:
      The merged update (same pytree without the task axis).

    Example:
      >>> tv = {"w": jr.normal(jr.key(0), (3, 4, 1000))}
      >>> breadcrumbs(tv, jr.key(1))["w"].shape
      (4, 1000)

    Reference: Davari & Belilovsky, ECCV 2024 (``davari2024breadcrumbs``).
    """
    del key
    for name, value in (("beta", beta), ("gamma", gamma)):
        if is_concrete(value) and not 0.0 <= float(np.asarray(value)) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] (a fraction of entries), got {value}")
    return _breadcrumbs(task_vectors, weights, beta, gamma, scale, scope)


@functools.partial(jax.jit, static_argnames=("scope",))
def _breadcrumbs(
    task_vectors: TaskVectors, weights: Any, beta: Any, gamma: Any, scale: Any, scope: str
) -> Merged:
    def one(x: jax.Array) -> jax.Array:
        mask = breadcrumbs_mask(x, beta=beta, gamma=gamma, scope=scope)
        kept = jnp.where(mask, x, jnp.zeros((), x.dtype))
        w = as_weights(weights, x.shape[0], x.dtype)
        return jnp.asarray(scale).astype(x.dtype) * sum_tasks(kept, w)

    return jtu.tree_map(one, task_vectors)
