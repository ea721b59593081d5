"""Training and evaluation programs of the expert zoo (one compiled program per shape).

The programs are module-level ``jax.jit`` functions whose static arguments are small
hashable NamedTuples (:class:`TrainConfig`, ``_Run``), so building the same zoo twice in a
process, or evaluating many merged models, reuses the compiled code.

* :func:`train` runs one stage: ``"base"`` (one model, warm-up + cosine Adam), ``"full"``
  (every expert's full fine-tune in one ``vmap``) or ``"lora"`` (every expert's adapters in
  one ``vmap``, base frozen), in chunks so that a tqdm bar can advance;
* :func:`eval_tasks` evaluates one parameter set on every task, :func:`eval_diagonal` expert
  ``t`` on task ``t``; :func:`model_loss` is the training loss on a fixed batch.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from .._types import Key
from .language import (
    LORA_TARGETS,
    TransformerConfig,
    bits_per_byte,
    init_transformer,
    next_byte_loss,
    transformer_apply,
)
from .lora_train import apply_lora, fit, fit_init, init_lora, kernel_paths, make_optimizer
from .mlp import init_mlp, mlp_apply

__all__ = [
    "TrainConfig",
    "eval_diagonal",
    "eval_tasks",
    "init_params",
    "lora_expert_params",
    "lora_paths",
    "metric_fn",
    "model_loss",
    "train",
]

_MAX_CHUNKS = 10  # progress-bar updates per stage
_TASK_BATCH = 8  # tasks evaluated at once


class TrainConfig(NamedTuple):
    """Static description of the model family (hashable: keys compiled programs)."""

    modality: str
    num_heads: int
    context: int
    lora_scaling: float


class _Run(NamedTuple):
    cfg: TrainConfig
    stage: str
    batch: int
    learning_rate: float
    total_steps: int
    chunk_steps: int
    cosine: bool
    num_replay: int


def init_params(key: Key, spec: Any) -> dict[str, Any]:
    """Initial parameters of a zoo's model (``spec`` a :class:`~.zoo.ZooSpec`)."""
    if spec.modality == "language":
        cfg = TransformerConfig(spec.d_model, spec.num_layers, spec.num_heads, spec.context)
        return init_transformer(key, cfg)
    return init_mlp(key, in_features=64, hidden=tuple(spec.hidden), num_classes=10)


def lora_paths(modality: str, params: Any) -> tuple[str, ...]:
    """Adapted kernels: attention q/k/v/o and MLP projections (language), every dense
    kernel (vision)."""
    return kernel_paths(params, LORA_TARGETS if modality == "language" else None)


def _logits(cfg: TrainConfig, params: Any, x: jax.Array) -> jax.Array:
    if cfg.modality == "language":
        return transformer_apply(params, x, num_heads=cfg.num_heads)
    return mlp_apply(params, x)


@functools.partial(jax.jit, static_argnames=("cfg",))
def model_loss(cfg: TrainConfig, params: Any, batch: Any) -> jax.Array:
    """Mean training loss (nats): next-byte or 10-way cross-entropy on ``batch``.

    ``batch``: byte windows ``[B, L + 1]`` (language) or ``(x [B, 64], y [B])`` (vision).
    """
    if cfg.modality == "language":
        tokens = jnp.asarray(batch, jnp.int32)
        return next_byte_loss(_logits(cfg, params, tokens[..., :-1]), tokens[..., 1:])
    x, y = batch
    logits = _logits(cfg, params, jnp.asarray(x, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y, jnp.int32)).mean()


def metric_fn(cfg: TrainConfig, params: Any, task_eval: Any) -> jax.Array:
    """Bits per byte on a task's windows ``[W, L + 1]``, or accuracy on ``(x, y)``."""
    if cfg.modality == "language":
        tokens = jnp.asarray(task_eval, jnp.int32)
        return bits_per_byte(_logits(cfg, params, tokens[..., :-1]), tokens[..., 1:])
    x, y = task_eval
    pred = jnp.argmax(_logits(cfg, params, jnp.asarray(x, jnp.float32)), axis=-1)
    return jnp.mean((pred == jnp.asarray(y, pred.dtype)).astype(jnp.float32))


def _sample(cfg: TrainConfig, key: Key, data: Any, *, batch: int) -> Any:
    if cfg.modality == "language":
        text, size = data
        length = cfg.context + 1
        start = jr.randint(key, (batch,), 0, size - length + 1, jnp.int32)
        return text[start[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]]
    x, y = data
    idx = jr.randint(key, (batch,), 0, x.shape[0], jnp.int32)
    return x[idx], y[idx]


def _sample_mixed(cfg: TrainConfig, key: Key, data: Any, *, batch: int, num_replay: int) -> Any:
    # ``data = (task data, replay data)``: ``num_replay`` rows of each batch are replayed
    task, replay = data
    if num_replay == 0:
        return _sample(cfg, key, task, batch=batch)
    k_task, k_replay = jr.split(key)
    own = _sample(cfg, k_task, task, batch=batch - num_replay)
    old = _sample(cfg, k_replay, replay, batch=num_replay)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), own, old)


def _optimizer(run: _Run) -> optax.GradientTransformation:
    warmup = run.total_steps // 20 if run.cosine else 0
    return make_optimizer(run.learning_rate, run.total_steps, warmup=warmup, cosine=run.cosine)


