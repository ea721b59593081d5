"""Tests for mergetheory.geometry and mergetheory.linalg: sets, factorisation, NNLS, images."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.optimize

from mergetheory import geometry, linalg, width
from mergetheory.geometry import (
    CircularCone,
    ConvexHull,
    ConvexHullWithOrigin,
    Ellipsoid,
    L1Ball,
    L2Ball,
    LinfBall,
    NonnegativeOrthant,
    PointSet,
    PolyhedralCone,
    Span,
    Zonotope,
)
from mergetheory.tree import TaskVectorError


def _tree(seed, num=4):
    """A task-vector pytree built with NumPy (eager jnp ops would each compile)."""
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((num, 3)), "b": {"w": rng.standard_normal((num, 2, 2))}}


# --------------------------------------------------------------------------------------
# constructors
# --------------------------------------------------------------------------------------


def test_from_task_vectors_pytree_equals_flat(key):
    tv = _tree(0)
    flat = np.concatenate([tv["a"], tv["b"]["w"].reshape(4, 4)], axis=1)
    a = ConvexHull.from_task_vectors(tv)
    b = ConvexHull.from_task_vectors(flat)
    c = ConvexHull.from_task_vectors(jnp.asarray(flat))
    np.testing.assert_allclose(a.gram, flat @ flat.T, rtol=1e-12)
    for s in (b, c):
        np.testing.assert_allclose(s.gram, a.gram, rtol=1e-12)
        np.testing.assert_allclose(s.points, a.points, rtol=0)
    assert a.num_generators == 4 and a.dim == 7
    d = Span.from_task_vectors(tv, keep_points=False)
    assert d.points is None and d.dim is None and isinstance(d, Span)
    np.testing.assert_allclose(d.gram, d.gram.T, rtol=0)


def test_from_gram_validates():
    g = np.array([[2.0, 1.0], [1.0, 2.0]])
    s = PolyhedralCone.from_gram(g)
    assert s.points is None and s.num_generators == 2
    with pytest.raises(ValueError, match="square"):
        ConvexHull.from_gram(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        ConvexHull.from_gram(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        ConvexHull.from_gram(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="semi-definite"):
        ConvexHull.from_gram(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="floating"):
        ConvexHull.from_gram(np.eye(2, dtype=np.int32))


def test_bad_task_vectors_raise(key):
    with pytest.raises(TaskVectorError, match="NaN"):
        ConvexHull.from_task_vectors({"w": np.array([[1.0, np.nan]])})
    with pytest.raises(TaskVectorError, match="task axis"):
        ConvexHull.from_task_vectors({"a": np.ones((2, 3)), "b": np.ones((3, 3))})
    with pytest.raises(TaskVectorError, match="floating"):
        ConvexHull.from_task_vectors(np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match="abstract"):
        geometry.GeneratedSet(np.eye(2))
    with pytest.raises(ValueError, match="unknown set kind"):
        geometry.make_set("ball", np.eye(2))
    with pytest.raises(ValueError, match="semi_axes"):
        Ellipsoid.from_semi_axes(np.array([1.0, -1.0]))


def test_kinds_are_distinct_pytrees_and_pass_through_jit():
    g = np.eye(3)
    built = [geometry.make_set(k, g) for k in geometry.SET_KINDS]
    structures = {jtu.tree_structure(s) for s in built}
    assert len(structures) == len(geometry.SET_KINDS)  # jit caches never confuse two kinds
    for s in built:
        out = jax.jit(lambda x: x)(s)
        assert type(out) is type(s) and out.kind == s.kind
    hull = built[0].as_kind("cone")
    assert isinstance(hull, PolyhedralCone) and hull.gram is built[0].gram
    pre = geometry.make_set("zonotope", np.arange(12.0).reshape(4, 3)).prefix(2)
    assert isinstance(pre, Zonotope) and pre.gram.shape == (2, 2) and pre.points.shape == (2, 3)
    assert geometry.make_set("hull0", built[0]).kind == "hull0"


def test_ellipsoid_from_semi_axes():
    e = Ellipsoid.from_semi_axes(np.array([1.0, 2.0]))
    np.testing.assert_allclose(e.gram, np.diag([1.0, 4.0]), rtol=0)
    q = np.array([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    e2 = Ellipsoid.from_semi_axes(np.array([1.0, 2.0]), q)
    np.testing.assert_allclose(e2.gram, e.gram, atol=1e-12)
    assert e2.dim == 3


# --------------------------------------------------------------------------------------
# the PSD Cholesky factor
# --------------------------------------------------------------------------------------


def test_psd_cholesky_full_rank_and_prefixes(key):
    x = np.random.default_rng(1).standard_normal((6, 9))
    g = x @ x.T
    # the jitted factor the estimators use (its compilations are shared with them)
    lower, piv = jax.jit(linalg.psd_cholesky)(g)
    np.testing.assert_allclose(lower @ lower.T, g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lower, np.linalg.cholesky(g), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(piv, np.diag(lower) ** 2, rtol=1e-9)
    sub, _ = linalg.psd_cholesky(g[:3, :3])  # leading blocks factor leading sub-Grams
    np.testing.assert_allclose(sub, lower[:3, :3], rtol=1e-10, atol=1e-12)


def test_psd_cholesky_rank_deficient(key):
    x = np.random.default_rng(2).standard_normal((4, 5))
    # duplicate, zero vector, a combination, a negative: rank 4 out of 8
    y = np.concatenate(
        [x[:2], x[:1], np.zeros((1, 5)), x[2:3], (0.3 * x[0] - 2 * x[1])[None], x[3:], -x[2:3]]
    )
    g = y @ y.T
    lower, piv = jax.jit(linalg.psd_cholesky)(g)
    assert np.all(np.isfinite(lower))
    np.testing.assert_allclose(lower @ lower.T, g, atol=1e-9)
    mask = linalg.span_pivot_mask(g, piv, linalg.default_rank_rtol(g.dtype))
    np.testing.assert_array_equal(mask, [True, True, False, False, True, False, True, False])
    dependent = np.flatnonzero(~np.asarray(mask))
    np.testing.assert_allclose(lower[:, dependent], 0.0, atol=1e-7)


# --------------------------------------------------------------------------------------
# NNLS in Gram form
# --------------------------------------------------------------------------------------


@jax.jit
def _cone_batch(gram, zs):
    return jax.vmap(lambda z: linalg.cone_projection_sq_norm(gram, z))(zs)


@pytest.mark.parametrize(
    "generators",
    ["random_tall", "random_wide", "plus_minus_pairs"],
)
def test_nnls_matches_scipy(generators):
    rng = np.random.default_rng(7)
    if generators == "random_tall":  # n < D: unique solution
        t = rng.standard_normal((8, 10))
    elif generators == "random_wide":  # n > D: rank-deficient G, cone = R^D or not
        t = rng.standard_normal((8, 5)) + 0.5
        t = np.concatenate([t, np.zeros((8, 5))], axis=1)
    else:  # +-e_1..+-e_3, duplicated e_1, zero: the cone is a 3-dim subspace
        e = np.eye(10)[:3]
        t = np.concatenate([e, -e, e[:1], np.zeros((1, 10))])
    gs = rng.standard_normal((64, 10))
    vals, lams = _cone_batch(t @ t.T, gs @ t.T)
    vals, lams = np.asarray(vals), np.asarray(lams)
    assert np.all(lams >= 0)
    for i in range(len(gs)):
        x, rnorm = scipy.optimize.nnls(t.T, gs[i], maxiter=100 * len(t))
        exact = gs[i] @ gs[i] - rnorm**2
        assert float(vals[i]) == pytest.approx(exact, abs=1e-9)
        proj = t.T @ np.asarray(lams[i])
        np.testing.assert_allclose(proj, t.T @ x, atol=1e-8)  # projection is unique
    if generators == "plus_minus_pairs":
        np.testing.assert_allclose(vals, (gs[:, :3] ** 2).sum(1), rtol=1e-12)
        np.testing.assert_allclose(lams[:, -1], 0.0)  # the zero generator never enters


# --------------------------------------------------------------------------------------
# reference sets
# --------------------------------------------------------------------------------------


def test_reference_supports():
    g = np.array([3.0, -4.0, 1.0])
    assert float(L2Ball(3, 2.0).support(g)) == pytest.approx(2 * math.sqrt(26))
    assert float(L1Ball(3).support(g)) == pytest.approx(4.0)
    assert float(LinfBall(3, 0.5).support(g)) == pytest.approx(4.0)
    assert float(NonnegativeOrthant(3).projection_sq_norm(g)) == pytest.approx(10.0)
    assert NonnegativeOrthant(3).is_cone and not L2Ball(3).is_cone
    with pytest.raises(TypeError, match="not a cone"):
        L2Ball(3).projection_sq_norm(g)
    for bad in (lambda: L2Ball(0), lambda: L1Ball(2, -1.0), lambda: CircularCone(3, 2.0)):
        with pytest.raises(ValueError):
            bad()
    assert hash(CircularCone(4, 0.5)) == hash(CircularCone(4, 0.5))  # static-able


def test_circular_cone_projection_is_a_rotated_orthant(key):
    # Circ_2(pi/4) = {x1 >= |x2|} is R^2_+ rotated by 45 degrees
    g = np.random.default_rng(3).standard_normal((200, 2))
    c = 1 / math.sqrt(2)
    rot = g @ np.array([[c, c], [c, -c]])
    cone = CircularCone(2, math.pi / 4)
    got = jax.jit(jax.vmap(cone.projection_sq_norm))(g)
    want = (np.maximum(rot, 0.0) ** 2).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# operator images
# --------------------------------------------------------------------------------------


def _weighted_sum(task_vectors, key, *, scaling=1.0, weights=None):
    del key
    w = jnp.ones(task_vectors["a"].shape[0]) if weights is None else weights
    return jtu.tree_map(lambda x: scaling * jnp.tensordot(w, x, axes=1), task_vectors)


def _noisy(task_vectors, key, *, scaling=1.0):
    return jtu.tree_map(lambda x: scaling * x.sum(0) + jr.normal(key, x.shape[1:]), task_vectors)


def test_operator_image_plain_function(key):
    tv = _tree(1, num=3)
    flat = np.concatenate([tv["a"], tv["b"]["w"].reshape(3, 4)], axis=1)
    scal = np.array([0.5, 1.0, 2.0])
    weights = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    img = geometry.operator_image(
        _weighted_sum, tv, key, grid={"scaling": scal, "weights": weights}, chunk_size=2
    )
    assert isinstance(img, PointSet) and img.points.shape == (6, 7)
    want = np.stack([s * (w @ flat) for s in scal for w in weights])
    np.testing.assert_allclose(img.points, want, rtol=1e-12)
    np.testing.assert_allclose(img.gram, want @ want.T, rtol=1e-10)
    # keys: P = 2 grid points x 3 keys, key minor; a fixed hyperparameter overrides
    img2 = geometry.operator_image(
        _noisy, tv, key, grid={"scaling": scal[:2]}, num_keys=3, keep_points=False
    )
    assert img2.points is None and img2.gram.shape == (6, 6)
    # same key for both grid points: the noise cancels in their difference
    d = img2.gram[0, 0] - 2 * img2.gram[0, 3] + img2.gram[3, 3]
    np.testing.assert_allclose(d, 0.5**2 * float(np.sum(flat.sum(0) ** 2)), rtol=1e-9)
    with pytest.raises(ValueError, match="leading grid axis"):
        geometry.operator_image(_weighted_sum, tv, key, grid={"scaling": 1.0})
    with pytest.raises(ValueError, match="num_keys"):
        geometry.operator_image(_weighted_sum, tv, key, num_keys=0)


def test_operator_image_from_registry(key):
    from mergetheory.merge import MERGE_OPERATORS as registry

    name = "task_arithmetic"  # a missing operator fails here (KeyError), it is not skipped
    tv = _tree(2, num=3)
    img = geometry.operator_image(name, tv, key)
    op = registry[name]
    ref = op.fn(tv, key, **dict(op.default_hparams))
    flat_ref = np.concatenate([np.ravel(x) for x in jtu.tree_leaves(ref)])
    np.testing.assert_allclose(img.points[0], flat_ref, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown merge operator"):
        geometry.operator_image("no_such_operator", tv, key)


def test_hull_kinds_constructed_directly():
    for cls in (ConvexHull, ConvexHullWithOrigin, Zonotope, Span, PolyhedralCone, PointSet):
        s = cls(np.eye(2))
        assert s.kind in geometry.SET_KINDS and geometry.SET_KINDS[s.kind] is cls


# --------------------------------------------------------------------------------------
# LoRA factors and half precision as generators
# --------------------------------------------------------------------------------------


def _factors(seed, num=3, per_expert_scaling=True):
    from mergetheory.lora import LoraFactors

    rng = np.random.default_rng(seed)
    scaling = jnp.asarray(rng.uniform(0.5, 2.0, num)) if per_expert_scaling else 2.0
    return LoraFactors(
        jnp.asarray(rng.standard_normal((num, 4, 2))),
        jnp.asarray(rng.standard_normal((num, 2, 5))),
        scaling,
    )


@pytest.mark.parametrize("per_expert_scaling", [True, False])
def test_lora_factors_as_generators_use_the_factored_gram(per_expert_scaling):
    from mergetheory.lora import densify

    tv = {"q": _factors(0, per_expert_scaling=per_expert_scaling), "v": _factors(1)}
    dense = densify(tv)
    hull = ConvexHull.from_task_vectors(tv)
    np.testing.assert_allclose(hull.gram, geometry.make_set("hull", dense).gram, rtol=1e-12)
    assert hull.points is None  # factors are not densified unless asked
    kept = geometry.make_set("cone", tv, keep_points=True)
    flat = np.concatenate([np.asarray(dense[k]).reshape(3, -1) for k in ("q", "v")], axis=1)
    np.testing.assert_allclose(kept.points, flat, rtol=1e-12)


def test_mixed_dense_and_lora_generators_add_their_grams():
    from mergetheory.lora import densify

    rng = np.random.default_rng(2)
    tv = {"q": _factors(3), "w": jnp.asarray(rng.standard_normal((3, 7)))}
    dense = {"q": densify({"q": tv["q"]})["q"], "w": tv["w"]}
    np.testing.assert_allclose(
        Zonotope.from_task_vectors(tv).gram, Zonotope.from_task_vectors(dense).gram, rtol=1e-12
    )
    bad = {"q": tv["q"], "w": jnp.asarray(rng.standard_normal((4, 7)))}
    with pytest.raises(TaskVectorError, match="T = 4 tasks but the LoRA factors have T = 3"):
        ConvexHull.from_task_vectors(bad)


def test_dense_only_functions_reject_lora_factors():
    from mergetheory.tree import gram_matrix
    from mergetheory.width.sharding import sharded_gram_matrix

    tv = {"layer": {"q": _factors(4)}}
    with pytest.raises(TaskVectorError, match=r"\['layer'\]\['q'\] is LoraFactors"):
        gram_matrix(tv)
    with pytest.raises(TaskVectorError, match="is LoraFactors"):
        sharded_gram_matrix(tv)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_generators_are_widened(dtype, key):
    from mergetheory.geometry import closed_forms

    # a 6-dimensional span: float16's default rank tolerance would reject every pivot
    span = geometry.make_set("span", jnp.eye(6, dtype=dtype))
    assert span.gram.dtype == jnp.float32
    est = width.gaussian_width(key, span, num_samples=4000)
    assert abs(float(est.mean) - closed_forms.subspace_width(6)) < 5 * float(est.stderr)
    # entries of 300 over 5000 coordinates: squared norms far beyond float16's 65504
    x = (300 * np.random.default_rng(5).standard_normal((3, 5000))).astype(np.float32)
    half = jnp.asarray(x, dtype=dtype)
    gram = geometry.make_set("cone", half).gram
    exact = np.asarray(half, dtype=np.float64) @ np.asarray(half, dtype=np.float64).T
    assert gram.dtype == jnp.float32
    np.testing.assert_allclose(gram, exact, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_lora_factors_accumulate_in_float32(dtype):
    from mergetheory.lora import LoraFactors

    rng = np.random.default_rng(6)
    b = jnp.asarray(30 * rng.standard_normal((3, 64, 4)), dtype)
    a = jnp.asarray(30 * rng.standard_normal((3, 4, 64)), dtype)
    gram = geometry.make_set("hull", {"m": LoraFactors(b, a)}).gram
    w = np.einsum("tdr,trk->tdk", np.asarray(b, np.float64), np.asarray(a, np.float64))
    exact = w.reshape(3, -1) @ w.reshape(3, -1).T
    assert gram.dtype == jnp.float32 and np.isfinite(np.asarray(gram)).all()
    np.testing.assert_allclose(gram, exact, rtol=1e-5)


def test_mixed_precision_dense_leaves_keep_points():
    rng = np.random.default_rng(7)
    tv = {
        "a": jnp.asarray(rng.standard_normal((3, 5)), jnp.bfloat16),
        "b": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
    }
    hull = geometry.make_set("hull", tv)
    assert hull.points.dtype == jnp.float32 and hull.points.shape == (3, 9)
    np.testing.assert_allclose(hull.points @ hull.points.T, hull.gram, rtol=1e-5)


def test_lora_factors_are_rejected_by_dense_only_functions():
    from mergetheory import diagnostics, merge
    from mergetheory.tree import ravel_tasks, validate_task_vectors

    tv = {"m": _factors(8)}
    for fn in (
        validate_task_vectors,
        ravel_tasks,
        diagnostics.sign_conflict,
        diagnostics.singular_interference,
        lambda t: merge.task_arithmetic(t, None),
        lambda t: merge.model_stock(t, None),
        lambda t: geometry.operator_image("task_arithmetic", t, jr.key(0), grid={"scale": [1.0]}),
    ):
        with pytest.raises(TaskVectorError, match=r"\['m'\] is LoraFactors"):
            fn(tv)
