r"""Adam training of full fine-tunes and LoRA adapters on pure-dict parameters.

**LoRA (PEFT's convention).** An adapted kernel :math:`W \in \mathbb{R}^{d_{in} \times
d_{out}}` (flax layout, :math:`y = xW`) gets the update

.. math::  W' = W + s\,(B A)^\top, \qquad B \in \mathbb{R}^{d_{out}\times r},\;
           A \in \mathbb{R}^{r \times d_{in}},\; s = \alpha / r,

with ``B`` initialised to zero (so training starts at the base model) and ``A`` from
PEFT's default, Kaiming-uniform with :math:`a = \sqrt 5`, i.e.
:math:`U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`. Only ``A`` and ``B`` are trained.

**Training.** :func:`fit` runs ``num_steps`` Adam steps (gradient clipping at global norm
1, an optional linear warm-up then cosine decay) from a ``sample_fn(key, data)`` minibatch
sampler and a ``loss_fn(params, batch)``. Step ``i`` draws its minibatch from
``fold_in(key, i)``, so a run cut into chunks (for progress bars) is bit-identical to one
run in a single :func:`jax.lax.scan`. Everything is a pure function of the key and ``vmap``
over experts (keys and data stacked on a leading axis) works unchanged.

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models"
(``hu2022lora`` in ``paper/refs.bib``); Kingma and Ba, "Adam" (``kingma2015adam``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from .._types import Key

__all__ = [
    "FitState",
    "apply_lora",
    "fit",
    "fit_init",
    "get_path",
    "init_lora",
    "kernel_paths",
    "make_optimizer",
]


def get_path(tree: Any, path: str) -> Any:
    """Leaf of a nested dict at a ``"/"``-joined path (``"block_0/attn_q/kernel"``)."""
    for k in path.split("/"):
        tree = tree[k]
    return tree


def kernel_paths(params: Any, modules: Sequence[str] | None = None) -> tuple[str, ...]:
    """Sorted paths of the 2-D ``kernel`` leaves whose parent module name is in ``modules``.

    ``modules=None`` keeps every 2-D kernel.
    """
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(p, "key", p)) for p in path]
        if keys[-1] == "kernel" and leaf.ndim == 2:
            if modules is None or (len(keys) > 1 and keys[-2] in modules):
                out.append("/".join(keys))
    return tuple(sorted(out))


def init_lora(
    key: Key, params: Any, paths: Sequence[str], rank: int
) -> dict[str, dict[str, jax.Array]]:
    """PEFT-initialised adapters ``{path: {"B": zeros [d_out, r], "A": [r, d_in]}}``.

    Args:
      key: PRNG key of the ``A`` initialisation (one sub-key per path, in ``paths`` order).
      params: the base parameters (kernels ``[d_in, d_out]``).
      paths: adapted kernels (see :func:`kernel_paths`).
      rank: LoRA rank ``r``.
    """
    out = {}
    for k, path in zip(jr.split(key, len(paths)), paths, strict=True):
        w = get_path(params, path)
        d_in, d_out = w.shape
        bound = 1.0 / float(d_in) ** 0.5
        a = jr.uniform(k, (rank, d_in), w.dtype, -bound, bound)
        out[path] = {"B": jnp.zeros((d_out, rank), w.dtype), "A": a}
    return out


def apply_lora(params: Any, lora: dict[str, dict[str, jax.Array]], scaling: float) -> Any:
    """``params`` with every adapted kernel replaced by ``W + scaling * (B @ A).T``."""

    def walk(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict):
            if prefix in lora:
                f = lora[prefix]
                upd = (f["B"] @ f["A"]).T
                return node + jnp.asarray(scaling, node.dtype) * upd
            return node
        return {k: walk(v, f"{prefix}/{k}" if prefix else k) for k, v in node.items()}

    return walk(params, "")


def make_optimizer(
    learning_rate: float, num_steps: int, *, warmup: int = 0, cosine: bool = False
) -> optax.GradientTransformation:
    """Adam after clipping at global norm 1; optional warm-up + cosine decay to 10%."""
    lr: Any = learning_rate
    if cosine:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, max(warmup, 1), max(num_steps, warmup + 1), learning_rate / 10
        )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


class FitState(NamedTuple):
    """Carry of :func:`fit`: trainable parameters, optimiser state, next step index."""

    params: Any
    opt_state: Any
    step: jax.Array


def fit_init(optimizer: optax.GradientTransformation, trainable: Any) -> FitState:
    """Initial :class:`FitState` of ``trainable``."""
    return FitState(trainable, optimizer.init(trainable), jnp.zeros((), jnp.int32))


def fit(
    state: FitState,
    key: Key,
    data: Any,
    *,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], jax.Array],
    sample_fn: Callable[[Key, Any], Any],
    num_steps: int,
    frozen: Any = None,
    lora_scaling: float | None = None,
) -> tuple[FitState, jax.Array]:
    """Run ``num_steps`` Adam steps from ``state``; return the new state and the losses.

    Args:
      state: :class:`FitState` (from :func:`fit_init` or a previous chunk).
      key: the run's key; step ``i`` samples with ``fold_in(key, i)``.
      data: the task's data, passed to ``sample_fn``.
      optimizer: from :func:`make_optimizer`.
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      sample_fn: ``sample_fn(key, data) -> batch``.
      num_steps: steps in this call.
      frozen: for LoRA, the frozen base parameters (``state.params`` are then the adapters).
      lora_scaling: LoRA's ``alpha / r`` (required with ``frozen``).

    Returns:
      ``(state, losses [num_steps])``.
    """

    def objective(trainable: Any, batch: Any) -> jax.Array:
        params = trainable if frozen is None else apply_lora(frozen, trainable, lora_scaling)
        return loss_fn(params, batch)

    def step(carry: FitState, _: Any) -> tuple[FitState, jax.Array]:
        batch = sample_fn(jr.fold_in(key, carry.step), data)
        loss, grads = jax.value_and_grad(objective)(carry.params, batch)
        # optax's bias correction mixes Python floats and int32 counts, which strict dtype
        # promotion rejects; standard promotion is scoped to the optimiser, and updates are
        # cast back so that parameters keep their dtype under x64.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        updates = jax.tree.map(lambda u, p: u.astype(p.dtype), updates, carry.params)
        new = FitState(optax.apply_updates(carry.params, updates), opt_state, carry.step + 1)
        return new, loss

    return jax.lax.scan(step, state, None, length=num_steps)
