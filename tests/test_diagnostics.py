"""Tests for mergetheory.diagnostics: hand-computed examples and NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.diagnostics import (
    DiagnosticsOutput,
    cosine_matrix,
    interference_diagnostics,
    mean_off_diagonal,
    model_kinship,
    sign_conflict,
    singular_interference,
)
from mergetheory.tasks import expected_sign_conflict

# Test data come from NumPy: no extra XLA compiles for the random draws.
RNG = np.random.default_rng(20261123)


def _normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape))


def _sti_numpy(x: np.ndarray, top_k=None):
    """The paper's formula, literally: column-concatenated U, V and a (Tk)^3 product."""
    num, m, n = x.shape
    k = min(m, n) if top_k is None else top_k
    us, ss, vs = [], [], []
    for t in range(num):
        u, s, vh = np.linalg.svd(x[t], full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    u, v, s = np.concatenate(us, 1), np.concatenate(vs, 1), np.concatenate(ss)
    eye = np.eye(u.shape[1])
    mat = (u.T @ u - eye) @ np.diag(s) @ (v.T @ v - eye)
    return np.abs(mat).sum(), np.abs(mat).sum(axis=0).max()


# --------------------------------------------------------------------------------------
# cosines and kinship
# --------------------------------------------------------------------------------------


def test_orthogonal_vectors():
    tv = {"a": jnp.eye(3)[:, :2] * 2.0, "b": jnp.eye(3)[:, 2:] * 5.0}  # e_1, e_2, e_3 scaled
    np.testing.assert_allclose(cosine_matrix(tv), np.eye(3), atol=1e-15)
    kin = model_kinship(tv)
    np.testing.assert_allclose(kin.cs, np.eye(3), atol=1e-15)
    norms = np.array([2.0, 2.0, 5.0])
    ed = np.sqrt(norms[:, None] ** 2 + norms[None, :] ** 2) * (1 - np.eye(3))
    np.testing.assert_allclose(kin.ed, ed, rtol=1e-12)
    assert float(mean_off_diagonal(cosine_matrix(tv))) == 0.0


def test_identical_and_opposite_vectors():
    v = np.array([1.0, -2.0, 0.5, 3.0])
    tv = {"w": jnp.asarray(np.stack([v, v, -v, 2 * v]))}
    cos = np.asarray(cosine_matrix(tv))
    sign = np.array([1, 1, -1, 1.0])
    np.testing.assert_allclose(cos, np.outer(sign, sign), rtol=1e-12)
    kin = model_kinship(tv)
    np.testing.assert_allclose(kin.cs, np.ones((4, 4)), rtol=1e-12)  # CS is |cos|
    np.testing.assert_allclose(kin.pcc, np.outer(sign, sign), rtol=1e-12)
    assert float(kin.ed[0, 1]) == pytest.approx(0.0, abs=1e-7)
    assert float(kin.ed[0, 2]) == pytest.approx(2 * np.linalg.norm(v), rel=1e-12)


def test_zero_vector_gets_zero_cosine():
    tv = {"w": jnp.asarray([[1.0, 2.0], [0.0, 0.0]])}
    np.testing.assert_array_equal(cosine_matrix(tv), [[1.0, 0.0], [0.0, 0.0]])


def test_kinship_matches_numpy_reference():
    """PCC = np.corrcoef of the flattened deltas (torch.corrcoef semantics), leaves pooled."""
    tv = {"w": _normal(4, 6, 5) + 3.0, "b": _normal(4, 7)}
    flat = np.concatenate([np.asarray(tv["b"]), np.asarray(tv["w"]).reshape(4, -1)], axis=1)
    kin = model_kinship(tv)
    np.testing.assert_allclose(kin.pcc, np.corrcoef(flat), rtol=1e-10)
    cos = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    np.testing.assert_allclose(kin.cs, np.abs(cos), rtol=1e-10)
    ed = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    np.testing.assert_allclose(kin.ed, ed, rtol=1e-8, atol=1e-12)


def test_mean_off_diagonal():
    m = jnp.asarray([[1.0, -2.0, 3.0], [-2.0, 1.0, 4.0], [3.0, 4.0, 1.0]])
    assert float(mean_off_diagonal(m)) == pytest.approx(10.0 / 6.0)
    assert float(mean_off_diagonal(m, absolute=True)) == pytest.approx(18.0 / 6.0)
    assert math.isnan(float(mean_off_diagonal(jnp.ones((1, 1)))))


# --------------------------------------------------------------------------------------
# sign conflicts
# --------------------------------------------------------------------------------------


def test_sign_conflict_hand_example():
    # columns: sums 2 (+), 1 (+), -1 (-), 1 (+), 0 (tie -> +)
    x = np.array(
        [
            [1.0, -2.0, 0.0, 3.0, 1.0],
            [-1.0, 1.0, 0.0, -1.0, -1.0],
            [2.0, 2.0, -1.0, -1.0, 0.0],
        ]
    )
    tv = {"a": jnp.asarray(x[:, :2]), "b": jnp.asarray(x[:, 2:].reshape(3, 3, 1))}  # 2 leaves
    out = sign_conflict(tv)
    np.testing.assert_array_equal(out.num_conflicts, [1, 3, 1])
    np.testing.assert_array_equal(out.num_nonzero, [4, 4, 4])
    np.testing.assert_allclose(out.per_task, [1 / 4, 3 / 4, 1 / 4], rtol=1e-15)
    assert float(out.overall) == pytest.approx(5 / 12)


def test_sign_conflict_edge_cases():
    same = {"w": jnp.asarray([[1.0, -2.0, 0.0], [3.0, -1.0, 0.0]])}
    assert float(sign_conflict(same).overall) == 0.0
    zero = {"w": jnp.asarray([[1.0, -2.0], [0.0, 0.0]])}
    np.testing.assert_array_equal(sign_conflict(zero).per_task, [0.0, 0.0])  # no nonzeros


def test_sign_conflict_matches_closed_form():
    """Correlated Gaussians: rate = arccos(sqrt((1 + (n-1) rho) / n)) / pi (Sheppard)."""
    num, rho, reps = 5, 0.3, 16
    z = RNG.standard_normal((reps, num + 1, 40, 20))
    tv = {"w": jnp.asarray(np.sqrt(rho) * z[:, :1] + np.sqrt(1 - rho) * z[:, 1:])}
    rates = np.asarray(jax.vmap(lambda t: sign_conflict(t).overall)(tv))
    se = rates.std(ddof=1) / math.sqrt(reps)
    assert abs(rates.mean() - expected_sign_conflict(num, rho)) < 5 * se


# --------------------------------------------------------------------------------------
# TSV singular interference
# --------------------------------------------------------------------------------------


def test_sti_orthogonal_tasks_is_zero():
    e = np.eye(5)
    d1 = 2.0 * np.outer(e[0, :4], e[0])  # 4 x 5, rank 1
    d2 = 3.0 * np.outer(e[1, :4], e[1]) + 0.5 * np.outer(e[2, :4], e[3])
    tv = {"w": jnp.asarray(np.stack([d1, d2])), "b": jnp.ones((2, 3))}
    out = singular_interference(tv)
    assert out["b"] is None  # not a matrix leaf
    assert float(out["w"]) == pytest.approx(0.0, abs=1e-12)
    # a single task never interferes with itself
    single = singular_interference({"w": _normal(1, 6, 4)})
    assert float(single["w"]) == pytest.approx(0.0, abs=1e-12)


def test_sti_hand_example():
    """Delta_1 = e1 e1^T, Delta_2 = u u^T, u = (e1 + e2)/sqrt 2: M = diag(1/2, 1/2)."""
    u = np.array([1.0, 1.0]) / np.sqrt(2)
    x = np.stack([np.outer([1.0, 0.0], [1.0, 0.0]), np.outer(u, u)])
    entry = singular_interference({"w": jnp.asarray(x)})["w"]
    col = singular_interference({"w": jnp.asarray(x)}, ord="max_col")["w"]
    assert float(entry) == pytest.approx(1.0, rel=1e-12)
    assert float(col) == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("top_k", [None, 2])
def test_sti_matches_numpy_formula(top_k):
    x = _normal(4, 7, 5)
    entry, col = _sti_numpy(np.asarray(x), top_k)
    got = singular_interference({"w": x}, top_k=top_k)["w"]
    got_col = singular_interference({"w": x}, top_k=top_k, ord="max_col")["w"]
    np.testing.assert_allclose(got, entry, rtol=1e-10)
    np.testing.assert_allclose(got_col, col, rtol=1e-10)


def test_sti_zero_padding_and_permutation():
    """All-zero experts add nothing; the task order does not matter."""
    x = _normal(3, 6, 4)
    base = float(singular_interference({"w": x})["w"])
    padded = jnp.concatenate([x, jnp.zeros((2, 6, 4), jnp.float64)])
    assert float(singular_interference({"w": padded})["w"]) == pytest.approx(base, rel=1e-10)
    assert float(singular_interference({"w": x[::-1]})["w"]) == pytest.approx(base, rel=1e-10)


def test_sti_errors():
    with pytest.raises(ValueError, match="ord"):
        singular_interference({"w": jnp.ones((2, 3, 3))}, ord="fro")
    with pytest.raises(ValueError, match="top_k"):
        singular_interference({"w": jnp.ones((2, 3, 3))}, top_k=0)


# --------------------------------------------------------------------------------------
# the bundle
# --------------------------------------------------------------------------------------


def test_interference_diagnostics_bundle_and_trace_once(assert_traced_once):
    tv = {"w": _normal(3, 9, 6), "b": _normal(3, 6)}
    out = interference_diagnostics(tv)
    assert isinstance(out, DiagnosticsOutput)
    np.testing.assert_allclose(out.cosine, cosine_matrix(tv), rtol=1e-12)
    np.testing.assert_allclose(out.sign_conflict.per_task, sign_conflict(tv).per_task)
    per_leaf = singular_interference(tv)
    assert out.singular_interference_per_leaf["b"] is None
    np.testing.assert_allclose(out.singular_interference, per_leaf["w"], rtol=1e-12)
    np.testing.assert_allclose(out.kinship.pcc, model_kinship(tv).pcc, rtol=1e-12)
    # a second call with new values and the same shapes does not retrace
    new_values = iter([jax.tree.map(lambda x: 2.0 * x, tv), jax.tree.map(lambda x: 3.0 * x, tv)])
    assert_traced_once(lambda: interference_diagnostics(next(new_values)))
    # no matrix leaf: total interference is 0
    vec = interference_diagnostics({"b": tv["b"]})
    assert float(vec.singular_interference) == 0.0
