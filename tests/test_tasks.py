"""Tests for mergetheory.tasks: the moments each spec promises, checked from samples.

Statistical checks use a per-coordinate statistic ``z_p`` (i.i.d. over coordinates ``p``
for every family, since coordinates are independent while tasks may share a component),
and the bound ``|mean(z) - expected| < 5 * std(z) / sqrt(num_coordinates)``.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

from mergetheory.lora import densify, lora_gram_matrix
from mergetheory.tasks import (
    CorrelatedSpec,
    GaussianSpec,
    HeavyTailedSpec,
    LoRASpec,
    SignConflictSpec,
    SparseSpec,
    expected_sign_agreement,
    expected_support_overlap,
    sample_task_vectors,
    shape_tree,
)

SHAPES = {"layer": {"w": (40, 25), "b": (25,)}, "head": jax.ShapeDtypeStruct((15, 5), jnp.float32)}
D = 40 * 25 + 25 + 15 * 5  # 1100
T = 8  # one task count and one set of shapes everywhere: each family compiles once
F64 = jnp.float64

DENSE_SPECS = [
    GaussianSpec(T, norm=2.0),
    CorrelatedSpec(T, rho=0.4),
    SparseSpec(T, fraction=0.3, overlap=0.5),
    HeavyTailedSpec(T, nu=5.0),
    SignConflictSpec(T, flip_prob=0.2),
]


def _flat(tv) -> np.ndarray:
    """``[T, D]`` in NumPy (test-side maths stays in NumPy: no extra XLA compiles)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tv)]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def _gram(tv) -> np.ndarray:
    x = _flat(tv)
    return x @ x.T


def _check_mean(z: np.ndarray, expected: float, k: float = 5.0) -> None:
    z = np.asarray(z, np.float64).ravel()
    se = z.std(ddof=1) / math.sqrt(z.size)
    assert abs(z.mean() - expected) < k * se + 1e-12, (z.mean(), expected, se)


def _pairs(num: int):
    return [(i, j) for i in range(num) for j in range(i + 1, num)]


# --------------------------------------------------------------------------------------
# structure, dtype, determinism, transformations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "dtype"),
    [(s, F64) for s in DENSE_SPECS] + [(GaussianSpec(T), jnp.float32)],
    ids=lambda x: type(x).__name__ if isinstance(x, tuple) else jnp.dtype(x).name,
)
def test_structure_and_dtype(key, spec, dtype):
    tv = sample_task_vectors(key, spec, SHAPES, dtype)
    assert jax.tree.structure(tv) == jax.tree.structure({"layer": {"w": 0, "b": 0}, "head": 0})
    assert tv["layer"]["w"].shape == (T, 40, 25)
    assert tv["layer"]["b"].shape == (T, 25)
    assert tv["head"].shape == (T, 15, 5)  # ShapeDtypeStruct leaf; its dtype is ignored
    assert all(x.dtype == dtype for x in jax.tree.leaves(tv))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tv))


def test_shape_tree_forms():
    """Tuples, eval_shape output, nested tuples of shapes and a lone shape all work."""
    shapes, _ = shape_tree(jax.eval_shape(lambda: {"k": jnp.zeros((3, 4)), "s": jnp.zeros(())}))
    assert shapes == [(3, 4), ()]
    shapes, treedef = shape_tree(((2, 3), (4,)))  # a tuple of shapes is a container
    assert shapes == [(2, 3), (4,)] and treedef.num_leaves == 2
    tv = sample_task_vectors(jr.key(0), GaussianSpec(2), (5, 6))
    assert tv.shape == (2, 5, 6)


def test_deterministic_from_key(key):
    spec = CorrelatedSpec(T, 0.5)
    a = sample_task_vectors(key, spec, SHAPES, F64)
    b = sample_task_vectors(key, spec, SHAPES, F64)
    c = sample_task_vectors(jr.fold_in(key, 1), spec, SHAPES, F64)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["layer"]["w"], c["layer"]["w"])


def test_jit_vmap_over_keys_and_rho(key):
    """Specs built from traced values inside jit(vmap(...)); rho = 1 gives equal tasks."""
    rhos = jnp.asarray([0.0, 0.5, 1.0])
    keys = jr.split(key, 3)

    @jax.jit
    def draw(ks, rs):
        return jax.vmap(lambda k, r: sample_task_vectors(k, CorrelatedSpec(2, r), {"w": (6, 5)}))(
            ks, rs
        )

    out = draw(keys, rhos)
    assert out["w"].shape == (3, 2, 6, 5)
    np.testing.assert_allclose(out["w"][2, 0], out["w"][2, 1], rtol=1e-6)


