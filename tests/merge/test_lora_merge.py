"""Tests for mergetheory.merge.lora: factor-wise vs product-wise merging of LoRA experts."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.lora import LoraFactors
from mergetheory.merge import lora_delta, lora_deltawise, lora_factorwise, rht, task_arithmetic
from mergetheory.tree import TaskVectorError


def _factors(seed, num=2, d=6, r=2, k=5, scaling=0.5):
    rng = np.random.default_rng(seed)
    return {
        "q": LoraFactors(
            B=jnp.asarray(rng.standard_normal((num, d, r))),
            A=jnp.asarray(rng.standard_normal((num, r, k))),
            scaling=scaling,
        )
    }


def test_factorwise_task_arithmetic_gap(key):
    f = _factors(1)
    b, a = np.asarray(f["q"].B), np.asarray(f["q"].A)
    merged = lora_factorwise(task_arithmetic, f, key)
    assert isinstance(merged["q"], LoraFactors)
    factorwise = np.asarray(lora_delta(merged)["q"])
    deltawise = np.asarray(lora_deltawise(task_arithmetic, f, key)["q"])
    # (B1 + B2)(A1 + A2) s  vs  (B1 A1 + B2 A2) s: the gap is s (B1 A2 + B2 A1)
    np.testing.assert_allclose(factorwise, 0.5 * (b[0] + b[1]) @ (a[0] + a[1]), rtol=1e-12)
    np.testing.assert_allclose(deltawise, 0.5 * (b[0] @ a[0] + b[1] @ a[1]), rtol=1e-12)
    np.testing.assert_allclose(
        factorwise - deltawise, 0.5 * (b[0] @ a[1] + b[1] @ a[0]), rtol=1e-10, atol=1e-12
    )


def test_single_expert_paths_agree(key):
    f = _factors(2, num=1)
    a = lora_delta(lora_factorwise(task_arithmetic, f, key))["q"]
    b = lora_deltawise(task_arithmetic, f, key)["q"]
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_per_expert_scaling_is_folded_into_b(key):
    f = _factors(3, scaling=jnp.asarray([0.5, 2.0]))
    merged = lora_factorwise(task_arithmetic, f, key)
    b, a = np.asarray(f["q"].B), np.asarray(f["q"].A)
    np.testing.assert_allclose(merged["q"].B, 0.5 * b[0] + 2.0 * b[1], rtol=1e-12)
    np.testing.assert_allclose(merged["q"].A, a[0] + a[1], rtol=1e-12)
    assert float(merged["q"].scaling) == 1.0


def test_rht_factorwise_is_the_seed_code_path(key):
    f = _factors(4, num=3, d=12, r=4, k=10)
    merged = lora_factorwise(rht, f, key, density=0.7)
    kb, ka = jr.split(key)
    np.testing.assert_allclose(merged["q"].B, rht([f["q"].B], kb, density=0.7)[0])
    np.testing.assert_allclose(merged["q"].A, rht([f["q"].A], ka, density=0.7)[0])


def test_bad_factor_layouts(key):
    stacked = {"q": LoraFactors(B=jnp.ones((2, 2, 6, 2)), A=jnp.ones((2, 2, 2, 5)))}
    with pytest.raises(TaskVectorError, match="stacked"):
        lora_factorwise(task_arithmetic, stacked, key)
    bad_rank = {"q": LoraFactors(B=jnp.ones((2, 6, 3)), A=jnp.ones((2, 2, 5)))}
    with pytest.raises(TaskVectorError, match="rank"):
        lora_factorwise(task_arithmetic, bad_rank, key)
    with pytest.raises(TaskVectorError, match="merged factors"):
        lora_delta({"q": LoraFactors(B=jnp.ones((2, 6, 2)), A=jnp.ones((2, 2, 5)))})
