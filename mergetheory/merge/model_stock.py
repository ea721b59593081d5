r"""Model Stock (Jang, Yun, Han, ECCV 2024, arXiv 2403.19522).

Model Stock interpolates between the average of ``k`` fine-tuned models and the base,
with a ratio set by the angle :math:`\varphi` between the fine-tuned offsets:

.. math::

   \theta = t\,\bar\theta_{\text{ft}} + (1 - t)\,\theta_0,\qquad
   t = \frac{k\cos\varphi}{1 + (k - 1)\cos\varphi}.

In task-vector coordinates (the base is the origin) this is
:math:`\Delta = t \cdot \frac1k\sum_t \tau_t`, with :math:`\cos\varphi` computed from the
Gram matrix of the :math:`\tau_t` (one :math:`O(k^2 d)` pass).

**Which angle for** :math:`k > 2`. The paper derives :math:`t` assuming all pairwise
angles are equal and does not say how to estimate the common angle from data.

* ``cosine_average="cosines"`` (default; mergekit): the mean of the pairwise cosines.
* ``cosine_average="angles"`` (FusionBench): the mean of the pairwise angles
  :math:`\arccos(\cos\varphi_{ij})` (FusionBench averages in degrees, which is the same
  mean), then its cosine.

The two agree when the angles are equal (the paper's model) and differ otherwise
(:math:`\cos` of a mean angle :math:`\ge` the mean cosine for angles in
:math:`[0, \pi/2]`, by concavity of :math:`\cos` there). The default is the mean cosine
because (i) it is a linear function of the normalised Gram matrix, the object the width
engine already computes, (ii) it is smooth, whereas :math:`\arccos` has an infinite
derivative at :math:`\cos = \pm 1` (gradients and sweeps through :math:`\varphi\to0`
misbehave), and (iii) mergekit is the most used implementation.

**Granularity** (``granularity``): ``"tensor"`` (default; one angle per leaf, as the paper
applies the rule "layer-wise" and both reference codes do per tensor), ``"row"`` (mergekit
``filter_wise``: one angle per row of the last dimension; 1-D leaves are one row) and
``"global"`` (one angle for the whole model, from :func:`mergetheory.tree.gram_matrix`).

**Edge cases.** With ``T = 1`` there is no pair; ``cos = 1`` is used, so ``t = 1`` and the
operator is the identity. A zero task vector gives cosine 0 with every other (exact guard,
scale-free; mergekit clamps the norm product at ``1e-6`` and FusionBench adds ``1e-8``,
which breaks scale equivariance for tiny updates). Cosines are clipped to ``[-1, 1]``. The
formula has a pole at :math:`\cos\varphi = -1/(k-1)` and gives :math:`t < 0` for negative
cosines; no clipping is applied (neither reference clips there either).

Reference (``paper/refs.bib``): ``jang2024modelstock``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import Key, Merged, TaskVectors
from ..tree import gram_matrix, num_tasks, sum_tasks
from ._common import check_choice, checked

__all__ = ["model_stock", "model_stock_ratio", "pairwise_cosine"]

_HI = "highest"


def pairwise_cosine(gram: jax.Array, cosine_average: str = "cosines") -> jax.Array:
    r"""Average pairwise cosine from Gram matrices ``[..., T, T]``.

    Args:
      gram: ``[..., T, T]`` Gram matrices :math:`G_{ij} = \langle\tau_i,\tau_j\rangle`.
      cosine_average: ``"cosines"`` (mean of the :math:`\binom T2` cosines) or ``"angles"``
        (cosine of the mean angle).

    Returns:
      ``[...]`` the averaged :math:`\cos\varphi` (1 when ``T = 1``).
    """
    check_choice(cosine_average, ("cosines", "angles"), name="cosine_average")
    num = gram.shape[-1]
    if num == 1:
        return jnp.ones(gram.shape[:-2], gram.dtype)
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram, axis1=-2, axis2=-1), 0))
    prod = norms[..., :, None] * norms[..., None, :]
    safe = jnp.where(prod > 0, prod, jnp.ones((), prod.dtype))
    cos = jnp.clip(jnp.where(prod > 0, gram / safe, jnp.zeros((), gram.dtype)), -1, 1)
    iu, ju = np.triu_indices(num, k=1)
    pairs = cos[..., iu, ju]
    if cosine_average == "angles":
        return jnp.cos(jnp.mean(jnp.arccos(pairs), axis=-1))
    return jnp.mean(pairs, axis=-1)


def model_stock_ratio(cos_phi: Any, num_models: int) -> jax.Array:
    r"""The Model Stock ratio :math:`t = k\cos\varphi / (1 + (k - 1)\cos\varphi)`.

    Args:
      cos_phi: cosine(s) of the angle between fine-tuned offsets.
      num_models: ``k``.

    Returns:
      ``t`` (1 at :math:`\cos\varphi = 1`; :math:`2c/(1+c)` for two models).
    """
    c = jnp.asarray(cos_phi)
    return num_models * c / (1 + (num_models - 1) * c)


@checked(
    choices={"cosine_average": ("cosines", "angles"), "granularity": ("tensor", "row", "global")}
)
def model_stock(
    task_vectors: TaskVectors,
    key: Key,
    *,
    cosine_average: Literal["cosines", "angles"] = "cosines",
    granularity: Literal["tensor", "row", "global"] = "tensor",
) -> Merged:
    r"""Model Stock: the task mean shrunk towards the base by the angle between tasks.

    .. math::

       \Delta = t\,\frac1k\sum_{t'}\tau_{t'},\qquad
       t = \frac{k\cos\varphi}{1 + (k-1)\cos\varphi},

    with :math:`\cos\varphi` the averaged pairwise cosine (see the module docstring for
    ``cosine_average`` and ``granularity``).

    Properties: scale-equivariant, invariant to the task order, the identity at ``T = 1``,
    not linear. The base model is the origin of the task vectors, so it is not needed.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves (``k = T``).
      key: unused (deterministic operator).
      cosine_average: static, ``"cosines"`` (mergekit, default) or ``"angles"``
        (FusionBench).
      granularity: static, ``"tensor"`` (default), ``"row"`` or ``"global"``.

    Returns:
      The merged update (same pytree without the task axis).

    Example:
      >>> tv = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}  # orthogonal: t = 0
      >>> model_stock(tv, jr.key(0))["w"].tolist()
      [0.0, 0.0]

    Reference: Jang et al., ECCV 2024 (``jang2024modelstock``).
    """
    del key
    return _model_stock(task_vectors, cosine_average, granularity)


@functools.partial(jax.jit, static_argnames=("cosine_average", "granularity"))
def _model_stock(task_vectors: TaskVectors, cosine_average: str, granularity: str) -> Merged:
    num = num_tasks(task_vectors)

    if granularity == "global":
        cos = pairwise_cosine(gram_matrix(task_vectors), cosine_average)
        ratio = model_stock_ratio(cos, num)
        return jtu.tree_map(lambda x: ratio.astype(x.dtype) * (sum_tasks(x) / num), task_vectors)

    def one(x: jax.Array) -> jax.Array:
        mean = sum_tasks(x) / num
        if granularity == "row" and x.ndim >= 2:
            rows = x.reshape(num, -1, x.shape[-1])
            gram = jnp.einsum("irc,jrc->rij", rows, rows, precision=_HI)
            ratio = model_stock_ratio(pairwise_cosine(gram, cosine_average), num)
            return ratio.reshape(x.shape[1:-1] + (1,)).astype(x.dtype) * mean
        flat = x.reshape(num, -1)
        gram = jnp.matmul(flat, flat.T, precision=_HI)
        ratio = model_stock_ratio(pairwise_cosine(gram, cosine_average), num)
        return ratio.astype(x.dtype) * mean

    return jtu.tree_map(one, task_vectors)