def test_traced_once(key, assert_traced_once):
    """Continuous spec fields are traced: a new rho or norm does not retrace."""
    specs = iter([CorrelatedSpec(T, 0.1), CorrelatedSpec(T, 0.7, norm=3.0)])
    assert_traced_once(lambda: sample_task_vectors(key, next(specs), SHAPES, F64))


# --------------------------------------------------------------------------------------
# moments
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [1.0, 2.5])
def test_gaussian_moments(key, norm):
    num = T
    x = _flat(sample_task_vectors(key, GaussianSpec(num, norm), SHAPES, F64))
    sigma2 = norm**2 / D
    _check_mean(x / math.sqrt(sigma2), 0.0)
    _check_mean((x**2).mean(axis=0) / sigma2, 1.0)  # E ||tau||^2 = norm^2
    # independent tasks: E tau_i tau_j = 0
    z = np.mean([x[i] * x[j] for i, j in _pairs(8)], axis=0) / sigma2
    _check_mean(z, 0.0)


@pytest.mark.parametrize(
    "spec",
    [GaussianSpec(T, 3.0, True), CorrelatedSpec(T, 0.6, 3.0, True)],
    ids=lambda s: type(s).__name__,
)
def test_exact_norm(key, spec):
    tv = sample_task_vectors(key, spec, SHAPES, F64)
    np.testing.assert_allclose(np.sqrt(np.diag(_gram(tv))), 3.0, rtol=1e-12)


def test_exact_norm_keeps_cosines(key):
    a = sample_task_vectors(key, CorrelatedSpec(T, 0.6), SHAPES, F64)
    b = sample_task_vectors(key, CorrelatedSpec(T, 0.6, exact_norm=True), SHAPES, F64)
    ga, gb = _gram(a), _gram(b)
    ca = ga / np.sqrt(np.outer(np.diag(ga), np.diag(ga)))
    cb = gb / np.sqrt(np.outer(np.diag(gb), np.diag(gb)))
    np.testing.assert_allclose(ca, cb, rtol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9, 1.0])
def test_correlated_moments(key, rho):
    num, norm = T, 2.0
    x = _flat(sample_task_vectors(key, CorrelatedSpec(num, rho, norm), SHAPES, F64))
    sigma2 = norm**2 / D
    _check_mean((x**2).mean(axis=0) / sigma2, 1.0)
    z = np.mean([x[i] * x[j] for i, j in _pairs(num)], axis=0) / sigma2  # E = rho
    _check_mean(z, rho)
    # empirical correlation of two tasks' coordinates: |r - rho| < 5 se(r)
    r = np.corrcoef(x[0], x[1])[0, 1]
    se = max((1 - rho**2) / math.sqrt(D), 1e-12)
    assert abs(r - rho) < 5 * se + 1e-9


@pytest.mark.parametrize(("fraction", "overlap"), [(0.1, 0.0), (0.3, 0.5), (0.2, 1.0), (1.0, 0.0)])
def test_sparse_moments(key, fraction, overlap):
    num, norm = T, 1.5
    spec = SparseSpec(num, fraction, overlap, norm)
    x = _flat(sample_task_vectors(key, spec, SHAPES, F64))
    nz = x != 0
    _check_mean(nz.mean(axis=0), fraction)  # support fraction f
    both = np.mean([nz[i] & nz[j] for i, j in _pairs(num)], axis=0)
    _check_mean(both, float(expected_support_overlap(fraction, overlap)))
    _check_mean((x**2).mean(axis=0) / (norm**2 / D), 1.0)  # E ||tau||^2 = norm^2
    if overlap == 1.0:
        assert (nz == nz[:1]).all()  # one common support


def test_heavy_tailed_variance(key):
    """nu > 2: unit variance per coordinate after scaling (nu = 6 has a finite 4th moment)."""
    num = T
    x = _flat(sample_task_vectors(key, HeavyTailedSpec(num, 6.0), SHAPES, F64))
    _check_mean((x**2).mean(axis=0) * D, 1.0)
    _check_mean(x.mean(axis=0) * math.sqrt(D), 0.0)


@pytest.mark.parametrize("nu", [1.0, 1.5])
def test_heavy_tailed_scale_when_variance_is_infinite(key, nu):
    """nu <= 2: entries are sigma * t_nu, so P(|tau| < sigma) = 2 F_nu(1) - 1 (1/2 for Cauchy)."""
    num = T
    x = _flat(sample_task_vectors(key, HeavyTailedSpec(num, nu), SHAPES, F64))
    inside = (np.abs(x) * math.sqrt(D) < 1.0).mean(axis=0)
    expected = 2 * scipy.stats.t.cdf(1.0, nu) - 1
    if nu == 1.0:
        assert expected == pytest.approx(0.5)
    _check_mean(inside, expected)


