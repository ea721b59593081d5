"""Tests for mergetheory.width: both estimators against closed forms, properties, nesting.

Statistical tests use fixed keys and |estimate - exact| < 5 stderr (the estimator's own).
Compilation dominates the cost of this file, so the tests share a few shapes
(``[6, 6]`` generators, ``M = 4000`` samples) to reuse compiled programs, and build their
inputs and inspect outputs with NumPy (every eager ``jnp`` op on a new shape compiles).
"""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

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
    PolyhedralCone,
    Span,
    Zonotope,
)
from mergetheory.geometry import closed_forms as cf
from mergetheory.width import gaussian_width, nested_width, statistical_dimension

M = 4000  # samples for the statistical tests
N = 6  # generators (and ambient dimension) of the shared test sets
METHODS = ["fast", "naive"]


def _close(est, exact, k=5.0):
    """|mean - exact| < k stderr (and the stderr is positive and finite)."""
    se = float(est.stderr)
    assert np.isfinite(se) and se > 0
    assert abs(float(est.mean) - exact) < k * se, (float(est.mean), exact, se)


def _random_vectors(seed, rank=N):
    """``[N, N]`` correlated generators of the given rank (NumPy)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, rank))
    b = rng.standard_normal((rank, N))
    return a @ b + (0.5 if rank == N else 0.0)


def _np(x):
    return np.asarray(x)


# --------------------------------------------------------------------------------------
# closed forms, fast and naive
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_golden_table_hulls(key, method):
    # Sources S2: w(conv{rho e_i}) = rho E_n, w(conv{0, rho e_i}) = rho E0_n
    rho = 2.5
    pts = rho * np.eye(N)
    est = gaussian_width(key, ConvexHull.from_task_vectors(pts), num_samples=M, method=method)
    _close(est, rho * cf.expected_max_normal(N))
    if method == "fast":  # a finite point set (e.g. an operator image) has its hull's width
        pset = gaussian_width(key, geometry.PointSet.from_task_vectors(pts), num_samples=M)
        np.testing.assert_allclose(pset.mean, est.mean, rtol=1e-12)
    est0 = gaussian_width(
        key, ConvexHullWithOrigin.from_task_vectors(pts), num_samples=M, method=method
    )
    _close(est0, rho * cf.expected_max_normal_with_zero(N))


def test_golden_table_nested(key):
    # the whole table at once, with paired differences: n = 1..12
    est = nested_width(key, np.eye(12), kind="hull0", num_samples=M)
    e0 = np.array([cf.expected_max_normal_with_zero(n) for n in range(1, 13)])
    mean, se = _np(est.mean), _np(est.stderr)
    assert np.all(np.abs(mean - e0) < 5 * se)
    d1, d1_se = _np(est.diff1), _np(est.diff1_stderr)
    d2, d2_se = _np(est.diff2), _np(est.diff2_stderr)
    assert np.all(np.abs(d1 - np.diff(e0)) < 5 * d1_se)
    assert np.all(np.abs(d2 - np.diff(e0, 2)) < 5 * d2_se)
    # paired differences are far more precise than unpaired ones
    unpaired = np.sqrt(se[1:] ** 2 + se[:-1] ** 2)
    assert np.all(d1_se[3:] < 0.6 * unpaired[3:])
    # and the concavity the theory predicts is resolved: diff2 < 0 significantly
    assert np.all(d2[:2] + 3 * d2_se[:2] < 0)


@pytest.mark.parametrize("method", METHODS)
def test_zonotope_exact(key, method):
    x = _random_vectors(1)
    zono = Zonotope.from_task_vectors(x)
    _close(gaussian_width(key, zono, num_samples=M, method=method), cf.zonotope_width(zono.gram))


@pytest.mark.parametrize("method", METHODS)
def test_span_rank_deficient(key, method):
    # 6 generators of rank 4: w(span cap B) = E chi_4, delta(span) = 4
    span = Span.from_task_vectors(_random_vectors(2, rank=4))
    _close(gaussian_width(key, span, num_samples=M, method=method), cf.subspace_width(4))
    _close(statistical_dimension(key, span, num_samples=M, method=method), 4.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cone", ["orthant", "subspace"])
def test_polyhedral_cone_exact(key, method, cone):
    if cone == "orthant":  # cone{e_1..e_6} = R^6_+
        gens, width_exact, statdim_exact = np.eye(N), cf.orthant_width(N), cf.orthant_statdim(N)
    else:  # cone{+-e_1, +-e_2, +-e_3} = a 3-dim subspace (rank-deficient Gram)
        e = np.eye(N)[:3]
        gens, width_exact, statdim_exact = np.concatenate([e, -e]), cf.subspace_width(3), 3.0
    c = PolyhedralCone.from_task_vectors(gens)
    _close(gaussian_width(key, c, num_samples=M, method=method), width_exact)
    _close(statistical_dimension(key, c, num_samples=M, method=method), statdim_exact)


@pytest.mark.parametrize("method", METHODS)
def test_ellipsoid_ball(key, method):
    # equal semi-axes a: the ball a B_2^6
    e = Ellipsoid.from_semi_axes(np.full((N,), 0.7))
    _close(gaussian_width(key, e, num_samples=M, method=method), 0.7 * cf.l2_ball_width(N))


@pytest.mark.parametrize(
    "ref, exact",
    [
        (L2Ball(N, 2.0), 2.0 * cf.l2_ball_width(N)),
        (L1Ball(N), cf.l1_ball_width(N)),
        (LinfBall(N), cf.linf_ball_width(N)),
        (NonnegativeOrthant(N), cf.orthant_width(N)),
        (CircularCone(N, 0.6), cf.circular_cone_width(N, 0.6)),
    ],
    ids=["l2", "l1", "linf", "orthant", "circular"],
)
def test_reference_sets_width(key, ref, exact):
    _close(gaussian_width(key, ref, num_samples=M), exact)


@pytest.mark.parametrize(
    "ref, exact",
    [
        (NonnegativeOrthant(N), cf.orthant_statdim(N)),
        (CircularCone(N, 0.6), cf.circular_cone_statdim(N, 0.6)),
    ],
    ids=["orthant", "circular"],
)
def test_reference_sets_statdim(key, ref, exact):
    _close(statistical_dimension(key, ref, num_samples=M, method="naive"), exact)


def test_symmetric_convention(key):
    # sup_{t in conv{e_i}} |<g, t>| = max_i |g_i|: the l1-ball width
    hull = ConvexHull.from_task_vectors(np.eye(N))
    est = gaussian_width(key, hull, num_samples=M, convention="symmetric")
    _close(est, cf.l1_ball_width(N))


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hull", "hull0", "cone"])
def test_fast_equals_naive_in_expectation(key, kind):
    s = geometry.make_set(kind, _random_vectors(3))
    fast = gaussian_width(jr.key(4), s, num_samples=M)
    naive = gaussian_width(jr.key(5), s, num_samples=M, method="naive")
    combined = math.hypot(float(fast.stderr), float(naive.stderr))
    assert abs(float(fast.mean) - float(naive.mean)) < 5 * combined


def test_homogeneity_and_translation(key):
    x = _random_vectors(6)
    hull = ConvexHull.from_task_vectors(x)
    base = gaussian_width(key, hull, num_samples=M)
    scaled = gaussian_width(key, ConvexHull.from_task_vectors(3.0 * x), num_samples=M)
    np.testing.assert_allclose(scaled.mean, 3.0 * base.mean, rtol=1e-9)  # same draws
    np.testing.assert_allclose(scaled.stderr, 3.0 * base.stderr, rtol=1e-9)
    # translation (naive path, common g): the estimates differ by mean_m <g_m, x0>,
    # whose standard error is ||x0|| / sqrt(M)
    x0 = np.linspace(-1.0, 2.0, N)
    naive = gaussian_width(key, hull, num_samples=M, method="naive")
    moved = gaussian_width(key, ConvexHull.from_task_vectors(x + x0), num_samples=M, method="naive")
    se = float(np.linalg.norm(x0)) / math.sqrt(M)
    assert abs(float(moved.mean) - float(naive.mean)) < 5 * se
    # ... and on the fast path (different draws): within the combined stderr
    moved_fast = gaussian_width(key, ConvexHull.from_task_vectors(x + x0), num_samples=M)
    assert abs(float(moved_fast.mean) - float(base.mean)) < 5 * math.hypot(
        float(base.stderr), float(moved_fast.stderr)
    )


@pytest.mark.parametrize("method", METHODS)
def test_hull_invariance_and_monotonicity_with_common_draws(key, method):
    # appending convex combinations of earlier points leaves every sample path unchanged
    x = _random_vectors(7)
    w = np.random.default_rng(8).dirichlet(np.ones(N), 2)
    y = np.concatenate([x, w @ x])  # [8, 6]
    est = nested_width(key, y, kind="hull", num_samples=M, method=method)
    mean, d1 = _np(est.mean), _np(est.diff1)
    np.testing.assert_allclose(mean[N - 1 :], mean[N - 1], rtol=1e-10)
    np.testing.assert_allclose(d1[N - 1 :], 0.0, atol=1e-10)
    assert np.all(d1 >= -1e-12)  # monotone in the number of points
    # the nested entry for the first N points is the plain estimate with the same key
    # (the naive path draws the same g; the fast path uses prefix-consistent draws)
    plain = gaussian_width(key, ConvexHull.from_task_vectors(x), num_samples=M, method=method)
    np.testing.assert_allclose(mean[N - 1], plain.mean, rtol=1e-10)
    np.testing.assert_allclose(_np(est.stderr)[N - 1], plain.stderr, rtol=1e-8)


def test_nested_paths_and_differences(key):
    x = _random_vectors(9)
    est = nested_width(key, x, kind="hull", num_samples=M)
    # differences and their paired stderrs are those of the per-sample paths
    np.testing.assert_allclose(est.diff1, np.diff(_np(est.mean)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.diff2, np.diff(_np(est.mean), 2), rtol=1e-8, atol=1e-12)
    assert est.mean.shape == (N,) and est.diff1.shape == (N - 1,) and est.diff2.shape == (N - 2,)
    assert est.num_samples == M
    host = est.to_numpy()  # float64 host copy, same numbers
    for field, value in zip(est._fields[:-1], host[:-1], strict=True):
        assert isinstance(value, np.ndarray) and value.dtype == np.float64, field
        np.testing.assert_array_equal(value, np.asarray(getattr(est, field)))
    assert type(host.num_samples) is int and host.num_samples == M


def test_nested_cone_statdim_and_monotone_paths(key):
    # through the one-chunk sampler (the sharding / CLI building block, and what
    # nested_width maps over chunk keys): cone{e_1..e_m} = R^m_+, so delta = m / 2 for
    # every prefix, and every sample path m -> |Pi_{C_m} g|^2 is monotone (exact NNLS)
    cone = PolyhedralCone.from_task_vectors(np.eye(N))
    sampler = functools.partial(width.width_sampler, chunk_size=M, nested=True, quantity="statdim")
    paths = jax.jit(lambda c, k: sampler(c)(k))(cone, jr.split(key, 1)[0])
    assert paths.shape == (M, N)
    assert np.all(np.diff(_np(paths), axis=1) >= -1e-12)
    est = width.summarize_samples(paths)
    assert isinstance(est, width.NestedWidthEstimate) and est.num_samples == M
    assert np.all(np.abs(_np(est.mean) - np.arange(1, N + 1) / 2) < 5 * _np(est.stderr))
    assert np.all(np.abs(_np(est.diff1) - 0.5) < 5 * _np(est.diff1_stderr))


def test_nested_span_rank_deficient(key):
    # generators t1, t2, t1 + t2, t3, 2 t3, t4: the prefix spans have ranks 1 2 2 3 3 4
    rng = np.random.default_rng(12)
    t = rng.standard_normal((4, N))
    gens = np.stack([t[0], t[1], t[0] + t[1], t[2], 2 * t[2], t[3]])
    est = nested_width(key, gens, kind="span", quantity="statdim", num_samples=M)
    ranks = np.array([1, 2, 2, 3, 3, 4])
    assert np.all(np.abs(_np(est.mean) - ranks) < 5 * _np(est.stderr))
    # a dependent generator adds exactly nothing on every sample path
    np.testing.assert_allclose(_np(est.diff1)[[1, 3]], 0.0, atol=1e-12)
    np.testing.assert_allclose(_np(est.diff1_stderr)[[1, 3]], 0.0, atol=1e-12)


def test_chunking_and_float32(key):
    # num_samples not a multiple of chunk_size; float32 generators under strict promotion
    hull = ConvexHullWithOrigin.from_task_vectors(np.eye(N, dtype=np.float32))
    est = gaussian_width(key, hull, num_samples=1500, chunk_size=400)
    assert est.mean.dtype == jnp.float32 and est.num_samples == 1500
    _close(est, cf.expected_max_normal_with_zero(N))


def test_from_gram_matches_from_vectors(key):
    x = _random_vectors(3)
    a = gaussian_width(key, geometry.make_set("hull", x), num_samples=M)
    b = gaussian_width(key, ConvexHull.from_gram(x @ x.T), num_samples=M)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9)


# --------------------------------------------------------------------------------------
# compilation and errors
# --------------------------------------------------------------------------------------


def test_public_entries_trace_once(key, assert_traced_once):
    x = np.random.default_rng(11).standard_normal((5, 7))
    calls = [
        lambda k, s: gaussian_width(k, s, num_samples=64),
        lambda k, s: nested_width(k, s, kind="hull0", num_samples=64),
    ]
    for call in calls:
        # a new key and a new set of the same family and size: no retrace
        args = iter([(jr.key(1), x), (jr.key(2), 2.0 * x)])

        def run(call=call, args=args):
            k, v = next(args)
            return call(k, ConvexHull.from_task_vectors(v))

        assert_traced_once(run, expect_first_trace=True)
    # a cone's width and statistical dimension share one compiled program
    span = Span.from_task_vectors(x)
    estimators = iter([gaussian_width, statistical_dimension])
    assert_traced_once(lambda: next(estimators)(key, span, num_samples=64))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda k, s: gaussian_width(k, s, num_samples=1), ValueError, "num_samples"),
        (lambda k, s: gaussian_width(k, s, num_samples=2.5), ValueError, "num_samples"),
        (lambda k, s: gaussian_width(k, s, num_samples=8, method="exact"), ValueError, "method"),
        (lambda k, s: gaussian_width(k, s, num_samples=8, convention="abs"), ValueError, "conv"),
        (lambda k, s: gaussian_width(k, s, num_samples=8, chunk_size=0), ValueError, "chunk"),
        (lambda k, s: gaussian_width(0, s, num_samples=8), TypeError, "PRNG key"),
        (lambda k, s: gaussian_width(k, "hull", num_samples=8), TypeError, "set_"),
        (
            lambda k, s: gaussian_width(
                k, ConvexHull.from_gram(np.eye(2)), num_samples=8, method="naive"
            ),
            ValueError,
            "needs the generators",
        ),
        (
            lambda k, s: gaussian_width(k, ConvexHull(np.full((2, 2), np.nan)), num_samples=8),
            ValueError,
            "non-finite",
        ),
        (lambda k, s: statistical_dimension(k, s, num_samples=8), ValueError, "cones"),
        (lambda k, s: statistical_dimension(k, L2Ball(3), num_samples=8), ValueError, "cone"),
        (lambda k, s: nested_width(k, s, kind="ball", num_samples=8), ValueError, "kind"),
        (lambda k, s: nested_width(k, L2Ball(3), num_samples=8), TypeError, "generators"),
        (
            lambda k, s: nested_width(k, s, kind="hull", quantity="statdim", num_samples=8),
            ValueError,
            "cones",
        ),
        (
            lambda k, s: nested_width(k, np.array([[1.0, np.nan]]), num_samples=8),
            ValueError,
            "NaN",
        ),
    ],
)
def test_bad_inputs(key, call, exc, match):
    hull = ConvexHull.from_task_vectors(np.eye(2))
    with pytest.raises(exc, match=match):
        call(key, hull)


# --------------------------------------------------------------------------------------
# slow: larger samples, tighter checks (pytest -m slow)
# --------------------------------------------------------------------------------------


def test_golden_table_tight(key):
    est = nested_width(key, np.eye(12), kind="hull", num_samples=200_000)
    e = np.array([cf.expected_max_normal(n) for n in range(1, 13)])
    assert np.all(np.abs(_np(est.mean) - e) < 5 * _np(est.stderr))
    assert np.all(np.abs(_np(est.diff2) - np.diff(e, 2)) < 5 * _np(est.diff2_stderr))
    assert np.all(_np(est.diff2) < 0)  # strict concavity, resolved at every n


@pytest.mark.parametrize("kind", ["hull0", "zonotope", "ellipsoid", "span", "cone"])
def test_fast_equals_naive_random_sets(key, kind):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((10, 30)) @ np.diag(np.linspace(0.2, 2.0, 30)) + 0.3
    s = geometry.make_set(kind, x)
    # the tolerance is 5 combined stderrs at any M; the cone's NNLS per sample is what costs
    num = 10_000 if kind == "cone" else 40_000
    fast = gaussian_width(jr.key(1), s, num_samples=num)
    naive = gaussian_width(jr.key(2), s, num_samples=num, method="naive")
    assert abs(float(fast.mean) - float(naive.mean)) < 5 * math.hypot(
        float(fast.stderr), float(naive.stderr)
    )
    if s.is_cone:
        fast = statistical_dimension(jr.key(1), s, num_samples=num)
        naive = statistical_dimension(jr.key(2), s, num_samples=num, method="naive")
        assert abs(float(fast.mean) - float(naive.mean)) < 5 * math.hypot(
            float(fast.stderr), float(naive.stderr)
        )


@pytest.mark.slow
def test_slow_circular_cone_and_float32_cone(key):
    _close(
        statistical_dimension(key, CircularCone(20, 1.0), num_samples=100_000),
        cf.circular_cone_statdim(20, 1.0),
    )
    orthant = PolyhedralCone.from_task_vectors(np.eye(8, dtype=np.float32))
    est = statistical_dimension(key, orthant, num_samples=50_000)
    assert est.mean.dtype == jnp.float32
    _close(est, 4.0)


# --------------------------------------------------------------------------------------
# streamed moments: memory set by the chunk size
# --------------------------------------------------------------------------------------


def test_sample_moments_merge_equals_two_pass_statistics():
    v = np.random.default_rng(0).standard_normal((1000, 3)) * [1.0, 10.0, 1e-3] + 5.0
    parts = [v[:1], v[1:400], v[400:999], v[999:]]  # uneven splits, single samples too
    acc = width.SampleMoments.from_samples(jnp.asarray(parts[0]))
    for p in parts[1:]:
        acc = acc.merge(width.SampleMoments.from_samples(jnp.asarray(p)))
    assert float(acc.count) == 1000
    np.testing.assert_allclose(acc.mean, v.mean(0), rtol=1e-13)
    np.testing.assert_allclose(acc.stderr(), v.std(0, ddof=1) / np.sqrt(1000), rtol=1e-12)


def test_stream_moments_masks_the_padding_of_the_last_chunk():
    chunk, num_chunks, num = 7, 5, 31  # 35 samples drawn, the last 4 do not count

    def sample_chunk(k):
        return jr.normal(k, (chunk, 2)) + jnp.arange(2.0)[None, :]

    keys = jr.split(jr.key(3), num_chunks)
    m = width.stream_moments(sample_chunk, keys, num_samples=num, statistics=lambda v: {"v": v})
    vals = np.concatenate([np.asarray(sample_chunk(k)) for k in keys])[:num]
    assert float(m.count) == num
    np.testing.assert_allclose(m.mean["v"], vals.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.stderr()["v"], vals.std(0, ddof=1) / np.sqrt(num), rtol=1e-12)


def test_monte_carlo_memory_does_not_grow_with_num_samples():
    """The compiled estimator's scratch memory is set by the chunk, not by M."""
    hull = geometry.make_set("hull", jnp.asarray(np.eye(8, 20)))
    temps = []
    for num in (2**14, 2**20):
        set_, factor, config = width.prepare_width(
            jr.key(0), hull, num_samples=num, chunk_size=1024, method="fast",
            quantity="width", convention="sup", nested=True, rank_rtol=None, max_iter=None,
        )  # fmt: skip
        run = jax.jit(lambda k, s, f, config=config: width.run_width(k, s, f, config).mean)
        compiled = run.lower(jr.key(0), set_, factor).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
    # [M, N] float64 per-sample values at M = 2**20, N = 8 would be 64 MiB
    assert temps[1] < 1.5 * temps[0] and temps[1] < 8 * 1024 * 8 * 8, temps


