r"""Scoring an expert zoo's models, and the deltas that build them.

Kept apart from :mod:`.zoo` on purpose: the zoo's cache key hashes the source of the
modules that decide the trained weights, and how models are *scored* is not one of them,
so changing this file never retrains a zoo.

* :func:`evaluate` -- one parameter pytree on every task's split: ``[T]``;
* :func:`evaluate_deltas` / :func:`evaluate_stack` -- ``M`` updates (``base + delta``) or
  ``M`` full parameter sets stacked on a leading axis: ``[M, T]``, one compiled program per
  (spec, split, number of tasks, ``M``, batch size), evaluated ``batch_size`` models at a
  time (``jax.lax.map``), so memory is set by the batch and not by ``M``;
* :func:`lora_dense_updates`, :func:`params_from_delta` -- LoRA factors as dense kernel
  updates, and ``base + delta`` in either layout;
* :func:`base_loss_fn` -- a pure scalar loss of the base's data, for Hessian-vector
  products.

Example:
  >>> zoo = build_zoo(zoo_spec("vision", "tiny"))
  >>> evaluate_deltas(zoo, zoo.full_task_vectors)   # [T, T]: expert s on task t
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from .zoo import ExpertZoo, train_config, zoo_data
from .zoo_train import TrainConfig, metric_fn, model_loss

__all__ = [
    "base_loss_fn",
    "evaluate",
    "evaluate_deltas",
    "evaluate_experts",
    "evaluate_stack",
    "example_index",
    "kernel_deltas",
    "lora_dense_updates",
    "params_from_delta",
]


# tasks scored at once by one model: on CPU a batch of 1-2 language tasks keeps the
# activations in cache and costs ~30% less CPU per merged model than 8 (the zoo's build,
# ``zoo_train.eval_tasks``, uses 8: metrics agree to float32 round-off, ~2e-6 bits)
EVAL_TASK_BATCH = 2


@functools.partial(jax.jit, static_argnames=("cfg", "diagonal"))
def _eval_tasks(cfg: TrainConfig, params: Any, data: Any, diagonal: bool = False) -> jax.Array:
    # ``[T]``: one parameter set on every task of ``data`` (leading task axis), or with
    # ``diagonal`` expert ``t`` of the stacked ``params`` on task ``t``
    if diagonal:
        fn, xs = (lambda pd: metric_fn(cfg, pd[0], pd[1])), (params, data)
    else:
        fn, xs = (lambda d: metric_fn(cfg, params, d)), data
    return jax.lax.map(fn, xs, batch_size=EVAL_TASK_BATCH)


def _flat(tree: dict[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(flat, sep="/")


def _task_index(zoo: ExpertZoo, tasks: Sequence[int] | None) -> np.ndarray:
    num = len(zoo.task_names)
    idx = np.arange(num) if tasks is None else np.asarray(tasks, np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= num:
        raise ValueError(f"evaluate: tasks must be indices in [0, {num}), got {tasks}")
    return idx


def example_index(num: int, max_examples: int | None) -> np.ndarray:
    """Indices of ``max_examples`` evaluation examples evenly spaced over ``num`` (all if None).

    Language windows are themselves evenly spaced over a task's held-out text
    (:func:`.corpus.text_windows`), so the subset still spans the whole text.
    """
    if max_examples is None or max_examples >= num:
        return np.arange(num)
    if max_examples < 1:
        raise ValueError(f"evaluate: max_examples must be >= 1, got {max_examples}")
    return np.unique(np.round(np.linspace(0, num - 1, max_examples)).astype(np.int64))


def _split_data(
    zoo: ExpertZoo, split: str, tasks: Sequence[int] | None, max_examples: int | None = None
) -> Any:
    if split not in ("val", "test"):
        raise ValueError(f"evaluate: split must be 'val' or 'test', got {split!r}")
    data = zoo_data(zoo.spec)
    if data.sha256 != zoo.info["data_sha256"]:
        raise ValueError("evaluate: the data on this machine differ from the zoo's (sha256)")
    idx = _task_index(zoo, tasks)
    leaves = jax.tree.leaves(data.eval[split])
    ex = example_index(leaves[0].shape[1], max_examples)
    return jax.tree.map(lambda a: a[idx][:, ex], data.eval[split])


def evaluate(
    zoo: ExpertZoo,
    params: Any,
    *,
    split: str = "test",
    tasks: Sequence[int] | None = None,
    max_examples: int | None = None,
) -> np.ndarray:
    """Metric of a parameter pytree (structure of ``base_params``) on every task's split.

    Bits per byte (language, mean over the task's fixed held-out windows) or accuracy
    (vision). One jitted, batched program per (spec, number of tasks).

    Args:
      zoo: the :class:`~.zoo.ExpertZoo`.
      params: full parameters, e.g. ``params_from_delta(zoo, merged_delta)``.
      split: ``"val"`` (choose hyperparameters) or ``"test"`` (report).
      tasks: task indices (default all).
      max_examples: score on this many of each task's examples (windows or images),
        evenly spaced (:func:`example_index`); default all. Cheaper, and the same
        examples for every model, so comparisons stay paired.

    Returns:
      ``[T]`` (or ``[len(tasks)]``) float64 metrics.
    """
    data = _split_data(zoo, split, tasks, max_examples)
    return np.asarray(_eval_tasks(train_config(zoo.spec), params, data), np.float64)


@functools.partial(jax.jit, static_argnames=("cfg", "batch_size"))
def _eval_stack(cfg: TrainConfig, base: Any, stacked: Any, data: Any, batch_size: int) -> jax.Array:
    # jitted as a whole (a bare lax.map would be traced again on every call)
    def one(tree: Any) -> jax.Array:
        params = tree if base is None else jax.tree.map(
            lambda b, d: b + d.astype(b.dtype), base, tree
        )  # fmt: skip
        return _eval_tasks(cfg, params, data)

    return jax.lax.map(one, stacked, batch_size=batch_size)


def _stack_size(stacked: Any, name: str) -> int:
    sizes = {x.shape[0] if jnp.ndim(x) else None for x in jax.tree.leaves(stacked)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{name}: every leaf needs the same leading (model) axis, got {sizes}")
    return sizes.pop()


def _evaluate_many(
    zoo: ExpertZoo,
    base: Any,
    stacked: Any,
    name: str,
    split: str,
    tasks: Sequence[int] | None,
    batch_size: int,
    max_examples: int | None,
) -> np.ndarray:
    # ``[M, T]`` metrics of ``stacked`` (full parameters, or updates of ``base``)
    _stack_size(stacked, name)
    data = _split_data(zoo, split, tasks, max_examples)
    out = _eval_stack(train_config(zoo.spec), base, stacked, data, batch_size)
    return np.asarray(out, np.float64)


def evaluate_stack(
    zoo: ExpertZoo,
    stacked_params: Any,
    *,
    split: str = "test",
    tasks: Sequence[int] | None = None,
    batch_size: int = 4,
    max_examples: int | None = None,
) -> np.ndarray:
    """:func:`evaluate` for ``M`` parameter sets stacked on a leading axis: ``[M, T]``.

    Models are evaluated ``batch_size`` at a time (``jax.lax.map``); the program is
    compiled once per (spec, split size, ``M``, batch size), not once per call.
    """
    return _evaluate_many(
        zoo, None, stacked_params, "evaluate_stack", split, tasks, batch_size, max_examples
    )


def evaluate_deltas(
    zoo: ExpertZoo,
    deltas: Any,
    *,
    split: str = "test",
    tasks: Sequence[int] | None = None,
    batch_size: int = 4,
    max_examples: int | None = None,
) -> np.ndarray:
    """Metrics of ``base_params + delta_m`` for ``M`` stacked updates: ``[M, T]``.

    Args:
      zoo: the :class:`~.zoo.ExpertZoo`.
      deltas: a pytree with the structure of ``base_params`` and leaves ``[M, ...]``
        (kernel layout; e.g. merged task vectors, or ``zoo.full_task_vectors`` for the
        experts themselves). Cast to the base's dtype before the sum.
      split, tasks, max_examples: as in :func:`evaluate`.
      batch_size: models evaluated at once (memory of the batch, not of ``M``).

    Returns:
      ``[M, T]`` (or ``[M, len(tasks)]``) float64 metrics; row ``m`` equals
      ``evaluate(zoo, params_from_delta(zoo, delta_m))`` up to float32 round-off.
    """
    return _evaluate_many(
        zoo, zoo.base_params, deltas, "evaluate_deltas", split, tasks, batch_size, max_examples
    )


def evaluate_experts(
    zoo: ExpertZoo, deltas: Any, *, split: str = "test", max_examples: int | None = None
) -> np.ndarray:
    """Metric of ``base + delta_t`` on its own task ``t`` only: ``[T]`` (``T`` models).

    Args:
      zoo: the :class:`~.zoo.ExpertZoo`.
      deltas: ``[T, ...]`` updates, one per task in the zoo's order (e.g.
        ``zoo.full_task_vectors``, or :func:`lora_dense_updates`).
      split, max_examples: as in :func:`evaluate`.

    Returns:
      ``[T]`` float64: the diagonal of ``evaluate_deltas(zoo, deltas)`` at ``1/T`` its cost.
    """
    num = _stack_size(deltas, "evaluate_experts")
    if num != len(zoo.task_names):
        raise ValueError(f"evaluate_experts: {num} updates for {len(zoo.task_names)} tasks")
    data = _split_data(zoo, split, None, max_examples)
    params = jax.tree.map(lambda b, d: b[None] + d.astype(b.dtype), zoo.base_params, deltas)
    return np.asarray(_eval_tasks(train_config(zoo.spec), params, data, True), np.float64)


def lora_dense_updates(zoo: ExpertZoo) -> Any:
    """Dense LoRA task vectors: like ``base_params`` with leaves ``[T, ...]``.

    At an adapted kernel (``[d_in, d_out]``) the leaf is :math:`s\\,(B_t A_t)^\\top`; every
    other leaf is zero.
    """
    num = len(zoo.task_names)
    dense = {
        p: jnp.swapaxes(jnp.einsum("tdr,trk->tdk", f.B, f.A) * f.scaling, 1, 2)
        for p, f in zoo.lora_factors.items()
    }
    flat = _flat(zoo.base_params)
    out = {p: dense.get(p, jnp.zeros((num,) + v.shape, v.dtype)) for p, v in flat.items()}
    return _nest(out)


def kernel_deltas(zoo: ExpertZoo, updates: dict[str, Any]) -> Any:
    """PEFT-layout updates ``{path: [..., d_out, d_in]}`` as a ``base_params``-shaped tree.

    The inverse layout of :func:`lora_dense_updates`: each update is transposed onto its
    ``[d_in, d_out]`` kernel; every leaf without an update is zero. Leading batch axes
    (``[M, ...]``, the same on every update) are kept, so the result feeds
    :func:`evaluate_deltas`.
    """
    flat = _flat(zoo.base_params)
    unknown = sorted(set(updates) - set(flat))
    if unknown:
        raise ValueError(f"kernel_deltas: no parameter named {unknown[0]!r} in the zoo's base")
    batch = {tuple(jnp.shape(u)[:-2]) for u in updates.values()}
    if len(batch) != 1:
        raise ValueError(f"kernel_deltas: updates have different leading axes {sorted(batch)}")
    lead = batch.pop()
    out = {}
    for p, v in flat.items():
        if p not in updates:
            out[p] = jnp.zeros(lead + v.shape, v.dtype)
            continue
        upd = jnp.asarray(updates[p])
        if upd.shape[-2:] != v.shape[::-1]:
            raise ValueError(f"kernel_deltas: update of {p!r} has shape {upd.shape}, expected "
                             f"[..., d_out, d_in] = [..., {v.shape[1]}, {v.shape[0]}]")  # fmt: skip
        out[p] = jnp.swapaxes(upd, -1, -2).astype(v.dtype)
    return _nest(out)


def params_from_delta(zoo: ExpertZoo, delta: Any) -> Any:
    """``base_params + delta``.

    Args:
      zoo: the :class:`ExpertZoo`.
      delta: either a pytree with the structure of ``base_params`` (kernel layout), or a
        dict ``{path: update}`` over LoRA kernel paths (keys of ``zoo.lora_factors``) in
        PEFT's ``[d_out, d_in]`` layout, e.g. ``mergetheory.merge.lora.lora_delta`` of
        merged factors; it is transposed onto the ``[d_in, d_out]`` kernels.

    Returns:
      The parameter pytree (float32).
    """
    if isinstance(delta, dict) and delta and set(delta) <= set(zoo.lora_factors):
        flat = _flat(zoo.base_params)
        for p, upd in delta.items():
            want = flat[p].shape[::-1]
            if jnp.shape(upd) != want:
                raise ValueError(f"params_from_delta: update of {p!r} has shape {jnp.shape(upd)}, "
                                 f"expected [d_out, d_in] = {want}")  # fmt: skip
        delta = kernel_deltas(zoo, delta)  # transposed onto the kernels, zero elsewhere
    return jax.tree.map(lambda b, d: b + jnp.asarray(d).astype(b.dtype), zoo.base_params, delta)


def base_loss_fn(zoo: ExpertZoo) -> Callable[[Any], jax.Array]:
    """Scalar loss of a parameter pytree on a fixed held-out batch of the base's data.

    Language: mean next-byte cross-entropy (nats) on windows of held-out base-corpus files;
    vision: mean cross-entropy on the plain task's val split. Pure and differentiable, for
    Hessian-vector products (``jax.jvp`` of ``jax.grad``).
    """
    batch = jax.tree.map(jnp.asarray, zoo_data(zoo.spec).base_val)
    cfg = train_config(zoo.spec)
    return functools.partial(model_loss, cfg, batch=batch)
