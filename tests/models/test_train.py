"""Tests for mergetheory.models: the NNX MLP, Adam training, digits base + experts."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.io import load_orbax, task_vectors_from_checkpoints
from mergetheory.models.mlp import init_mlp, mlp_apply, mlp_dims
from mergetheory.models.train import (
    DigitsSpec,
    class_tasks,
    evaluate,
    example_correct,
    save_digits_checkpoints,
    train_digits_experts,
)

SMALL = DigitsSpec(hidden=(16,), base_steps=150, expert_steps=60, batch_size=32)


@pytest.fixture(scope="module")
def trained():
    return train_digits_experts(jr.key(20261123), SMALL)


def test_mlp_shapes_and_functional_apply(key, trained):
    shapes = jax.eval_shape(lambda k: init_mlp(k, hidden=(8, 5), num_classes=3), key)
    assert mlp_dims(shapes) == (64, (8, 5), 3)
    assert shapes["hidden_1"]["kernel"].shape == (8, 5)
    params = trained.base
    assert mlp_dims(params) == (64, SMALL.hidden, 10)
    x = trained.data.x_test[:4]
    assert mlp_apply(params, x).shape == (4, 10)
    # a stack of parameter sets evaluates with vmap
    stacked = jax.tree.map(lambda a: a[:2], trained.experts)
    out = jax.vmap(mlp_apply, (0, None))(stacked, x)
    assert out.shape == (2, 4, 10)
    first = jax.tree.map(lambda a: a[0], trained.experts)
    np.testing.assert_allclose(out[0], mlp_apply(first, x), rtol=1e-5)


def test_training_reduces_loss(trained):
    base = np.asarray(trained.base_losses)
    assert base[-20:].mean() < 0.25 * base[:5].mean()
    experts = np.asarray(trained.expert_losses)
    assert experts.shape == (10, SMALL.expert_steps)
    assert np.all(experts[:, -10:].mean(1) < experts[:, :5].mean(1))


def test_training_is_deterministic_from_the_key(trained, assert_traced_once):
    # the fixture's first call returns the module's run, the second trains again: the
    # second run must trace nothing new
    runs = iter([lambda: trained, lambda: train_digits_experts(jr.key(20261123), SMALL)])
    again = assert_traced_once(lambda: next(runs)())
    for a, b in zip(jax.tree.leaves(trained.experts), jax.tree.leaves(again.experts), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(trained.base_class_counts, again.base_class_counts)
    # a different key gives different models (same shapes: the compiled programs are reused)
    other = train_digits_experts(jr.key(7), SMALL)
    assert not np.array_equal(other.base["out"]["kernel"], trained.base["out"]["kernel"])


def test_base_knowledge_varies_and_experts_beat_base(trained):
    base_acc = np.asarray(evaluate(trained.base, trained.tasks))
    expert_acc = np.asarray(jax.vmap(evaluate, (0, None))(trained.experts, trained.tasks))
    own = np.diag(expert_acc)
    assert base_acc.max() - base_acc.min() > 0.3  # the base knows some classes far better
    assert np.all(own >= base_acc - 1e-9)
    weak = base_acc < 0.9
    assert weak.any() and np.all(own[weak] > base_acc[weak])
    # the fewer images of a class the base saw, the worse it knows it (rank correlation)
    counts = np.asarray(trained.base_class_counts)
    assert np.corrcoef(np.argsort(np.argsort(counts)), np.argsort(np.argsort(base_acc)))[0, 1] > 0.5


def test_evaluate_matches_numpy(trained):
    data = trained.data
    tasks = class_tasks(data.x_test, data.y_test)
    pred = np.asarray(jnp.argmax(mlp_apply(trained.base, data.x_test), -1))
    y = np.asarray(data.y_test)
    expected = [np.mean(pred[y == k] == k) for k in range(10)]
    np.testing.assert_allclose(evaluate(trained.base, tasks), expected, rtol=1e-12)
    corr = example_correct(trained.base, tasks)
    assert corr.shape == tasks.mask.shape
    assert not np.any(np.asarray(corr) & ~np.asarray(tasks.mask))


def test_checkpoints_round_trip_to_task_vectors(trained, tmp_path):
    base_path, expert_paths = save_digits_checkpoints(tmp_path / "ckpt", trained)
    assert (tmp_path / "ckpt" / "manifest.json").is_file()
    assert len(expert_paths) == 10
    restored = load_orbax(base_path)
    jax.tree.map(np.testing.assert_array_equal, restored, trained.base)
    tv = task_vectors_from_checkpoints(base_path, expert_paths[:3])
    expected = jax.tree.map(lambda e, b: e[:3] - b[None], trained.experts, trained.base)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), tv, expected)


def test_digits_without_scikit_learn_names_the_extra(monkeypatch, key):
    import sys

    from mergetheory.models.train import load_digits_split

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"mergetheory\[experiments\]"):
        load_digits_split(key)