def test_nested_cone_width_and_statdim_match_orthants(key):
    """cone{e_1..e_n} in R^8 is an n-dimensional orthant: w = E||g_+||, delta = n / 2."""
    gens = np.eye(5, 8)
    for quantity, exact in (("width", cf.orthant_width), ("statdim", cf.orthant_statdim)):
        est = nested_width(key, gens, kind="cone", quantity=quantity, num_samples=4000)
        for n in range(5):
            mean, se = float(est.mean[n]), float(est.stderr[n])
            assert se > 0 and abs(mean - exact(n + 1)) < 5 * se, (quantity, n, mean, se)


def test_nnls_non_convergence_raises_instead_of_a_low_estimate(key):
    gens = np.random.default_rng(0).standard_normal((12, 12))
    cone = geometry.make_set("cone", gens)
    ok = statistical_dimension(key, cone, num_samples=500)
    assert np.isfinite(float(ok.mean))
    with pytest.raises(FloatingPointError, match="did not converge within max_iter=1"):
        statistical_dimension(key, cone, num_samples=500, max_iter=1)
    # jitted: one compile instead of op-by-op dispatch of the code around the loop
    project = jax.jit(linalg.cone_projection_sq_norm, static_argnames=("max_iter",))
    value, _ = project(cone.gram, jnp.ones(12), max_iter=1)
    assert np.isnan(float(value))


def test_naive_cone_non_convergence_raises(key):
    gens = np.random.default_rng(0).standard_normal((12, 12))
    cone = geometry.make_set("cone", gens, keep_points=True)
    with pytest.raises(FloatingPointError, match="did not converge"):
        statistical_dimension(key, cone, num_samples=64, method="naive", max_iter=1)


def test_stream_moments_far_from_index_zero():
    """Masking is relative to first_sample, so huge global indices do not wrap."""
    first = 2**40  # the tests run with x64 (int64 indices)
    keys = jr.split(jr.key(0), 3)
    m = width.stream_moments(
        lambda k: jnp.ones(4) + jr.normal(k, (4,)),
        keys,
        num_samples=first + 6,
        first_sample=first,
        statistics=lambda v: v,
    )
    assert float(m.count) == 6  # 12 drawn, the last 6 past num_samples
