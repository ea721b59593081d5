"""Type aliases used across mergetheory (documentation only; no runtime checking).

Shapes follow the house convention: a *task-vector set* is a pytree whose every leaf has a
leading task axis ``[T, ...]``; a *merged update* is the same pytree without that axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

TaskVectors = PyTree[Float[Array, "T ..."]]
"""A pytree of leaves with a leading task axis ``[T, ...]``."""

Merged = PyTree[Float[Array, "..."]]
"""A merged update: the task-vector pytree without the task axis."""

Scalar = Float[Array, ""] | float
Weights = Float[Array, "T"]
Gram = Float[Array, "T T"]
Key = PRNGKeyArray
ArrayLike = jax.typing.ArrayLike
Hyper = Any


class LoraFactors(NamedTuple):
    r"""One adapted module of ``T`` LoRA experts: :math:`\Delta W_i = s_i B_i A_i`.

    A NamedTuple, hence a pytree (``B``, ``A``, ``scaling`` are its children).

    Attributes:
      B: ``[T, d, r]`` (or stacked ``[L, T, d, r]``), PEFT's ``lora_B`` per expert.
      A: ``[T, r, k]`` (or stacked ``[L, T, r, k]``), PEFT's ``lora_A`` per expert.
      scaling: scalar or per-expert ``[T]`` factor ``s`` (PEFT: ``lora_alpha / r``).
    """

    B: Any
    A: Any
    scaling: Any = 1.0


def is_lora_factors(node: Any) -> bool:
    """True for a :class:`LoraFactors` node (use as ``is_leaf`` when flattening)."""
    return isinstance(node, LoraFactors)


__all__ = [
    "ArrayLike",
    "Gram",
    "Hyper",
    "Key",
    "LoraFactors",
    "Merged",
    "Scalar",
    "TaskVectors",
    "Weights",
    "is_lora_factors",
]
