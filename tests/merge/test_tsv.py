"""Tests for mergetheory.merge.tsv (TSV-M, TSV-C)."""

import _svd_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.lora import LoraFactors, densify
from mergetheory.merge import tsv
from mergetheory.merge.tsv import tsv_m


def test_tsv_m_matches_reference_and_falls_back_to_mean():
    tv = ref.task_vectors(0, num=3, m=12, n=10)  # r = 10, k = 3: 9 occupied columns of 10
    out = tsv_m(tv, None, alpha=0.7)
    np.testing.assert_allclose(
        out["w"], 0.7 * ref.ref_tsv_m(np.asarray(tv["w"])), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(out["b"], 0.7 * np.mean(tv["b"], 0), rtol=1e-12)


def test_tsv_m_factors_orthonormal_and_t1_truncation():
    x = jnp.asarray(ref.normal(2, 4, 10, 14))
    f = jax.jit(tsv.tsv_m_factors)(x)
    assert f.u.shape == (10, 8) and f.vt.shape == (8, 14) and bool(f.occupied.all())
    np.testing.assert_allclose(f.u.T @ f.u, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(f.vt @ f.vt.T, np.eye(8), atol=1e-12)
    # rank-2 tasks: k = 3 per task leaves one null-space triplet per task unoccupied
    low = jnp.asarray(np.einsum("tir,trj->tij", ref.normal(3, 3, 10, 2), ref.normal(4, 3, 2, 12)))
    g = jax.jit(tsv.tsv_m_factors)(low)
    occ = np.asarray(g.occupied)
    assert occ.tolist() == [True, True, False] * 3
    np.testing.assert_allclose(g.u[:, occ].T @ g.u[:, occ], np.eye(6), atol=1e-12)
    np.testing.assert_allclose(g.vt[occ] @ g.vt[occ].T, np.eye(6), atol=1e-12)
    # T = 1: full rank by default -> identity; with sv_reduction -> TSV-C truncation
    one = {"w": x[:1]}
    np.testing.assert_allclose(tsv_m(one, None)["w"], x[0], rtol=1e-10, atol=1e-12)
    trunc = tsv_m(one, None, sv_reduction=0.3)["w"]
    np.testing.assert_allclose(trunc, tsv.tsv_c(one, sv_reduction=0.3)["w"][0], atol=1e-12)
    u, s, vt = np.linalg.svd(np.asarray(x[0]), full_matrices=False)
    np.testing.assert_allclose(trunc, (u[:, :3] * s[:3]) @ vt[:3], atol=1e-12)
    fac = tsv.tsv_c(one, sv_reduction=0.3, factored=True)["w"]
    assert isinstance(fac, LoraFactors) and fac.B.shape == (1, 10, 3)
    np.testing.assert_allclose(densify({"w": fac})["w"][0], trunc, atol=1e-12)


def test_two_stage_tsv_m_equals_tsv_m_on_every_subset():
    # stage one once for all tasks, stage two on a subset's rows: the registry operator's
    # bits on that subset (float32, as the bridge experiment runs it), including the ranks
    # floor(r / n) = 0 (n > 5: zero matrix) and the mean on the non-matrix leaves
    rng = np.random.default_rng(7)
    tv = {
        "w": jnp.asarray(rng.normal(size=(7, 12, 5)), jnp.float32),
        "v": jnp.asarray(rng.normal(size=(7, 6, 9)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
    }
    trip = tsv.tsv_m_triplets(tv)
    assert trip["b"] is None and trip["w"][0].shape == (7, 12, 5)
    for idx in ([3], [4, 0], [6, 2, 5], [1, 2, 3, 4, 5, 6, 0]):
        sub, sub_trip = jax.tree.map(lambda x, idx=idx: x[np.asarray(idx)], (tv, trip))
        got = tsv.tsv_m_from_triplets(sub, sub_trip, alpha=0.35)
        want = tsv_m(sub, None, alpha=0.35)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(g, w)
    assert not np.any(got["w"])  # n = 7 > r = 5: k = 0
    factors = {"q": LoraFactors(jnp.ones((2, 4, 1)), jnp.ones((2, 1, 3)), 1.0)}
    with pytest.raises(ValueError, match="dense task vectors only"):
        tsv.tsv_m_triplets(factors)
