r"""EMR-Merging: elect, mask, rescale (Huang et al., NeurIPS 2024, arXiv 2405.17461).

EMR does not produce one merged model: it stores one *unified* task vector
:math:`\tau_{\text{uni}}` plus, per task, a one-bit mask :math:`M_t` and a scalar
:math:`\lambda_t`, and serves task ``t`` (whose identity must be known at inference) with

.. math::

   \hat\theta_t = \theta_0 + \lambda_t\, M_t \odot \tau_{\text{uni}} .

**Elect** (per entry). :math:`\gamma = \operatorname{sgn}(\sum_t \tau_t)`,
:math:`\epsilon = \max_t\{|\tau_t| : \operatorname{sgn}\tau_t = \gamma\}`,
:math:`\tau_{\text{uni}} = \gamma \odot \epsilon`.

* ``sign_rule="code"`` (default; the official code ``main_emr_merging.py``):
  ``flag = (mean_t tau_t > 0) * 2 - 1``, so a zero sum elects :math:`-1` (an entry with
  :math:`\tau = (1, -1)` gives :math:`\tau_{\text{uni}} = -1`).
* ``sign_rule="paper"``: :math:`\operatorname{sgn}(0) = 0`, so such an entry gives 0.

The two differ only where the task sum is exactly zero.

**Mask.** :math:`M_t = (\tau_t \odot \tau_{\text{uni}} > 0)`.

**Rescale.** ``rescaler="paper"`` (default), a global ratio over the whole model,

.. math:: \lambda_t = \frac{\sum |\tau_t|}{\sum |M_t \odot \tau_{\text{uni}}|}

(the paper typesets the denominator with a typo, ":math:`\tau_F`"). ``rescaler="code"``:
the official code computes :math:`\sum_\ell \operatorname{mean}|\tau_t^\ell| /
\sum_\ell \operatorname{mean}|M_t^\ell \odot \tau_{\text{uni}}^\ell|`, a ratio of sums of
*per-tensor means*, which weights small tensors (biases, norms) far more; the two agree
when every tensor has the same size. A task with no surviving entry gets
:math:`\lambda_t = 0` (its update is zero either way).

**Theory checked in the tests.** With :math:`\mathrm{Dis} = \frac1T\sum_t\|\tau_t -
\tau_{\text{uni}}\|^2` and :math:`\mathrm{Dis}_M`, :math:`\mathrm{Dis}_{M,\lambda}` the
same with :math:`M_t\odot\tau_{\text{uni}}` and :math:`\lambda_t M_t\odot\tau_{\text{uni}}`:
the paper's Eq. 4, :math:`\mathrm{Dis}_M \le \mathrm{Dis}`, holds entrywise (where
:math:`M_t = 0`, :math:`\tau_t \tau_{\text{uni}} \le 0` so
:math:`\tau_t^2 \le (\tau_t - \tau_{\text{uni}})^2`). Eq. 5,
:math:`\mathrm{Dis}_{M,\lambda} \le \mathrm{Dis}_M`, is *not* a theorem:
:math:`\tau_1 = (1, -1)`, :math:`\tau_2 = (0.5, 2)` give :math:`\lambda_1 = 2`,
:math:`\mathrm{Dis}_M = 1 < \mathrm{Dis}_{M,\lambda} = 2` for task 1.

**Registry.** ``MERGE_OPERATORS["emr"]`` must return a single merged pytree, so it is
:func:`emr` = :math:`\tau_{\text{uni}}` alone (no masks, no rescalers). Use
:func:`emr_merge` and :func:`emr_task_update` for the real per-task EMR models.

Cost: :math:`O(T d)` time; output :math:`d` floats, :math:`T d` mask bits (stored here as
``bool``, one byte per entry, like the official code) and :math:`T` scalars.

Reference (``paper/refs.bib``): ``huang2024emr``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import Key, Merged, TaskVectors
from ..tree import sum_tasks
from ._common import checked
from .kernels import max_tasks

__all__ = ["EMROutput", "emr", "emr_merge", "emr_task_update"]

_SIGN_RULES = ("code", "paper")


class EMROutput(NamedTuple):
    r"""The EMR model set.

    Attributes:
      unified: :math:`\tau_{\text{uni}}`, the task-vector pytree without the task axis.
      masks: the same pytree with ``[T, ...]`` bool leaves, :math:`M_t`.
      rescalers: ``[T]`` scalars :math:`\lambda_t`.
    """

    unified: Merged
    masks: Any
    rescalers: jax.Array


def _elect(x: jax.Array, sign_rule: str) -> jax.Array:
    total = sum_tasks(x)
    one = jnp.ones((), x.dtype)
    gamma = jnp.where(total > 0, one, -one) if sign_rule == "code" else jnp.sign(total)
    agree = x * jnp.expand_dims(gamma, 0) > 0
    eps = max_tasks(jnp.where(agree, jnp.abs(x), jnp.zeros((), x.dtype)))
    return gamma * eps


@checked(choices={"rescaler": ("paper", "code"), "sign_rule": _SIGN_RULES})
def emr_merge(
    task_vectors: TaskVectors,
    *,
    rescaler: Literal["paper", "code"] = "paper",
    sign_rule: Literal["code", "paper"] = "code",
) -> EMROutput:
    r"""EMR-Merging: unified task vector, per-task masks and rescalers.

    .. math::

       \tau_{\text{uni}} = \gamma\odot\max_t\{|\tau_t| : \operatorname{sgn}\tau_t =
       \gamma\},\quad M_t = (\tau_t\odot\tau_{\text{uni}} > 0),\quad
       \lambda_t = \frac{\sum|\tau_t|}{\sum|M_t\odot\tau_{\text{uni}}|}.

    At ``T = 1``, :math:`\tau_{\text{uni}} = \tau_1`, :math:`M_1 = (\tau_1 \ne 0)` and
    :math:`\lambda_1 = 1`, so :func:`emr_task_update` returns the task vector exactly.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      rescaler: ``"paper"`` (global ratio of sums, default) or ``"code"`` (ratio of sums
        of per-tensor means, as the official code); see the module docstring.
      sign_rule: ``"code"`` (zero sum elects -1, default, as the official code) or
        ``"paper"`` (zero sum elects 0).

    Returns:
      :class:`EMROutput` ``(unified, masks, rescalers)``.

    Example:
      >>> out = emr_merge({"w": jnp.array([[1.0, -1.0], [0.5, 2.0]])})
      >>> out.unified["w"].tolist(), [round(float(v), 4) for v in out.rescalers]
      ([1.0, 2.0], [2.0, 0.8333])

    Reference: Huang et al., NeurIPS 2024 (``huang2024emr``).
    """
    return _emr_merge(task_vectors, rescaler, sign_rule)


@functools.partial(jax.jit, static_argnames=("rescaler", "sign_rule"))
def _emr_merge(task_vectors: TaskVectors, rescaler: str, sign_rule: str) -> EMROutput:
    leaves, treedef = jtu.tree_flatten(task_vectors)
    unified = [_elect(x, sign_rule) for x in leaves]
    masks = [x * jnp.expand_dims(u, 0) > 0 for x, u in zip(leaves, unified, strict=True)]
    dtype = jax.dtypes.canonicalize_dtype(np.result_type(*[x.dtype for x in leaves]))
    num = leaves[0].shape[0]
    numer = jnp.zeros((num,), dtype)
    denom = jnp.zeros((num,), dtype)
    for x, u, m in zip(leaves, unified, masks, strict=True):
        a = jnp.abs(x).reshape(num, -1)
        b = jnp.where(m, jnp.expand_dims(jnp.abs(u), 0), jnp.zeros((), u.dtype)).reshape(num, -1)
        reduce = jnp.mean if rescaler == "code" else jnp.sum
        numer = numer + reduce(a, axis=1).astype(dtype)
        denom = denom + reduce(b, axis=1).astype(dtype)
    rescalers = jnp.where(
        denom > 0, numer / jnp.where(denom > 0, denom, jnp.ones((), dtype)), jnp.zeros((), dtype)
    )
    return EMROutput(
        jtu.tree_unflatten(treedef, unified), jtu.tree_unflatten(treedef, masks), rescalers
    )


def emr_task_update(output: EMROutput, t: Any) -> Merged:
    r"""Task ``t``'s EMR update :math:`\lambda_t\, M_t \odot \tau_{\text{uni}}`.

    Args:
      output: the :class:`EMROutput` of :func:`emr_merge`.
      t: task index (Python int or traced integer scalar).

    Returns:
      A pytree shaped like ``output.unified``; the task-``t`` model is
      :math:`\theta_0 + ` this.
    """
    return _emr_task_update(output, t)


@jax.jit
def _emr_task_update(output: EMROutput, t: Any) -> Merged:
    def one(u: jax.Array, m: jax.Array) -> jax.Array:
        lam = output.rescalers[t].astype(u.dtype)
        return lam * jnp.where(m[t], u, jnp.zeros((), u.dtype))

    return jtu.tree_map(one, output.unified, output.masks)


@checked(choices={"sign_rule": _SIGN_RULES})
def emr(
    task_vectors: TaskVectors,
    key: Key,
    *,
    sign_rule: Literal["code", "paper"] = "code",
) -> Merged:
    r"""The unified EMR task vector :math:`\tau_{\text{uni}}` alone (registry form).

    :math:`\tau_{\text{uni}} = \gamma\odot\max_t\{|\tau_t| : \operatorname{sgn}\tau_t =
    \gamma\}` with :math:`\gamma = \operatorname{sgn}\sum_t\tau_t` (``sign_rule`` as in
    :func:`emr_merge`). This is *not* an EMR model: EMR serves task ``t`` with
    :math:`\lambda_t M_t\odot\tau_{\text{uni}}` (:func:`emr_merge`,
    :func:`emr_task_update`). Masks and rescalers are not computed here.

    Properties: scale-equivariant, invariant to the task order, the identity at ``T = 1``,
    not linear.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      key: unused (deterministic operator).
      sign_rule: ``"code"`` (default) or ``"paper"``.

    Returns:
      :math:`\tau_{\text{uni}}` (same pytree without the task axis).
    """
    del key
    return _emr_unified(task_vectors, sign_rule)


@functools.partial(jax.jit, static_argnames=("sign_rule",))
def _emr_unified(task_vectors: TaskVectors, sign_rule: str) -> Merged:
    return jtu.tree_map(lambda x: _elect(x, sign_rule), task_vectors)
