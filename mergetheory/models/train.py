r"""Training a base model and ``T`` expert fine-tunes on scikit-learn's bundled digits.

The data are scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes, shipped inside the
package, so everything runs offline), scaled to ``[0, 1]`` and split per class into train
and test with a key.

**Base model with uneven knowledge.** The base :math:`\theta_0` is trained on a small,
deliberately unbalanced subset: class ``c`` contributes ``base_counts[pi(c)]`` training
images, with ``pi`` a random permutation drawn from the key. Classes seen once or twice are
barely known; classes seen 20 times are known well. Its accuracy on each class's test
images is the *base knowledge* of that task.

**Experts.** Expert ``t`` starts from :math:`\theta_0` and is fine-tuned with Adam on *task
t = all training images of class t*, each minibatch mixed with replay of the base's own
training subset (fraction ``replay_fraction``) so that the expert stays a 10-way classifier.
Its task vector is :math:`\tau_t = \theta_t - \theta_0`; the score of task ``t`` is the
10-way accuracy on the test images of class ``t`` (:func:`evaluate`).

All ``T`` experts train in one ``vmap`` over the same padded data layout; the whole base +
10 experts take a few seconds on one CPU core. Everything is a pure function of the key.

Reference: the task design mirrors the "base knowledge" analysis of Rahamim et al.,
"Will it Merge?" (``rahamim2026mergeability`` in ``paper/refs.bib``), reconstructed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._types import Key
from ..io import atomic_write
from ..tree import tree_stack, tree_unstack
from .mlp import init_mlp, mlp_apply

__all__ = [
    "Dataset",
    "DigitsData",
    "DigitsExperts",
    "DigitsSpec",
    "TaskSet",
    "TrainOutput",
    "class_tasks",
    "cross_entropy",
    "evaluate",
    "example_correct",
    "load_digits_split",
    "make_dataset",
    "predict_proba",
    "save_digits_checkpoints",
    "train_classifier",
    "train_digits_experts",
]

NUM_CLASSES = 10
NUM_FEATURES = 64


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


class DigitsData(NamedTuple):
    """A train/test split of the digits (features in ``[0, 1]``, float32; labels int32).

    Attributes:
      x_train: ``[n_train, 64]``.
      y_train: ``[n_train]``.
      x_test: ``[n_test, 64]``.
      y_test: ``[n_test]``.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


class Dataset(NamedTuple):
    """A training set padded to a fixed number of rows (so several can be ``vmap``-ed).

    Rows ``>= size`` are padding and are never sampled.

    Attributes:
      x: ``[n_max, d]`` float32.
      y: ``[n_max]`` int32.
      size: int32 scalar, the number of valid rows.
    """

    x: jax.Array
    y: jax.Array
    size: jax.Array


class TaskSet(NamedTuple):
    """``K`` evaluation tasks, padded to a common number of examples ``E``.

    Attributes:
      x: ``[K, E, d]`` inputs.
      y: ``[K, E]`` labels.
      mask: ``[K, E]`` bool, True for real examples.
    """

    x: jax.Array
    y: jax.Array
    mask: jax.Array


