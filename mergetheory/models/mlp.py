r"""A small multilayer perceptron in Flax NNX, used functionally on pure-dict parameters.

Why NNX: in Flax 0.12 NNX is the API the Flax documentation recommends for new code (Linen
is maintained but no longer the default). Merging, however, wants parameters as a plain
pytree, so NNX is used only at the edges: :func:`init_mlp` builds an :class:`MLP` and
returns ``nnx.split``'s state as a *pure dict* (``{"hidden_0": {"kernel", "bias"}, ...,
"out": {...}}``), and :func:`mlp_apply` rebuilds the module from that dict with
``nnx.merge`` inside the traced function. Task vectors, merges, checkpoints and ``vmap``
over parameter sets therefore all see ordinary nested dicts of arrays.

The network is

.. math::  f_\theta(x) = W_L\,\mathrm{relu}(\cdots\mathrm{relu}(W_1 x + b_1)\cdots) + b_L,

with the widths of the hidden layers given by ``hidden`` (default one layer of 32 units).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._types import Key

__all__ = ["MLP", "init_mlp", "mlp_apply", "mlp_dims"]

# LeCun-normal without truncation: same fan-in variance as flax's default ``lecun_normal``,
# but its XLA:CPU program compiles several times faster than the truncated normal's.
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")


class MLP(nnx.Module):
    """ReLU MLP: ``in_features -> hidden[0] -> ... -> num_classes`` logits.

    Layers are named ``hidden_0, hidden_1, ...`` and ``out`` (stable, string keys, so the
    parameter dict round-trips through every checkpoint format).
    """

    def __init__(
        self, in_features: int, hidden: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs
    ):
        """Build the layers (``nnx.Linear``, untruncated LeCun-normal kernels, zero biases)."""
        self.num_hidden = len(hidden)
        width = in_features
        for i, h in enumerate(hidden):
            setattr(self, f"hidden_{i}", nnx.Linear(width, h, kernel_init=_KERNEL_INIT, rngs=rngs))
            width = h
        self.out = nnx.Linear(width, num_classes, kernel_init=_KERNEL_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``[..., num_classes]`` of inputs ``[..., in_features]``."""
        for i in range(self.num_hidden):
            x = jax.nn.relu(getattr(self, f"hidden_{i}")(x))
        return self.out(x)


def mlp_dims(params: dict[str, Any]) -> tuple[int, tuple[int, ...], int]:
    """Recover ``(in_features, hidden, num_classes)`` from a parameter dict's shapes."""
    num_hidden = sum(1 for k in params if k.startswith("hidden_"))
    hidden = tuple(int(params[f"hidden_{i}"]["kernel"].shape[-1]) for i in range(num_hidden))
    first = params["hidden_0" if num_hidden else "out"]["kernel"]
    return int(first.shape[-2]), hidden, int(params["out"]["kernel"].shape[-1])


@functools.lru_cache(maxsize=32)
def _graphdef(in_features: int, hidden: tuple[int, ...], num_classes: int) -> Any:
    abstract = nnx.eval_shape(lambda: MLP(in_features, hidden, num_classes, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return graphdef


def init_mlp(
    key: Key,
    *,
    in_features: int = 64,
    hidden: tuple[int, ...] = (32,),
    num_classes: int = 10,
) -> dict[str, Any]:
    """Initialise an :class:`MLP` and return its parameters as a pure dict.

    Args:
      key: PRNG key for the initialisation.
      in_features: input width (64 for 8x8 digits).
      hidden: widths of the hidden layers.
      num_classes: number of output logits.

    Returns:
      ``{"hidden_0": {"kernel": [in, h0], "bias": [h0]}, ..., "out": {...}}`` (float32).

    Example:
      >>> params = init_mlp(jax.random.key(0))
      >>> mlp_apply(params, jnp.zeros((5, 64))).shape
      (5, 10)
    """
    return _init_pure(key, in_features, tuple(hidden), num_classes)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_pure(
    key: Key, in_features: int, hidden: tuple[int, ...], num_classes: int
) -> dict[str, Any]:
    # One compiled program for the whole initialisation (not one per initializer call).
    model = MLP(in_features, hidden, num_classes, rngs=nnx.Rngs(params=key))
    _, state = nnx.split(model)
    return nnx.to_pure_dict(state)


def mlp_apply(params: dict[str, Any], x: jax.Array) -> jax.Array:
    """Logits of the MLP with parameters ``params`` (a pure dict) on inputs ``x``.

    Pure and traceable: ``jax.vmap(mlp_apply, (0, None))`` evaluates a stack of parameter
    sets (e.g. many merged models) on the same inputs.

    Args:
      params: pure parameter dict as returned by :func:`init_mlp`.
      x: inputs ``[..., in_features]`` (cast to the kernels' dtype).

    Returns:
      Logits ``[..., num_classes]``.
    """
    graphdef = _graphdef(*mlp_dims(params))
    model = nnx.merge(graphdef, params)
    return model(jnp.asarray(x, params["out"]["kernel"].dtype))
