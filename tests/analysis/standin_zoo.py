"""A stand-in for ``mergetheory.models.zoo`` (the contract of /work/notes/zoo_contract.md).

Built from the existing digits experts (:func:`mergetheory.models.train.train_digits_experts`):
10 class experts of a small MLP; the "LoRA experts" are rank-``r`` truncated SVDs of the
full task vectors' kernels (not trained LoRA: enough to exercise the factor-wise and
delta-wise paths). Tests only; the experiment uses the real zoo.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from mergetheory.lora import LoraFactors
from mergetheory.models.train import (
    DigitsSpec,
    TaskSet,
    cross_entropy,
    example_correct,
    train_digits_experts,
)


class ZooSpec(NamedTuple):
    modality: str = "vision"
    size: str = "tiny"
    seed: int = 0
    lora_rank: int = 2


class ExpertZoo(NamedTuple):
    spec: ZooSpec
    task_names: tuple
    base_params: Any
    full_task_vectors: Any
    lora_factors: dict
    metric_name: str
    higher_is_better: bool
    base_metric: np.ndarray
    full_expert_metric: np.ndarray
    lora_expert_metric: np.ndarray
    base_knowledge: np.ndarray
    info: dict


_SPLITS: dict = {}


def _split_tasks(tasks: TaskSet) -> dict[str, TaskSet]:
    """Every task's test images: even slots -> "val", odd slots -> "test"."""
    mask = np.asarray(tasks.mask)
    pos = np.cumsum(mask, axis=1) - 1
    val = mask & (pos % 2 == 0)
    test = mask & (pos % 2 == 1)
    return {
        "val": tasks._replace(mask=jnp.asarray(val)),
        "test": tasks._replace(mask=jnp.asarray(test)),
    }


@jax.jit
def _accuracy(params: Any, tasks: TaskSet) -> jax.Array:
    correct = example_correct(params, tasks)
    return jnp.sum(correct, axis=-1) / jnp.sum(tasks.mask, axis=-1)


def evaluate(zoo: ExpertZoo, params: Any, *, split: str = "test", tasks=None) -> np.ndarray:
    acc = np.asarray(_accuracy(params, _SPLITS[id(zoo.info)][split]))
    return acc if tasks is None else acc[np.asarray(tasks)]


def lora_dense_updates(zoo: ExpertZoo) -> Any:
    out = jax.tree.map(jnp.zeros_like, zoo.full_task_vectors)
    for path, f in zoo.lora_factors.items():
        layer, leaf = path.split("/")
        dense = jnp.einsum("tdr,trk->tdk", f.B, f.A) * f.scaling  # [T, d_out, d_in]
        out[layer][leaf] = jnp.swapaxes(dense, 1, 2)  # flax kernels are [d_in, d_out]
    return out


def params_from_delta(zoo: ExpertZoo, delta: Any) -> Any:
    if isinstance(delta, dict) and all("/" in k for k in delta):
        full = jax.tree.map(jnp.zeros_like, zoo.base_params)
        for path, upd in delta.items():
            layer, leaf = path.split("/")
            full[layer][leaf] = upd.T
        delta = full
    return jax.tree.map(lambda b, d: b + d.astype(b.dtype), zoo.base_params, delta)


def base_loss_fn(zoo: ExpertZoo):
    x, y = _SPLITS[id(zoo.info)]["base_batch"]
    return lambda params: cross_entropy(params, x, y)


def zoo_spec(modality: str = "vision", size: str = "tiny", seed: int = 0) -> ZooSpec:
    return ZooSpec(modality, size, seed)


def build_zoo(spec: ZooSpec, **_: Any) -> ExpertZoo:
    dspec = DigitsSpec(hidden=(16,), base_steps=150, expert_steps=60, batch_size=32)
    d = train_digits_experts(jr.key(spec.seed), dspec)
    tv = jax.tree.map(lambda e, b: e - b[None], d.experts, d.base)
    factors = {}
    for layer in ("hidden_0", "out"):
        k = tv[layer]["kernel"]  # [T, d_in, d_out]
        u, s, vt = jnp.linalg.svd(jnp.swapaxes(k, 1, 2), full_matrices=False)
        r = spec.lora_rank
        root = jnp.sqrt(s[:, :r])
        factors[f"{layer}/kernel"] = LoraFactors(
            B=u[:, :, :r] * root[:, None, :], A=root[:, :, None] * vt[:, :r, :], scaling=1.0
        )
    info = {"source": "stand-in from train_digits_experts", "num_params": 0}
    zoo = ExpertZoo(
        spec,
        tuple(f"class_{c}" for c in range(10)),
        d.base,
        tv,
        factors,
        "accuracy",
        True,
        np.zeros(10),
        np.zeros(10),
        np.zeros(10),
        np.zeros(10),
        info,
    )
    splits = _split_tasks(d.tasks)
    splits["base_batch"] = (d.data.x_train[:256], d.data.y_train[:256])
    _SPLITS[id(info)] = splits
    base = evaluate(zoo, d.base)
    full = np.array(
        [evaluate(zoo, jax.tree.map(lambda e, t=t: e[t], d.experts))[t] for t in range(10)]
    )
    dense = lora_dense_updates(zoo)
    lora = np.array(
        [
            evaluate(zoo, params_from_delta(zoo, jax.tree.map(lambda x, t=t: x[t], dense)))[t]
            for t in range(10)
        ]
    )
    return zoo._replace(
        base_metric=base, full_expert_metric=full, lora_expert_metric=lora, base_knowledge=base
    )