def load_digits_split(key: Key, *, test_fraction: float = 0.3) -> DigitsData:
    """Load scikit-learn's bundled digits and split each class into train / test.

    Args:
      key: PRNG key of the split.
      test_fraction: fraction of every class held out for testing.

    Returns:
      :class:`DigitsData` (features divided by 16, float32; labels int32).

    Raises:
      ImportError: scikit-learn is not installed (``pip install 'mergetheory[experiments]'``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "load_digits_split needs scikit-learn, an optional dependency: "
            "pip install 'mergetheory[experiments]'"
        ) from err

    bunch = load_digits()
    x = np.asarray(bunch.data, np.float32) / np.float32(16.0)
    y = np.asarray(bunch.target, np.int32)
    # one uniform draw for all images (a single compiled op); each class is shuffled by it
    u = np.asarray(jr.uniform(key, (y.size,), jnp.float32))
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y == c)
        idx = idx[np.argsort(u[idx], kind="stable")]
        num_test = int(round(test_fraction * idx.size))
        test_idx.append(idx[:num_test])
        train_idx.append(idx[num_test:])
    tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
    return DigitsData(
        jnp.asarray(x[tr]), jnp.asarray(y[tr]), jnp.asarray(x[te]), jnp.asarray(y[te])
    )


def make_dataset(x: Any, y: Any, *, pad_to: int | None = None) -> Dataset:
    """Pack ``(x, y)`` into a :class:`Dataset`, zero-padded to ``pad_to`` rows."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n = x.shape[0]
    if n == 0:
        raise ValueError("make_dataset: empty dataset")
    pad = n if pad_to is None else pad_to
    if pad < n:
        raise ValueError(f"make_dataset: pad_to = {pad} < {n} rows")
    xp = np.zeros((pad,) + x.shape[1:], np.float32)
    yp = np.zeros((pad,), np.int32)
    xp[:n], yp[:n] = x, y
    return Dataset(jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(n, jnp.int32))


def class_tasks(x: Any, y: Any, *, num_classes: int = NUM_CLASSES) -> TaskSet:
    """One evaluation task per class: task ``k`` holds the examples of class ``k``."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    sizes = [int((y == k).sum()) for k in range(num_classes)]
    e = max(sizes)
    tx = np.zeros((num_classes, e) + x.shape[1:], np.float32)
    ty = np.zeros((num_classes, e), np.int32)
    tm = np.zeros((num_classes, e), bool)
    for k in range(num_classes):
        idx = np.flatnonzero(y == k)
        tx[k, : idx.size], ty[k, : idx.size], tm[k, : idx.size] = x[idx], k, True
    return TaskSet(jnp.asarray(tx), jnp.asarray(ty), jnp.asarray(tm))


# --------------------------------------------------------------------------------------
# loss, training, evaluation
# --------------------------------------------------------------------------------------


def cross_entropy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Mean softmax cross-entropy :math:`-\frac1B\sum_b \log p_\theta(y_b \mid x_b)`."""
    logits = mlp_apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class TrainOutput(NamedTuple):
    """Result of :func:`train_classifier`.

    Attributes:
      params: the trained parameters.
      losses: ``[num_steps]`` minibatch losses (before each step's update).
    """

    params: Any
    losses: jax.Array


@functools.partial(
    jax.jit, static_argnames=("num_steps", "batch_size", "learning_rate", "replay_fraction")
)
def train_classifier(
    key: Key,
    params: Any,
    data: Dataset,
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    replay: Dataset | None = None,
    replay_fraction: float = 0.5,
) -> TrainOutput:
    r"""Adam on the cross-entropy, minibatches sampled uniformly with replacement.

    With ``replay``, each minibatch holds :math:`\lfloor (1-\rho) B \rceil` rows of ``data``
    and the rest from ``replay`` (:math:`\rho` = ``replay_fraction``). All minibatch
    indices are drawn from ``key`` up front, so the run is a pure function of ``key``.

    Args:
      key: PRNG key of the minibatch sampling.
      params: initial parameters (pure dict).
      data: the task's training set.
      num_steps: number of Adam steps.
      batch_size: rows per minibatch.
      learning_rate: Adam step size.
      replay: optional replay set mixed into every minibatch.
      replay_fraction: share of each minibatch drawn from ``replay``.

    Returns:
      :class:`TrainOutput` with the final parameters and the loss trace.
    """
    optimizer = optax.adam(learning_rate)
    num_replay = 0 if replay is None else int(round(replay_fraction * batch_size))
    num_task = batch_size - num_replay
    if num_task < 1:
        raise ValueError("train: the minibatch holds no task rows; lower replay_fraction")

    # All minibatch indices are drawn up front (one RNG op, not one per scan step).
    k_task, k_replay = jr.split(key)
    idx_task = jr.randint(k_task, (num_steps, num_task), 0, data.size, jnp.int32)
    idx_replay = (
        jr.randint(k_replay, (num_steps, num_replay), 0, replay.size, jnp.int32)
        if num_replay
        else None
    )

    def step(carry: Any, idx: Any) -> tuple[Any, jax.Array]:
        p, opt_state = carry
        i, j = idx
        x, y = data.x[i], data.y[i]
        if j is not None:
            x = jnp.concatenate([x, replay.x[j]])
            y = jnp.concatenate([y, replay.y[j]])
        loss, grads = jax.value_and_grad(cross_entropy)(p, x, y)
        # optax's Adam bias correction computes `b1 ** count` (Python float ** int32), which
        # strict dtype promotion rejects; standard promotion is scoped to the optimiser.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(
        step, (params, optimizer.init(params)), (idx_task, idx_replay)
    )
    return TrainOutput(params, losses)


