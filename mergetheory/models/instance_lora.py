r"""One LoRA update per probe instance, all instances trained at once under ``vmap``.

The per-instance updates of the "Will it Merge?" reconstruction (Rahamim et al., arXiv
2601.06672: one LoRA per PopQA question the base gets wrong, trained until it fixes it).
Each instance :math:`i` of a :class:`~mergetheory.models.probe.ProbeSet` gets its own
adapter on the probe's adapted kernel (the last block's ``mlp_fc1``, see
:mod:`.probe`), in PEFT's convention (:mod:`.lora_train`):

.. math::  \Delta W_i = s\,(B_i A_i)^\top \in \mathbb R^{d \times 4d},\qquad
           B_i \in \mathbb R^{4d \times r} = 0 \text{ at init},\ A_i \in
           \mathbb R^{r\times d},\ s = \alpha / r .

**Objective.** The instance's own text: the mean next-byte cross-entropy of its *true*
continuation given its prefix, :math:`-s_{i,\text{label}}/L` (fine-tuning on the fact, as
the paper trains on the entity's passage; the distractors are never trained on).

**Stopping.** Adam (:func:`~.lora_train.make_optimizer`, clipping at global norm 1,
constant step) for at most ``max_steps`` steps, checked every ``check_every`` steps: an
instance is **fixed** once its true continuation scores highest by at least
``stop_margin`` nats, :math:`s_\text{label} - \max_{c\ne\text{label}} s_c \ge m`, and its
adapter is frozen from then on (an early-stop mask inside the ``vmap``, so every instance
stops at its own step while the program stays one ``lax.scan``). Instances never fixed
are reported (``fixed = False``) and left out by the caller.

All instances share the base and its features (:func:`~.probe.probe_features`); the
adapters, the optimiser states and the keys are stacked on the instance axis. Instance
``i`` initialises ``A_i`` from ``jax.random.split(key, I)[i]``.

Example:
  >>> out = train_instance_loras(key, base, feats, probe.targets, probe.label,
  ...                            InstanceLoraSpec(), num_heads=4)
  >>> out.fixed.mean()

Reference: Hu et al., LoRA (``hu2022lora``); Rahamim et al. (``rahamim2026mergeability``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._types import Key
from .lora_train import init_lora, make_optimizer
from .probe import adapted_kernel_path, choice_scores

__all__ = ["InstanceLoraOutput", "InstanceLoraSpec", "lora_kernel_delta", "train_instance_loras"]


class InstanceLoraSpec(NamedTuple):
    """Per-instance LoRA training (hashable; see the module docstring).

    Attributes:
      rank: LoRA rank ``r``.
      alpha: LoRA ``alpha`` (scaling ``alpha / r``).
      learning_rate: Adam step size (constant).
      max_steps: step budget per instance.
      check_every: steps between fixed-checks (``max_steps`` must be a multiple).
      stop_margin: nats by which the true continuation must lead to count as fixed.
    """

    rank: int = 4
    alpha: float = 8.0
    learning_rate: float = 1e-2
    max_steps: int = 200
    check_every: int = 5
    stop_margin: float = 1.0


class InstanceLoraOutput(NamedTuple):
    """Trained adapters and their training record.

    Attributes:
      B: ``[I, d_out, r]``.
      A: ``[I, r, d_in]``.
      scaling: ``alpha / r``.
      fixed: ``[I]`` bool, reached the stopping margin within ``max_steps``.
      steps: ``[I]`` steps taken (``max_steps`` when never fixed).
      scores: ``[I, C]`` choice scores with the instance's own adapter.
      path: the adapted kernel's path in the base parameters.
    """

    B: np.ndarray
    A: np.ndarray
    scaling: float
    fixed: np.ndarray
    steps: np.ndarray
    scores: np.ndarray
    path: str


def lora_kernel_delta(b: Any, a: Any, scaling: float) -> jax.Array:
    """Kernel-layout update ``s (B A)^T`` ``[..., d_in, d_out]`` of factors ``B``, ``A``."""
    return jnp.swapaxes(jnp.matmul(b, a), -1, -2) * jnp.asarray(scaling, jnp.result_type(b))


def _margin(scores: jax.Array, label: jax.Array) -> jax.Array:
    own = jnp.take_along_axis(scores, label[..., None], -1)[..., 0]
    other = jnp.where(jnp.arange(scores.shape[-1]) == label[..., None], -jnp.inf, scores)
    return own - other.max(-1)


@functools.partial(jax.jit, static_argnames=("spec", "num_heads"))
def _train(
    keys: Key,
    params: Any,
    features: jax.Array,
    targets: jax.Array,
    label: jax.Array,
    spec: InstanceLoraSpec,
    num_heads: int,
) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    path = adapted_kernel_path(params)
    num = features.shape[0]
    scaling = spec.alpha / spec.rank
    opt = make_optimizer(spec.learning_rate, spec.max_steps)
    lora = jax.vmap(lambda k: init_lora(k, params, [path], spec.rank)[path])(keys)

    def scores_of(f: Any, feats: jax.Array, tg: jax.Array) -> jax.Array:
        delta = lora_kernel_delta(f["B"], f["A"], scaling)
        return choice_scores(params, feats, tg, delta, num_heads=num_heads)

    def one(f: Any, opt_state: Any, done: jax.Array, feats: jax.Array, tg: jax.Array, y: Any):
        def loss(f: Any) -> jax.Array:
            return -scores_of(f, feats[y], tg[y]) / tg.shape[-1]

        def step(carry: Any, _: Any) -> tuple[Any, None]:
            f, st = carry
            grads = jax.grad(loss)(f)
            with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats
                upd, new_st = opt.update(grads, st, f)
            new_f = optax.apply_updates(f, jax.tree.map(lambda u, p: u.astype(p.dtype), upd, f))
            keep = lambda new, old: jnp.where(done, old, new)  # noqa: E731
            return (jax.tree.map(keep, new_f, f), jax.tree.map(keep, new_st, st)), None

        (f, opt_state), _ = jax.lax.scan(step, (f, opt_state), None, length=spec.check_every)
        sc = scores_of(f, feats, tg)
        return f, opt_state, done | (_margin(sc, y) >= spec.stop_margin), sc

    batched = jax.vmap(one)
    opt_state = jax.vmap(opt.init)(lora)
    done = jnp.zeros(num, bool)
    steps = jnp.zeros(num, jnp.int32)

    def check(carry: Any, _: Any) -> tuple[Any, None]:
        f, st, dn, stp, _sc = carry
        stp = stp + jnp.where(dn, 0, spec.check_every).astype(stp.dtype)
        f, st, dn, sc = batched(f, st, dn, features, targets, label)
        return (f, st, dn, stp, sc), None

    sc0 = jnp.zeros(targets.shape[:2], features.dtype)
    carry = (lora, opt_state, done, steps, sc0)
    (lora, _, done, steps, sc), _ = jax.lax.scan(
        check, carry, None, length=spec.max_steps // spec.check_every
    )
    return lora, done, steps, sc


def train_instance_loras(
    key: Key,
    params: Any,
    features: Any,
    targets: Any,
    label: Any,
    spec: InstanceLoraSpec,
    *,
    num_heads: int,
    batch: int | None = None,
) -> InstanceLoraOutput:
    """Train one adapter per instance until it is fixed (see the module docstring).

    Args:
      key: PRNG key of the ``A`` initialisations.
      params: the base model (pure dict).
      features: ``[I, C, L, d]`` from :func:`~.probe.probe_features`.
      targets: ``[I, C, L]`` the choices' bytes.
      label: ``[I]`` position of the true continuation.
      spec: :class:`InstanceLoraSpec`.
      num_heads: attention heads of the model.
      batch: instances per jitted call (default all at once); instance ``i`` uses the same
        key whatever the batch.

    Returns:
      :class:`InstanceLoraOutput` (NumPy arrays).
    """
    if spec.max_steps % spec.check_every or spec.rank < 1:
        raise ValueError(f"InstanceLoraSpec: max_steps = {spec.max_steps} must be a multiple "
                         f"of check_every = {spec.check_every}, and rank >= 1")  # fmt: skip
    num = int(np.shape(label)[0])
    keys = jr.split(key, num)
    batch = num if batch is None else batch
    parts = []
    for s in range(0, num, batch):
        sl = slice(s, s + batch)
        parts.append(
            _train(
                keys[sl], params, jnp.asarray(features[sl]), jnp.asarray(targets[sl]),
                jnp.asarray(label[sl]), spec, num_heads,
            )
        )  # fmt: skip
    lora = {k: np.concatenate([np.asarray(p[0][k]) for p in parts]) for k in ("B", "A")}
    done, steps, sc = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in (1, 2, 3))
    return InstanceLoraOutput(
        lora["B"], lora["A"], spec.alpha / spec.rank, done, steps, sc, adapted_kernel_path(params)
    )
