"""NumPy references and inputs shared by the SVD-operator tests (test_svd, test_tsv, test_iso)."""

import jax.numpy as jnp
import numpy as np


def normal(seed, *shape):
    # NumPy draws: jax.random would compile a sampler per shape, which dominates here
    return np.random.default_rng(seed).standard_normal(shape)


def polar(x):
    p, _, qh = np.linalg.svd(x, full_matrices=False)
    return p @ qh


def ref_tsv_m(x):
    """NumPy emulation of FusionBench compute_and_sum_svd_mem_reduction (one 2-D key)."""
    num, m, n = x.shape
    r = min(m, n)
    k = r // num
    su, ss, sv = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for i in range(num):
        u, s, v = np.linalg.svd(x[i], full_matrices=False)
        su[:, i * k : (i + 1) * k], ss[i * k : (i + 1) * k] = u[:, :k], s[:k]
        sv[i * k : (i + 1) * k] = v[:k]
    return polar(su) @ np.diag(ss) @ polar(sv)


def ref_iso_cts(x, frac=0.8):
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
    return polar(cu) @ np.diag(np.full(r, cs.mean())) @ polar(cv)


def task_vectors(seed, num=4, m=12, n=9):
    return {"w": jnp.asarray(normal(seed, num, m, n)), "b": jnp.asarray(normal(seed + 1, num, 5))}
