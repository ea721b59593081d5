"""Tests for mergetheory.merge.knots (KnOTS)."""

import importlib

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.lora import LoraFactors, densify

kn = importlib.import_module("mergetheory.merge.knots")  # `knots` attr is the function


def _normal(seed, *shape):
    # NumPy draws: jax.random would compile a sampler per shape, which dominates here
    return np.random.default_rng(seed).standard_normal(shape)


def _ref_knots(mats, density, scale):
    """NumPy emulation of KnOTS SVDMerger (svd-vector) + masking_ops TIES, 'mean' merge."""
    bases, coords = [], []
    for x in mats:  # x [T, m, n]
        num, m, n = x.shape
        u, s, vt = np.linalg.svd(np.concatenate(list(x), axis=1), full_matrices=False)
        keep = s > 1e-10
        u, s, vt = u[:, keep], s[keep], vt[keep]
        bases.append(u)
        coords.append([np.diag(s) @ vt[:, t * n : (t + 1) * n] for t in range(num)])
    num = len(coords[0])
    vecs = np.stack([np.concatenate([c[t].ravel() for c in coords]) for t in range(num)])
    d = vecs.shape[1]
    kth = np.sort(np.abs(vecs), axis=1)[:, d - int(d * density) - 1]  # kthvalue(d - k), 1-based
    pruned = vecs * (np.abs(vecs) >= kth[:, None])
    sign = np.sign(pruned.sum(0))
    sign[sign == 0] = np.sign(sign.sum())
    agree = np.where(sign > 0, pruned > 0, pruned < 0)
    kept = pruned * agree
    merged = kept.sum(0) / np.maximum((kept != 0).sum(0), 1)
    out, start = [], 0
    for u, c in zip(bases, coords, strict=True):
        size = c[0].size
        out.append(scale * u @ merged[start : start + size].reshape(c[0].shape))
        start += size
    return out


def _tv(seed, num=3):
    return {
        "w": jnp.asarray(_normal(seed, num, 8, 5)),
        "v": jnp.asarray(_normal(seed + 1, num, 6, 7)),
        "b": jnp.asarray(_normal(seed + 2, num, 4)),
    }


def test_matches_reference_global_trim():
    tv = _tv(0)
    out = kn.knots(tv, None, density=0.2, scale=0.6)
    want_w, want_v = _ref_knots([np.asarray(tv["w"]), np.asarray(tv["v"])], 0.2, 0.6)
    np.testing.assert_allclose(out["w"], want_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["v"], want_v, rtol=1e-9, atol=1e-12)
    # the non-2-D pool gets the same TIES on its raw entries
    (want_b,) = kn.knots_ties_pool([tv["b"]], 0.2)
    np.testing.assert_allclose(out["b"], 0.6 * want_b, rtol=1e-12)
    per_tensor = kn.knots(tv, None, density=0.2, scale=0.6, trim_scope="tensor")
    (want_w1,) = _ref_knots([np.asarray(tv["w"])], 0.2, 0.6)
    np.testing.assert_allclose(per_tensor["w"], want_w1, rtol=1e-9, atol=1e-12)


def test_coordinates_reconstruct_each_task_and_identity_at_one():
    x = jnp.asarray(_normal(3, 3, 9, 4))
    u, s, occ = jax.jit(kn.knots_coordinates)(x)
    assert u.shape == (9, 9) and s.shape == (3, 9, 4) and bool(occ.all())
    np.testing.assert_allclose(jnp.einsum("mp,tpn->tmn", u, s), x, atol=1e-12)
    one = jax.tree.map(lambda a: a[:1], _tv(4))
    out = kn.knots(one, None, density=1.0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[0], atol=1e-12), out, one)


@pytest.mark.parametrize("trim_scope", ["global", "tensor"])
def test_lora_factors_match_densified(trim_scope):
    rng = np.random.default_rng(5)
    b = jnp.asarray(rng.standard_normal((3, 14, 2)))
    a = jnp.asarray(rng.standard_normal((3, 2, 11)))
    fac = {
        "q": LoraFactors(b, a, jnp.asarray([0.5, 1.0, 2.0])),
        "w": jnp.asarray(_normal(6, 3, 5, 4)),
    }
    dense = {"q": densify({"q": fac["q"]})["q"], "w": fac["w"]}
    got = kn.knots(fac, None, trim_scope=trim_scope)
    want = kn.knots(dense, None, trim_scope=trim_scope)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-11), got, want)


def test_dare_ties_keys_and_limits(key):
    tv = {"w": _tv(7)["w"]}  # one leaf: each leaf shape compiles its own sampler
    a = kn.knots_dare_ties(tv, key)
    b = kn.knots_dare_ties(tv, key)
    c = kn.knots_dare_ties(tv, jr.fold_in(key, 1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(a["w"], c["w"])
    full = kn.knots_dare_ties(tv, key, density=1.0, trim_density=0.3)
    np.testing.assert_allclose(full["w"], kn.knots(tv, None, density=0.3)["w"], rtol=1e-12)


def test_trace_once():
    traces = []

    @jax.jit
    def run(tv, density):
        traces.append(1)
        return kn.knots(tv, None, density=density)

    run(_tv(8), 0.2)
    run(_tv(9), 0.3)
    assert len(traces) == 1
