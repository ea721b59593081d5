r"""Parametric heavy-tailed RHT: Student-t scale mixing of every expert, then an average.

The "Reparameterized Heavy-Tailed" merge of arXiv 2505.21226 has no public formula (its
released code runs the deterministic operator of :mod:`.rht`, Sources S6). This module
implements the paper's *stated* mechanism as a **hypothesis** with one tail parameter
:math:`\nu` (Sources S1 recommends a Student-t scale mixture; THEORY §9 (b)):

1. every coordinate of every expert is multiplied by an independent
   :math:`s_{tp} = \sqrt{\nu / X_{tp}}`, :math:`X_{tp} \sim \chi^2_\nu`, so Gaussian entries
   become Student-:math:`t_\nu`;
2. expert :math:`t` is rescaled to its original (whole-tree) norm, so only the geometry
   moves (:func:`heavy_tailed_reparameterize`);
3. the reparameterized experts are averaged with weights :math:`w` (normalized by their
   sum, default equal) and scaled by :math:`\lambda`:

.. math::
   \mathrm{RHT}_\nu(\tau; w) = \lambda \sum_t \frac{w_t}{\sum_u w_u}
   \frac{\|\tau_t\|}{\|\tau_t \odot s_t\|}\, \tau_t \odot s_t .

:math:`\nu = \infty` is the identity map (plain weight averaging). Not linear (the norm
rescaling), stochastic, permutation invariant in distribution, scale equivariant for a
fixed key. The mixing scales are drawn in float32 whatever the data's dtype, so a float32
run with x64 off matches a float64 run to float32 rounding;
:func:`heavy_tailed_reparameterize` (the per-expert map of the coverage experiment,
:mod:`mergetheory.theory.rht`) draws them in the data's dtype.

Reference: ``wang2025moreexperts`` (arXiv 2505.21226) in ``paper/refs.bib``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._types import Key, Merged, TaskVectors
from ._common import checked, is_concrete

__all__ = ["heavy_tailed_reparameterize", "rht_heavy_tailed"]


@functools.partial(jax.jit, static_argnames=("draw_dtype",))
def _heavy_core(task_vectors, key, nu, draw_dtype=None):
    leaves, treedef = jtu.tree_flatten(task_vectors)
    dtype = jnp.result_type(*leaves)
    draw = dtype if draw_dtype is None else jnp.dtype(draw_dtype)
    sizes = [x.size for x in leaves]
    nu_x = nu.astype(draw)
    finite = jnp.isfinite(nu_x)
    half = jnp.where(finite, nu_x / 2.0, jnp.ones((), draw))
    # one gamma draw for all leaves (XLA:CPU compiles every RNG call separately)
    chi2 = 2.0 * jr.gamma(key, half, (sum(sizes),), draw)
    scale = jnp.where(finite, jnp.sqrt(jnp.where(finite, nu_x, 1.0) / chi2), 1.0).astype(dtype)
    offsets = np.cumsum([0, *sizes])
    mixed = [
        x * scale[offsets[i] : offsets[i + 1]].reshape(x.shape).astype(x.dtype)
        for i, x in enumerate(leaves)
    ]

    def sq_norms(ls):
        return sum(jnp.sum(y * y, axis=tuple(range(1, y.ndim))) for y in ls)

    before, after = sq_norms(leaves), sq_norms(mixed)
    ratio = jnp.where(after > 0, jnp.sqrt(before / jnp.where(after > 0, after, 1.0)), 0.0)
    out = [y * ratio.reshape((-1,) + (1,) * (y.ndim - 1)).astype(y.dtype) for y in mixed]
    return jtu.tree_unflatten(treedef, out)


def heavy_tailed_reparameterize(task_vectors: TaskVectors, key: Key, *, nu: Any) -> TaskVectors:
    r"""Student-t scale mixing :math:`\tilde\tau_{ip} \propto \tau_{ip} s_{ip}` (RHT hypothesis).

    :math:`s_{ip} = \sqrt{\nu/X_{ip}}`, :math:`X_{ip} \sim \chi^2_\nu` i.i.d. over experts
    and coordinates (one draw from ``key`` over all leaves, flattened in tree order); then
    expert ``i`` is rescaled to its original whole-tree norm, so norms are unchanged and
    only the geometry moves.
    Gaussian entries become Student-:math:`t_\nu`. ``nu = inf`` is the identity.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: PRNG key.
      nu: tail index :math:`\nu > 0` (``inf`` allowed; may be traced).

    Returns:
      The reparameterized task vectors (per-expert norms preserved).
    """
    return _heavy_core(task_vectors, key, jnp.asarray(nu))


@jax.jit
def _rht_heavy_core(task_vectors, key, nu, weights, scale):
    mixed = _heavy_core(task_vectors, key, nu, draw_dtype="float32")

    def avg(x):
        num = x.shape[0]
        w = jnp.full((num,), 1.0 / num, x.dtype) if weights is None else weights.astype(x.dtype)
        w = w / jnp.sum(w)
        return jnp.asarray(scale, x.dtype) * jnp.tensordot(w, x, axes=1)

    return jtu.tree_map(avg, mixed)


@checked()
def rht_heavy_tailed(
    task_vectors: TaskVectors,
    key: Key,
    *,
    weights: Any = None,
    nu: Any = 3.0,
    scale: Any = 1.0,
) -> Merged:
    r"""Parametric heavy-tailed RHT (a hypothesis; see the module docstring).

    .. math::
       \mathrm{RHT}_\nu(\tau; w) = \lambda \sum_t \frac{w_t}{\sum_u w_u}
       \frac{\|\tau_t\|}{\|\tau_t \odot s_t\|}\, \tau_t \odot s_t,
       \quad s_{tp} = \sqrt{\nu / \chi^2_{\nu, tp}} .

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: PRNG key (the mixing scales).
      weights: optional ``[T]`` weights (normalized by their sum; default equal).
      nu: tail index :math:`\nu > 0`, ``inf`` for no mixing (traceable).
      scale: :math:`\lambda` (traceable).

    Returns:
      The merged pytree (dtypes preserved).

    Example:
      >>> tv = {"w": jr.normal(jr.key(0), (4, 8, 8))}
      >>> rht_heavy_tailed(tv, jr.key(1), nu=3.0)["w"].shape
      (8, 8)
    """
    if is_concrete(nu) and not float(jnp.asarray(nu)) > 0:
        raise ValueError(f"rht_heavy_tailed: nu must be > 0 (inf allowed), got {nu}")
    if weights is not None and is_concrete(weights) and float(jnp.sum(jnp.asarray(weights))) == 0:
        raise ValueError("rht_heavy_tailed: weights sum to 0; they cannot be normalized")
    return _rht_heavy_core(task_vectors, key, jnp.asarray(nu), weights, jnp.asarray(scale))
