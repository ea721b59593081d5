r"""Exact magnitude top-k: ``k = floor(density * n)``, per-row thresholds and masks.

PEFT (``magnitude_based_pruning``) keeps the :math:`k = \lfloor \rho\, n \rfloor` largest
:math:`|x|` of a tensor. Here the kept set is :math:`\{ i : |x_i| \ge \theta_k \}` with
:math:`\theta_k` the :math:`k`-th largest magnitude,

.. math::
   \theta_k = \max\{\, t : c(t) \ge k \,\}, \qquad c(t) = \#\{ i : |x_i| \ge t \};

it has exactly :math:`k` elements unless several entries tie at :math:`\theta_k`, in which
case **all tied entries are kept** (the official TIES code does the same, ``>=``;
``torch.topk`` would break the tie arbitrarily). ``k = 0`` keeps nothing
(:math:`\theta = +\infty`). Magnitudes :math:`\le 2^{-100}` (:data:`MAGNITUDE_FLOOR`) are
ranked as ties with 0. Rows of at most ``2**15`` entries are sorted, longer rows searched
exactly on counts (:func:`mergetheory.merge.kernels.threshold_search`; both give the same
values bit for bit).

Reference: PEFT ``merge_utils.magnitude_based_pruning``; ``docs/merge_kernels.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._common import is_concrete
from .kernels import MAGNITUDE_FLOOR, compute_dtype, threshold_search, threshold_sort

__all__ = ["MAGNITUDE_FLOOR", "magnitude_threshold", "num_kept", "topk_mask"]

_SORT_MAX = 1 << 15  # rows up to this many entries are sorted, longer ones searched


# --------------------------------------------------------------------------------------
# k = floor(density * n)
# --------------------------------------------------------------------------------------


def num_kept(density: Any, num: int) -> jax.Array:
    r"""Entries kept, :math:`k = \lfloor \rho\, n \rfloor` (PEFT's ``int(density * numel)``).

    A concrete ``density`` is converted with Python floats, exactly as PEFT does
    (``int(0.7 * 10) == 7``). A traced ``density`` is floored in its own dtype inside the
    trace; with a float32 ``density`` (x64 off) ``k`` can then differ by one from the
    float64 value when :math:`\rho n` is (nearly) an integer.

    Returns:
      int32 scalar (or the batch shape of a traced ``density``), clipped to ``[0, n]``.
    """
    if num >= 2**31:
        raise ValueError(f"top-k over {num} >= 2**31 entries per task is not supported")
    if is_concrete(density):
        return jnp.asarray(min(max(int(float(density) * num), 0), num), dtype=jnp.int32)
    d = jnp.asarray(density)
    return jnp.clip(jnp.floor(d * num), 0, num).astype(jnp.int32)


def magnitude_threshold(
    x: jax.Array | Sequence[jax.Array],
    k: Any,
    *,
    method: str = "auto",
) -> jax.Array:
    r"""Per-row magnitude threshold of exact top-k: the :math:`k`-th largest :math:`|x_{r,\cdot}|`.

    Row ``r`` is ``x[r]`` flattened; with a list of arrays (all ``[R, ...]``), row ``r`` is
    the concatenation of every ``x_l[r]`` (used for TIES' whole-model "global" trim).

    Keeping :math:`\{|x_{r,i}| \ge \theta_r\}` keeps the :math:`k` largest magnitudes, plus
    any entries tied with the :math:`k`-th (see the module docstring, also for the
    :math:`2^{-100}` floor).

    Args:
      x: array ``[R, ...]`` or a sequence of arrays with the same leading ``R``.
      k: int scalar or ``[R]`` ints (traced is fine), ``0 <= k <= n``.
      method: ``"auto"`` (sort rows of at most ``2**15`` entries, search longer ones),
        ``"sort"`` or ``"search"``; all three return the same values.

    Returns:
      ``[R]`` thresholds in float32 (float64 for float64 input); ``+inf`` where ``k = 0``.

    Example:
      >>> x = jnp.array([[3.0, -1.0, 2.0, 0.5]])
      >>> magnitude_threshold(x, 2)
      Array([2.], dtype=float32)
    """
    leaves = [x] if isinstance(x, jax.Array | np.ndarray) else list(x)
    rows = leaves[0].shape[0]
    flat = [jnp.asarray(leaf).reshape(rows, -1) for leaf in leaves]
    cdt = compute_dtype(flat)
    num = sum(f.shape[1] for f in flat)
    if num >= 2**31:
        raise ValueError(f"top-k over {num} >= 2**31 entries per row is not supported")
    k = jnp.broadcast_to(jnp.asarray(k).astype(jnp.int32), (rows,))
    if method == "auto":
        method = "sort" if num <= _SORT_MAX else "search"
    if method == "sort":
        return threshold_sort(flat, k, cdt)
    if method == "search":
        return threshold_search(flat, k, cdt)
    raise ValueError(f"method must be 'auto', 'sort' or 'search', got {method!r}")


def topk_mask(x: jax.Array, k: Any, *, method: str = "auto") -> jax.Array:
    r"""Boolean mask of the top-k magnitudes of each row ``x[r]`` (``>= k`` kept on ties).

    Args:
      x: ``[R, ...]``; the top-k is taken over each ``x[r]`` flattened.
      k: int scalar or ``[R]``.
      method: see :func:`magnitude_threshold`.

    Returns:
      bool array shaped like ``x``.
    """
    thr = magnitude_threshold(x, k, method=method)
    return jnp.abs(x).astype(thr.dtype) >= thr.reshape(thr.shape + (1,) * (x.ndim - 1))
