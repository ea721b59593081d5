"""Tests for mergetheory.merge.linear: average, Task Arithmetic, base-knowledge weighting."""

import _peft_reference as peft
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.merge import (
    average,
    base_knowledge_weighted,
    base_knowledge_weights,
    task_arithmetic,
)
from mergetheory.tree import TaskVectorError

X = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]])


def test_average_hand_example(key):
    np.testing.assert_allclose(average({"x": jnp.asarray(X)}, key)["x"], [3.0, 3.0])
    # weights [1, 1, 2]: (1 + 3 + 10) / 4, (2 + 6 + 2) / 4
    out = average({"x": jnp.asarray(X)}, key, weights=jnp.asarray([1.0, 1.0, 2.0]))["x"]
    np.testing.assert_allclose(out, [3.5, 2.5])


def test_task_arithmetic_hand_example_and_peft(key):
    w = np.array([1.0, -1.0, 0.5])
    # 2 * (1 - 3 + 2.5, 2 - 6 + 0.5) = (1, -7)
    out = task_arithmetic({"x": jnp.asarray(X)}, key, weights=jnp.asarray(w), scale=2.0)["x"]
    np.testing.assert_allclose(out, [1.0, -7.0], rtol=1e-12)
    np.testing.assert_allclose(out, 2.0 * peft.task_arithmetic(list(X), w), rtol=1e-12)
    # default: the plain sum of task vectors
    np.testing.assert_allclose(task_arithmetic({"x": jnp.asarray(X)}, key)["x"], [9.0, 9.0])


def test_base_knowledge_weights_hand_example():
    # (1 - acc) / tau = [1, 5] -> softmax = [1, e^4] / (1 + e^4)
    omega = base_knowledge_weights(jnp.asarray([0.9, 0.5]), temperature=0.1)
    e4 = np.exp(4.0)
    np.testing.assert_allclose(omega, [1 / (1 + e4), e4 / (1 + e4)], rtol=1e-12)


def test_base_knowledge_weighted_merge(key):
    tv = {"x": jnp.eye(2)}
    acc = jnp.asarray([0.9, 0.5])
    out = base_knowledge_weighted(tv, key, base_accuracy=acc, temperature=0.1)["x"]
    e4 = np.exp(4.0)
    np.testing.assert_allclose(out, [1 / (1 + e4), e4 / (1 + e4)], rtol=1e-12)
    # tau -> infinity: the mean-merge baseline
    out = base_knowledge_weighted(tv, key, base_accuracy=acc, temperature=1e9)["x"]
    np.testing.assert_allclose(out, [0.5, 0.5], rtol=1e-8)
    # prior weights multiply the softmax; scale multiplies everything
    out = base_knowledge_weighted(
        tv, key, base_accuracy=jnp.asarray([0.5, 0.5]), weights=jnp.asarray([2.0, 4.0]), scale=3.0
    )["x"]
    np.testing.assert_allclose(out, [3.0, 6.0], rtol=1e-12)


def test_traced_once(key, assert_traced_once):
    tv = {"x": jnp.ones((3, 23))}
    for call in [
        lambda w: average(tv, key, weights=w),
        lambda w: task_arithmetic(tv, key, weights=w, scale=float(w[0])),
        lambda w: base_knowledge_weighted(
            tv, key, base_accuracy=w / 4, temperature=float(w[1]), weights=w
        ),
    ]:
        ws = iter([jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray([3.0, 1.0, 2.0])])
        assert_traced_once(lambda call=call, ws=ws: call(next(ws)), expect_first_trace=True)


def test_bad_inputs(key):
    tv = {"x": jnp.asarray(X)}
    with pytest.raises(ValueError, match="sum to 0"):
        average(tv, key, weights=jnp.asarray([1.0, -1.0, 0.0]))
    with pytest.raises(TaskVectorError, match="weights has shape"):
        task_arithmetic(tv, key, weights=jnp.ones(4))
    with pytest.raises(TaskVectorError, match="base_accuracy has shape"):
        base_knowledge_weighted(tv, key, base_accuracy=jnp.ones(2) / 2)
    with pytest.raises(ValueError, match="base_accuracy must lie in"):
        base_knowledge_weighted(tv, key, base_accuracy=jnp.asarray([0.1, 1.2, 0.3]))
    with pytest.raises(ValueError, match="temperature"):
        base_knowledge_weighted(tv, key, base_accuracy=jnp.ones(3) / 2, temperature=0.0)
    with pytest.raises(TaskVectorError, match="no array leaves"):
        average({}, key)
    with pytest.raises(TaskVectorError, match="not floating"):
        average({"x": jnp.ones((2, 3), jnp.int32)}, key)
