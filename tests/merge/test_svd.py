"""Tests shared by the SVD-based operators (mergetheory.merge.svd, .tsv, .iso)."""

import _svd_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.lora import LoraFactors, densify
from mergetheory.merge.iso import iso_c, iso_cts
from mergetheory.merge.tsv import tsv_m


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts"])
def test_task_order_and_scale(name):
    op = {"tsv_m": tsv_m, "iso_c": iso_c, "iso_cts": iso_cts}[name]
    tv = ref.task_vectors(4, num=3, m=16, n=12)
    perm = jax.tree.map(lambda x: x[jnp.array([2, 0, 1])], tv)
    a, b = op(tv, None), op(perm, None)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-11), a, b)
    c = op(jax.tree.map(lambda x: 3.0 * x, tv), None)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(3.0 * u, v, rtol=1e-9, atol=1e-11), a, c)


def test_lora_factors_match_densified_updates():
    rng = np.random.default_rng(10)
    b = jnp.asarray(rng.standard_normal((3, 14, 2)))
    a = jnp.asarray(rng.standard_normal((3, 2, 11)))
    scaling = jnp.asarray([0.5, 1.0, 2.0])
    fac = {"q": LoraFactors(b, a, scaling), "bias": jnp.asarray(rng.standard_normal((3, 4)))}
    dense = {"q": densify({"q": fac["q"]})["q"], "bias": fac["bias"]}
    w = jnp.asarray([1.0, 0.5, -1.0])
    for op in (tsv_m, iso_c):  # iso_cts densifies the factors itself
        got, want = op(fac, None, weights=w), op(dense, None, weights=w)
        jax.tree.map(
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-11), got, want
        )
    # stacked [L, T, ...] factors are merged layer by layer
    stacked = {"q": LoraFactors(jnp.stack([b, 2 * b]), jnp.stack([a, a]), 1.0)}
    got = tsv_m(stacked, None)["q"]
    assert got.shape == (2, 14, 11)
    np.testing.assert_allclose(got[1], tsv_m({"q": 2 * (b @ a)}, None)["q"], atol=1e-11)


def test_trace_once():
    traces = []

    @jax.jit
    def run(tv):
        traces.append(1)
        return tsv_m(tv, None), iso_c(tv, None), iso_cts(tv, None)

    run(ref.task_vectors(12))
    run(ref.task_vectors(13))
    assert len(traces) == 1
