"""Tests for mergetheory.lora: the factored Gram equals the dense Gram."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory import lora
from mergetheory.lora import LoraFactors, LoraShape
from mergetheory.tree import TaskVectorError, gram_matrix

SHAPES = {
    "layer0.q": LoraShape(7, 5, 2),
    "layer0.v": LoraShape(4, 9, 3),
    "layer1.mlp": LoraShape(11, 6, 1),
    "stacked.o": LoraShape(5, 8, 4, num_layers=3),
}


def _np_factors(seed, shapes, num_tasks, scaling=1.0):
    """Random float64 factors from NumPy (jax.random would compile once per shape)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, s in shapes.items():
        lead = (num_tasks,) if s.num_layers is None else (s.num_layers, num_tasks)
        b = rng.standard_normal(lead + (s.d_out, s.rank))
        a = rng.standard_normal(lead + (s.rank, s.d_in))
        out[name] = LoraFactors(jnp.asarray(b), jnp.asarray(a), scaling)
    return out


@pytest.mark.parametrize("num_tasks", [1, 4])
def test_factored_gram_equals_dense_gram(num_tasks):
    factors = _np_factors(num_tasks, SHAPES, num_tasks, scaling=0.7)
    g_fact = lora.lora_gram_matrix(factors)
    g_dense = gram_matrix(lora.densify(factors))
    assert g_fact.shape == (num_tasks, num_tasks)
    assert g_fact.dtype == jnp.float64
    np.testing.assert_allclose(g_fact, g_dense, rtol=1e-10, atol=0)


def test_per_expert_scaling_and_nested_pytree():
    num = 3
    f = _np_factors(5, {"a": LoraShape(6, 4, 2), "b": LoraShape(3, 10, 5)}, num)
    f1, f2 = f["a"], f["b"]
    scale = jnp.asarray(np.random.default_rng(6).uniform(0.5, 2.0, num))
    tree = {"attn": [f1._replace(scaling=scale)], "mlp": {"up": f2}}
    np.testing.assert_allclose(
        lora.lora_gram_matrix(tree), gram_matrix(lora.densify(tree)), rtol=1e-10
    )


def test_densify_layout():
    f = _np_factors(7, {"s": LoraShape(3, 2, 1, num_layers=5)}, 4)
    dense = lora.densify(f)["s"]
    assert dense.shape == (4, 5, 3, 2)  # task axis first
    np.testing.assert_allclose(dense[2, 1], f["s"].B[1, 2] @ f["s"].A[1, 2], rtol=1e-12)


def test_float32_factors_give_float32_gram(key):
    # the sampler: modules of the same shape share one compiled draw (same shape as below)
    shape = LoraShape(64, 256, 8)
    f = lora.sample_lora_factors(key, {"q": shape, "v": shape}, 2)
    assert f["q"].B.dtype == jnp.float32 and not np.array_equal(f["q"].B, f["v"].B)
    g = lora.lora_gram_matrix(f)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, gram_matrix(lora.densify(f)), rtol=1e-5)


def test_gram_is_traced_once(assert_traced_once):
    f = _np_factors(8, {"q": LoraShape(5, 4, 2)}, 2)
    calls = iter([f, jax.tree.map(lambda x: x + 1.0, f)])  # same shapes, new values
    assert_traced_once(lambda: lora.lora_gram_matrix(next(calls)))


def test_gemma_layout_sizes():
    flat = lora.gemma2_2b_lora_shapes(16)
    stacked = lora.gemma2_2b_lora_shapes(16, stacked=True)
    assert len(flat) == 26 * 7 and len(stacked) == 7
    assert flat["model.layers.3.mlp.down_proj"] == LoraShape(2304, 9216, 16)
    dense, factored = lora.lora_dense_size(flat)
    assert (dense, factored) == lora.lora_dense_size(stacked)
    assert dense == 26 * (2048 * 2304 + 2 * 1024 * 2304 + 2304 * 2048 + 3 * 9216 * 2304)
    assert 2.0e9 < dense < 2.1e9
    assert factored == 26 * 16 * (4352 + 2 * 3328 + 4352 + 3 * 11520)


def test_sampler_is_deterministic_and_scaled(key):
    shapes = {"q": LoraShape(64, 256, 8)}
    f1 = lora.sample_lora_factors(key, shapes, 2)
    f2 = lora.sample_lora_factors(key, shapes, 2)
    np.testing.assert_array_equal(f1["q"].B, f2["q"].B)
    dense = lora.densify(f1)["q"]
    assert 0.5 / 256 < float(jnp.var(dense)) < 2.0 / 256


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"q": LoraFactors(jnp.zeros((2, 3, 4)), jnp.zeros((2, 5, 6)))}, "rank mismatch"),
        ({"q": LoraFactors(jnp.zeros((2, 3, 4)), jnp.zeros((3, 4, 6)))}, "leading axes"),
        ({"q": LoraFactors(jnp.zeros((3, 4)), jnp.zeros((4, 6)))}, "expected B"),
        ({"q": LoraFactors(jnp.zeros((2, 3, 1)), jnp.zeros((2, 1, 6)), jnp.ones(3))}, "scaling"),
        (
            {
                "q": LoraFactors(jnp.zeros((2, 3, 1)), jnp.zeros((2, 1, 6))),
                "v": LoraFactors(jnp.zeros((3, 3, 1)), jnp.zeros((3, 1, 6))),
            },
            r"factors\['v'\]: 3 experts",
        ),
        ({"q": jnp.zeros((2, 3))}, "expected LoraFactors"),
        ({"q": LoraFactors(jnp.full((2, 3, 1), jnp.nan), jnp.zeros((2, 1, 6)))}, "NaN"),
    ],
)
def test_bad_factors_raise_naming_the_leaf(bad, match):
    with pytest.raises(TaskVectorError, match=match):
        lora.lora_gram_matrix(bad)


def test_sampler_factor_laws(key):
    """B ~ N(0, 1/r), A ~ N(0, 1/k) entrywise (bounds from the estimators' stderr); the
    modules' draws are uncorrelated and a stacked module's layers differ."""
    shapes = {"q": LoraShape(256, 128, 8), "v": LoraShape(256, 128, 8, num_layers=2)}
    f = lora.sample_lora_factors(key, shapes, 3)
    for fac in f.values():
        for x, var in [(np.asarray(fac.B, np.float64), 1 / 8), (np.asarray(fac.A), 1 / 128)]:
            n = x.size
            assert abs(x.mean()) < 5 * np.sqrt(var / n)
            assert abs(x.var() / var - 1) < 5 * np.sqrt(2 / n)
    b_q, b_v = np.asarray(f["q"].B).ravel(), np.asarray(f["v"].B[0]).ravel()
    assert abs(np.corrcoef(b_q, b_v)[0, 1]) < 5 / np.sqrt(b_q.size)
    assert not np.array_equal(f["v"].B[0], f["v"].B[1])