def predict_proba(params: Any, x: jax.Array) -> jax.Array:
    """Class probabilities ``softmax(f_theta(x))`` ``[..., num_classes]``."""
    return jax.nn.softmax(mlp_apply(params, x), axis=-1)


def example_correct(params: Any, tasks: TaskSet) -> jax.Array:
    """Per-example 0/1 correctness ``[K, E]`` (False on padding)."""
    pred = jnp.argmax(mlp_apply(params, tasks.x), axis=-1).astype(tasks.y.dtype)
    return (pred == tasks.y) & tasks.mask


def evaluate(params: Any, tasks: TaskSet) -> jax.Array:
    r"""Accuracy of ``params`` on every task.

    .. math::  f_k(\theta) = \frac{1}{|D_k|}\sum_{(x, y) \in D_k} [\hat y_\theta(x) = y].

    Args:
      params: model parameters (pure dict).
      tasks: ``K`` padded tasks.

    Returns:
      ``[K]`` accuracies in the default float dtype.

    Example:
      >>> acc = evaluate(params, class_tasks(data.x_test, data.y_test))  # [10]
    """
    correct = example_correct(params, tasks)
    num = jnp.sum(tasks.mask, axis=-1)
    return jnp.sum(correct, axis=-1) / num


# --------------------------------------------------------------------------------------
# base + experts on digits
# --------------------------------------------------------------------------------------


class DigitsSpec(NamedTuple):
    """Configuration of the digits base model and its experts.

    Attributes:
      hidden: hidden-layer widths of the MLP.
      test_fraction: per-class test share.
      base_counts: training images per class in the base's subset, assigned to the classes
        by a random permutation (so which classes the base knows is drawn from the key).
      base_steps, base_lr: Adam steps / step size of the base.
      expert_steps, expert_lr: Adam steps / step size of every expert.
      batch_size: minibatch rows.
      replay_fraction: share of each expert minibatch replayed from the base's subset.
    """

    hidden: tuple[int, ...] = (32,)
    test_fraction: float = 0.3
    base_counts: tuple[int, ...] = (1, 1, 2, 2, 3, 4, 6, 9, 14, 20)
    base_steps: int = 400
    base_lr: float = 1e-2
    expert_steps: int = 150
    expert_lr: float = 3e-3
    batch_size: int = 64
    replay_fraction: float = 0.5


class DigitsExperts(NamedTuple):
    """A base model, its ``T`` experts and the data they came from.

    Attributes:
      base: base parameters :math:`\\theta_0` (pure dict).
      experts: stacked expert parameters, every leaf ``[T, ...]``.
      tasks: the ``T`` evaluation tasks (test images of class ``t``).
      base_class_counts: ``[T]`` int, training images of class ``t`` the base saw.
      base_losses: ``[base_steps]`` loss trace of the base.
      expert_losses: ``[T, expert_steps]`` loss traces of the experts.
      data: the train / test split.
    """

    base: Any
    experts: Any
    tasks: TaskSet
    base_class_counts: jax.Array
    base_losses: jax.Array
    expert_losses: jax.Array
    data: DigitsData