@functools.partial(jax.jit, static_argnames=("run",))
def _run_chunk(state: Any, key: Any, data: Any, frozen: Any, replay: Any, *, run: _Run) -> Any:
    fit_one = functools.partial(
        fit,
        optimizer=_optimizer(run),
        loss_fn=functools.partial(model_loss, run.cfg),
        sample_fn=functools.partial(
            _sample_mixed, run.cfg, batch=run.batch, num_replay=run.num_replay
        ),
        num_steps=run.chunk_steps,
        frozen=frozen,
        lora_scaling=run.cfg.lora_scaling if run.stage == "lora" else None,
    )

    def one(s: Any, k: Any, d: Any) -> Any:
        return fit_one(s, k, (d, replay))

    return one(state, key, data) if run.stage == "base" else jax.vmap(one)(state, key, data)


@functools.partial(jax.jit, static_argnames=("paths", "rank"))
def _init_lora_many(keys: Any, base: Any, *, paths: tuple[str, ...], rank: int) -> Any:
    return jax.vmap(lambda k: init_lora(k, base, paths, rank))(keys)


def _num_chunks(steps: int) -> int:
    return max(c for c in range(1, _MAX_CHUNKS + 1) if steps % c == 0)


def train(
    cfg: TrainConfig,
    params: Any,
    key: Any,
    data: Any,
    spec: Any,
    *,
    stage: str,
    progress: bool,
    replay: Any = None,
) -> tuple[Any, jax.Array]:
    """Run one training stage (see the module docstring).

    Args:
      cfg: the model family.
      params: initial parameters (``"base"``) or the base model (``"full"``, ``"lora"``).
      key: the run's key (``"base"``), ``[T]`` keys (``"full"``), or a pair of ``[T]`` keys
        ``(adapter init, training)`` (``"lora"``).
      data: training data (one set, or stacked per task).
      spec: the :class:`~.zoo.ZooSpec` (steps, learning rates, batch sizes, rank).
      stage: ``"base"``, ``"full"`` or ``"lora"``.
      progress: show a tqdm bar.
      replay: experts only: data (the base's) of which a share ``spec.replay_fraction`` of
        every minibatch is drawn.

    Returns:
      ``(params, losses)``: trained parameters (``"full"``: leaves ``[T, ...]``;
      ``"lora"``: ``{path: {"B": [T, d_out, r], "A": [T, r, d_in]}}``) and loss traces.
    """
    from tqdm.auto import tqdm

    base = stage == "base"
    steps = spec.base_steps if base else spec.expert_steps
    lr = {"base": spec.base_lr, "full": spec.expert_lr, "lora": spec.lora_lr}[stage]
    chunk = steps // _num_chunks(steps)
    batch = spec.base_batch if base else spec.expert_batch
    num_replay = 0 if base or replay is None else int(round(spec.replay_fraction * batch))
    if num_replay >= batch:
        raise ValueError(f"ZooSpec.replay_fraction = {spec.replay_fraction} leaves no task rows")
    run = _Run(cfg, stage, batch, lr, steps, chunk, base, num_replay)
    replay = None if num_replay == 0 else jax.tree.map(jnp.asarray, replay)
    data = jax.tree.map(jnp.asarray, data)
    frozen = None
    if stage == "lora":
        init_keys, key = key
        paths = lora_paths(cfg.modality, params)
        trainable = _init_lora_many(init_keys, params, paths=paths, rank=spec.lora_rank)
        frozen = params
    elif stage == "full":
        trainable = jax.tree.map(lambda p: jnp.broadcast_to(p, (key.shape[0],) + p.shape), params)
    else:
        trainable = params
    init = fit_init(_optimizer(run), trainable) if base else jax.vmap(
        functools.partial(fit_init, _optimizer(run))
    )(trainable)  # fmt: skip
    state, losses = init, []
    with tqdm(total=steps, desc=f"zoo {cfg.modality} {stage}", disable=not progress) as bar:
        for _ in range(steps // chunk):
            state, chunk_losses = _run_chunk(state, key, data, frozen, replay, run=run)
            losses.append(jax.block_until_ready(chunk_losses))  # the bar follows the work
            bar.update(chunk)
    return state.params, jnp.concatenate(losses, axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def eval_tasks(cfg: TrainConfig, params: Any, data: Any) -> jax.Array:
    """Metric of one parameter set on every task of ``data`` (leading task axis): ``[T]``."""
    return jax.lax.map(lambda d: metric_fn(cfg, params, d), data, batch_size=_TASK_BATCH)


@functools.partial(jax.jit, static_argnames=("cfg",))
def eval_diagonal(cfg: TrainConfig, params: Any, data: Any) -> jax.Array:
    """Metric of expert ``t`` (stacked parameters ``[T, ...]``) on task ``t``: ``[T]``."""
    return jax.lax.map(
        lambda pd: metric_fn(cfg, pd[0], pd[1]), (params, data), batch_size=_TASK_BATCH
    )


@functools.partial(jax.jit, static_argnames=("scaling",))
def lora_expert_params(base: Any, lora: Any, *, scaling: float) -> Any:
    """Stacked LoRA expert parameters ``[T, ...]``: the base with each adapter merged in."""
    return jax.vmap(lambda a: apply_lora(base, a, scaling))(lora)
