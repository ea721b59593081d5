"""Tests for mergetheory.merge.iso (Iso-C, Iso-CTS)."""

import _svd_reference as ref
import jax
import jax.numpy as jnp
import numpy as np

from mergetheory.merge import iso
from mergetheory.merge.iso import iso_c, iso_cts


def test_iso_c_invariants():
    tv = ref.task_vectors(6, num=4, m=12, n=9)
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
    tv = ref.task_vectors(8, num=3, m=20, n=15)  # r = 15: k = 12 common, 1 per task
    x = np.asarray(tv["w"])
    out = np.asarray(iso_cts(tv, None)["w"])
    np.testing.assert_allclose(out, ref.ref_iso_cts(x), rtol=1e-9, atol=1e-11)
    so = np.linalg.svd(out, compute_uv=False)
    np.testing.assert_allclose(so, np.full(15, so[0]), rtol=1e-9)
    factors = jax.jit(iso.iso_cts_factors, static_argnames=("common_space_fraction",))
    f = factors(jnp.asarray(x), common_space_fraction=0.6)  # k = 9, 2 per task
    np.testing.assert_allclose(f.u.T @ f.u, np.eye(15), atol=1e-12)
    np.testing.assert_allclose(
        (f.u * f.s[None, :]) @ f.vt, ref.ref_iso_cts(x, 0.6), rtol=1e-9, atol=1e-11
    )
