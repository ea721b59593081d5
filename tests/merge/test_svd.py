"""Tests for mergetheory.merge.svd (TSV-M / TSV-C, Iso-C, Iso-CTS)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.lora import LoraFactors, densify
from mergetheory.merge import svd

tsv_m, iso_c, iso_cts = svd.tsv_m, svd.iso_c, svd.iso_cts


def _normal(seed, *shape):
    # NumPy draws: jax.random would compile a sampler per shape, which dominates here
    return np.random.default_rng(seed).standard_normal(shape)


def _polar(x):
    p, _, qh = np.linalg.svd(x, full_matrices=False)
    return p @ qh


def _ref_tsv_m(x):
    """NumPy emulation of FusionBench compute_and_sum_svd_mem_reduction (one 2-D key)."""
    num, m, n = x.shape
    r = min(m, n)
    k = r // num
    su, ss, sv = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for i in range(num):
        u, s, v = np.linalg.svd(x[i], full_matrices=False)
        su[:, i * k : (i + 1) * k], ss[i * k : (i + 1) * k] = u[:, :k], s[:k]
        sv[i * k : (i + 1) * k] = v[:k]
    return _polar(su) @ np.diag(ss) @ _polar(sv)


def _ref_iso_cts(x, frac=0.8):
    """NumPy emulation of FusionBench iso_utils.iso_cts (one 2-D key)."""
    num, m, n = x.shape
    r = min(m, n)
    k = int(r * frac)
    k = r - round((r - k) / num) * num
    nt = (r - k) // num
    u, s, v = np.linalg.svd(x.sum(0), full_matrices=False)
    cu, cs, cv = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for i in range(num):
        w = x[i] - u[:, :k] @ u[:, :k].T @ x[i]
        ut, st, vt = np.linalg.svd(w, full_matrices=False)
        cu[:, i * nt : (i + 1) * nt], cs[i * nt : (i + 1) * nt] = ut[:, :nt], st[:nt]
        cv[i * nt : (i + 1) * nt] = vt[:nt]
    cu[:, num * nt :], cs[num * nt :], cv[num * nt :] = u[:, :k], s[:k], v[:k]
    return _polar(cu) @ np.diag(np.full(r, cs.mean())) @ _polar(cv)


def _tv(seed, num=4, m=12, n=9):
    return {"w": jnp.asarray(_normal(seed, num, m, n)), "b": jnp.asarray(_normal(seed + 1, num, 5))}


def test_tsv_m_matches_reference_and_falls_back_to_mean():
    tv = _tv(0, num=3, m=12, n=10)  # r = 10, k = 3: 9 occupied columns of 10
    out = tsv_m(tv, None, alpha=0.7)
    np.testing.assert_allclose(
        out["w"], 0.7 * _ref_tsv_m(np.asarray(tv["w"])), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(out["b"], 0.7 * np.mean(tv["b"], 0), rtol=1e-12)


def test_tsv_m_factors_orthonormal_and_t1_truncation():
    x = jnp.asarray(_normal(2, 4, 10, 14))
    f = jax.jit(svd.tsv_m_factors)(x)
    assert f.u.shape == (10, 8) and f.vt.shape == (8, 14) and bool(f.occupied.all())
    np.testing.assert_allclose(f.u.T @ f.u, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(f.vt @ f.vt.T, np.eye(8), atol=1e-12)
    # rank-2 tasks: k = 3 per task leaves one null-space triplet per task unoccupied
    low = jnp.asarray(np.einsum("tir,trj->tij", _normal(3, 3, 10, 2), _normal(4, 3, 2, 12)))
    g = jax.jit(svd.tsv_m_factors)(low)
    occ = np.asarray(g.occupied)
    assert occ.tolist() == [True, True, False] * 3
    np.testing.assert_allclose(g.u[:, occ].T @ g.u[:, occ], np.eye(6), atol=1e-12)
    np.testing.assert_allclose(g.vt[occ] @ g.vt[occ].T, np.eye(6), atol=1e-12)
    # T = 1: full rank by default -> identity; with sv_reduction -> TSV-C truncation
    one = {"w": x[:1]}
    np.testing.assert_allclose(tsv_m(one, None)["w"], x[0], rtol=1e-10, atol=1e-12)
    trunc = tsv_m(one, None, sv_reduction=0.3)["w"]
    np.testing.assert_allclose(trunc, svd.tsv_c(one, sv_reduction=0.3)["w"][0], atol=1e-12)
    u, s, vt = np.linalg.svd(np.asarray(x[0]), full_matrices=False)
    np.testing.assert_allclose(trunc, (u[:, :3] * s[:3]) @ vt[:3], atol=1e-12)
    fac = svd.tsv_c(one, sv_reduction=0.3, factored=True)["w"]
    assert isinstance(fac, LoraFactors) and fac.B.shape == (1, 10, 3)
    np.testing.assert_allclose(densify({"w": fac})["w"][0], trunc, atol=1e-12)


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts"])
def test_task_order_and_scale(name):
    op = {"tsv_m": tsv_m, "iso_c": iso_c, "iso_cts": iso_cts}[name]
    tv = _tv(4, num=3, m=16, n=12)
    perm = jax.tree.map(lambda x: x[jnp.array([2, 0, 1])], tv)
    a, b = op(tv, None), op(perm, None)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-11), a, b)
    c = op(jax.tree.map(lambda x: 3.0 * x, tv), None)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(3.0 * u, v, rtol=1e-9, atol=1e-11), a, c)


def test_iso_c_invariants():
    tv = _tv(6, num=4, m=12, n=9)
    x = np.asarray(tv["w"])
    out = np.asarray(iso_c(tv, None, alpha=1.0)["w"])
    u, s, vt = np.linalg.svd(x.sum(0), full_matrices=False)
    sbar = s.mean()
    np.testing.assert_allclose(out, sbar * u @ vt, rtol=1e-10, atol=1e-12)  # reference formula
    so = np.linalg.svd(out, compute_uv=False)
    np.testing.assert_allclose(so, np.full(9, sbar), rtol=1e-10)  # flat spectrum
    uo, _, vto = np.linalg.svd(out, full_matrices=False)
    np.testing.assert_allclose(uo @ uo.T, u @ u.T, atol=1e-10)  # same column space
    np.testing.assert_allclose(vto.T @ vto, vt.T @ vt, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(out), sbar * np.sqrt(9), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, 2), sbar, rtol=1e-10)
    np.testing.assert_allclose(iso_c(tv, None)["b"], np.mean(tv["b"], 0), rtol=1e-12)


def test_iso_cts_matches_reference_and_is_isotropic():
    tv = _tv(8, num=3, m=20, n=15)  # r = 15: k = 12 common, 1 per task
    x = np.asarray(tv["w"])
    out = np.asarray(iso_cts(tv, None)["w"])
    np.testing.assert_allclose(out, _ref_iso_cts(x), rtol=1e-9, atol=1e-11)
    so = np.linalg.svd(out, compute_uv=False)
    np.testing.assert_allclose(so, np.full(15, so[0]), rtol=1e-9)
    factors = jax.jit(svd.iso_cts_factors, static_argnames=("common_space_fraction",))
    f = factors(jnp.asarray(x), common_space_fraction=0.6)  # k = 9, 2 per task
    np.testing.assert_allclose(f.u.T @ f.u, np.eye(15), atol=1e-12)
    np.testing.assert_allclose((f.u * f.s) @ f.vt, _ref_iso_cts(x, 0.6), rtol=1e-9, atol=1e-11)


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
        return svd.tsv_m(tv, None), svd.iso_c(tv, None), svd.iso_cts(tv, None)

    run(_tv(12))
    run(_tv(13))
    assert len(traces) == 1