def train_digits_experts(key: Key, spec: DigitsSpec | None = None) -> DigitsExperts:
    """Train the base model on an unbalanced subset, then one expert per class.

    Keys are split by purpose: ``split, assign, init, base, experts``.

    Args:
      key: PRNG key; the result is a deterministic function of it and ``spec``.
      spec: :class:`DigitsSpec` (default ``DigitsSpec()``).

    Returns:
      :class:`DigitsExperts`.
    """
    spec = DigitsSpec() if spec is None else spec
    if len(spec.base_counts) != NUM_CLASSES:
        raise ValueError(f"base_counts needs {NUM_CLASSES} entries, got {len(spec.base_counts)}")
    k_split, k_assign, k_init, k_base, k_experts = jr.split(key, 5)
    data = load_digits_split(k_split, test_fraction=spec.test_fraction)
    x_tr, y_tr = np.asarray(data.x_train), np.asarray(data.y_train)

    perm = np.asarray(jr.permutation(k_assign, NUM_CLASSES))
    counts = np.asarray(spec.base_counts, np.int64)[perm]  # class c gets counts[c]
    base_idx = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y_tr == c)
        if counts[c] > idx.size:
            raise ValueError(f"base_counts asks {counts[c]} images of class {c}; {idx.size} exist")
        base_idx.append(idx[: counts[c]])  # the split is already shuffled
    base_idx = np.concatenate(base_idx)
    base_set = make_dataset(x_tr[base_idx], y_tr[base_idx])

    params0 = init_mlp(k_init, in_features=NUM_FEATURES, hidden=spec.hidden)
    base_out = train_classifier(
        k_base,
        params0,
        base_set,
        num_steps=spec.base_steps,
        batch_size=spec.batch_size,
        learning_rate=spec.base_lr,
    )

    n_max = max(int((y_tr == c).sum()) for c in range(NUM_CLASSES))
    sets = [
        make_dataset(x_tr[y_tr == c], y_tr[y_tr == c], pad_to=n_max) for c in range(NUM_CLASSES)
    ]
    task_sets = tree_stack(sets)

    def one_expert(k: Key, d: Dataset) -> TrainOutput:
        return train_classifier(
            k,
            base_out.params,
            d,
            num_steps=spec.expert_steps,
            batch_size=spec.batch_size,
            learning_rate=spec.expert_lr,
            replay=base_set,
            replay_fraction=spec.replay_fraction,
        )

    exp_out = jax.vmap(one_expert)(jr.split(k_experts, NUM_CLASSES), task_sets)
    return DigitsExperts(
        base=base_out.params,
        experts=exp_out.params,
        tasks=class_tasks(data.x_test, data.y_test),
        base_class_counts=jnp.asarray(counts, jnp.int32),
        base_losses=base_out.losses,
        expert_losses=exp_out.losses,
        data=data,
    )


def save_digits_checkpoints(
    directory: str | Path, result: DigitsExperts, *, overwrite: bool = True
) -> tuple[Path, list[Path]]:
    """Save the base and every expert as orbax checkpoints, plus a ``manifest.json``.

    Layout: ``<directory>/base/``, ``<directory>/expert_00/``, ... (one orbax directory
    each, written atomically by :func:`mergetheory.io.save_orbax`).

    Args:
      directory: where to write (e.g. ``results/checkpoints``; not committed).
      result: the output of :func:`train_digits_experts`.
      overwrite: replace existing checkpoints.

    Returns:
      ``(base_path, [expert_paths])``.
    """
    from ..io import save_orbax

    directory = Path(directory)
    base_path = save_orbax(directory / "base", result.base, overwrite=overwrite)
    expert_paths: list[Path] = []
    for t, params in enumerate(tree_unstack(result.experts)):
        expert_paths.append(save_orbax(directory / f"expert_{t:02d}", params, overwrite=overwrite))
    manifest = {
        "base": base_path.name,
        "experts": [p.name for p in expert_paths],
        "tasks": [f"class {t}" for t in range(len(expert_paths))],
        "base_class_counts": np.asarray(result.base_class_counts).tolist(),
    }
    with atomic_write(directory / "manifest.json", "w") as f:
        f.write(json.dumps(manifest, indent=2))
    return base_path, expert_paths
