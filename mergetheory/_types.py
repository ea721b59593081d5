"""Type aliases used across mergetheory (documentation only; no runtime checking).

Shapes follow the house convention: a *task-vector set* is a pytree whose every leaf has a
leading task axis ``[T, ...]``; a *merged update* is the same pytree without that axis.
"""

from __future__ import annotations

from typing import Any

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

__all__ = [
    "ArrayLike",
    "Gram",
    "Hyper",
    "Key",
    "Merged",
    "Scalar",
    "TaskVectors",
    "Weights",
]