@pytest.mark.parametrize("flip_prob", [0.0, 0.1, 0.3, 0.5])
def test_sign_conflict_agreement(key, flip_prob):
    num = T
    x = _flat(sample_task_vectors(key, SignConflictSpec(num, flip_prob), SHAPES, F64))
    s = np.sign(x)
    agree = np.mean([s[i] == s[j] for i, j in _pairs(num)], axis=0)
    expected = float(expected_sign_agreement(flip_prob))
    if flip_prob == 0.0:
        assert (s == s[:1]).all()
    else:
        _check_mean(agree, expected)
    _check_mean((x**2).mean(axis=0) * D, 1.0)


def test_lora_factors_and_norm(key):
    rank, alpha, norm, num = 4, 16.0, 2.0, T
    shapes = {"q": (12, 10), "v": (6, 10), "bias": (10,)}
    f = sample_task_vectors(key, LoRASpec(num, rank, alpha, norm), shapes, F64)
    assert f["bias"] is None
    assert f["q"].B.shape == (num, 12, rank) and f["q"].A.shape == (num, rank, 10)
    np.testing.assert_allclose(f["q"].scaling, alpha / rank)
    dense = densify(f)
    np.testing.assert_allclose(
        dense["q"], (alpha / rank) * np.einsum("tdr,trk->tdk", f["q"].B, f["q"].A), rtol=1e-12
    )
    # E sum_leaves ||s B A||_F^2 = norm^2 (tasks are i.i.d.)
    sq = np.diag(_gram(dense))
    _check_mean(sq / norm**2, 1.0)
    # alpha defaults to rank (scaling 1); the factored Gram matches the dense one
    g = sample_task_vectors(key, LoRASpec(T, rank), shapes, F64)
    np.testing.assert_allclose(g["v"].scaling, 1.0)
    np.testing.assert_allclose(lora_gram_matrix(g), _gram(densify(g)), rtol=1e-10)


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (CorrelatedSpec(2, -0.1), r"rho must lie in \[0.0, 1.0\]"),
        (CorrelatedSpec(2, 1.5), "rho"),
        (CorrelatedSpec(2, float("nan")), "rho"),
        (HeavyTailedSpec(2, 0.0), "nu"),
        (HeavyTailedSpec(2, -1.0), "nu"),
        (SparseSpec(2, 0.0), r"fraction must lie in \(0.0, 1.0\]"),
        (SparseSpec(2, 1.2), "fraction"),
        (SparseSpec(2, 0.5, overlap=1.5), "overlap"),
        (SignConflictSpec(2, 1.1), "flip_prob"),
        (GaussianSpec(2, norm=-1.0), "norm"),
        (GaussianSpec(0), "num_tasks"),
        (GaussianSpec(2.0), "num_tasks"),
        (GaussianSpec(True), "num_tasks"),
        (LoRASpec(2, 0), "rank"),
        (LoRASpec(2, 4, alpha=0.0), "alpha"),
    ],
)
def test_bad_specs(key, spec, match):
    with pytest.raises(ValueError, match=match):
        sample_task_vectors(key, spec, {"w": (4, 3)})


def test_bad_inputs(key):
    with pytest.raises(TypeError, match="unknown spec"):
        sample_task_vectors(key, (2, 0.5), {"w": (4,)})
    with pytest.raises(TypeError, match="floating"):
        sample_task_vectors(key, GaussianSpec(2), {"w": (4,)}, jnp.int32)
    with pytest.raises(ValueError, match=r"\['w'\]\[0\]: got the bare int"):
        sample_task_vectors(key, GaussianSpec(2), {"w": [4, 3]})
    with pytest.raises(ValueError, match="negative"):
        sample_task_vectors(key, GaussianSpec(2), {"w": (4, -3)})
    with pytest.raises(ValueError, match="not a shape"):
        sample_task_vectors(key, GaussianSpec(2), {"w": "4x3"})


@pytest.mark.parametrize(
    "family, param, expected",
    [
        ("gaussian", None, GaussianSpec(3, exact_norm=True)),
        ("correlated", 0.25, CorrelatedSpec(3, 0.25, exact_norm=True)),
        ("sparse", 0.1, SparseSpec(3, 0.1, exact_norm=True)),
        ("heavy", 2.5, HeavyTailedSpec(3, 2.5, exact_norm=True)),
        ("lora", 2, LoRASpec(3, 2)),
    ],
)
def test_family_spec_maps_names_to_specs(family, param, expected):
    from mergetheory.tasks import family_spec

    assert family_spec(family, param, 3, exact_norm=True) == expected


def test_family_spec_rejects_unknown_family():
    from mergetheory.tasks import family_spec

    with pytest.raises(ValueError, match="unknown family 'cauchy'"):
        family_spec("cauchy", 1.0, 3)
