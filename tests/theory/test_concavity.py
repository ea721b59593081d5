"""Tests for mergetheory.theory.concavity: submodularity per path, counterexamples, verdicts."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.geometry import ConvexHull, PointSet
from mergetheory.geometry.closed_forms import expected_max_normal_with_zero
from mergetheory.tasks import GaussianSpec, sample_task_vectors
from mergetheory.theory import concavity as cc
from mergetheory.width import NestedWidthEstimate, width_sampler

N = 6  # one number of experts and one Monte Carlo size: the compiled kernels are shared
M = 4000


def _gaussian(key, n, d):
    return sample_task_vectors(key, GaussianSpec(n), {"w": (d,)}, jnp.float64)["w"]


@pytest.mark.parametrize("kind", ["hull", "hull0", "zonotope"])
def test_submodularity_holds_on_every_path(key, kind):
    """(z_t - M_A)_+ >= (z_t - M_B)_+ on every path: zero violating paths, for random sets."""
    k_tv, k_sets, k_mc = jr.split(key, 3)
    tv = _gaussian(k_tv, N, 12)
    rng = np.random.default_rng(int(jr.randint(k_sets, (), 0, 2**30)))
    for trial in range(3):
        perm = rng.permutation(N)
        size_b = int(rng.integers(2, N - 1))
        b = perm[:size_b]
        a = b[: int(rng.integers(1, size_b + 1))]
        t = int(perm[size_b])
        ev = cc.check_submodularity(jr.fold_in(k_mc, trial), tv, a, b, t, kind=kind, num_samples=M)
        assert ev.verdict == "holds", ev.verdict
        assert ev.frac_paths_violating == 0.0
        assert ev.min_path_slack >= -1e-12
        assert ev.slack >= -1e-12  # zonotope: modular, slack 0 up to round-off


def test_submodularity_per_path_with_the_engine(key):
    """Same check through the engine's naive estimator: one key -> the same g for all sets.

    The four sets A, A+t, B, B+t are padded to 4 points by repeating a point (a hull is
    unchanged by duplicates), so one compiled program evaluates them all.
    """
    k_tv, k_g = jr.split(key)
    tv = _gaussian(k_tv, N, 10)
    index = jnp.asarray([[0, 0, 0, 0], [0, 4, 4, 4], [0, 1, 2, 2], [0, 1, 2, 4]])

    @jax.jit
    def paths(k):
        def one(ix):
            pts = tv[ix]
            hull = ConvexHull(gram=pts @ pts.T, points=pts)
            return width_sampler(hull, chunk_size=M, method="naive")(k)

        return jax.vmap(one)(index)

    vals = paths(k_g)
    slack = (vals[1] - vals[0]) - (vals[3] - vals[2])
    assert float(jnp.min(slack)) >= -1e-12
    assert float(jnp.mean(slack)) > 0.0


def test_span_support_is_not_submodular_per_path(key):
    """Two nearly parallel generators: the span is submodular in expectation only."""
    eps = 0.2
    gen = jnp.asarray([[1.0, eps], [1.0, -eps]])
    ev = cc.check_submodularity(key, gen, [], [0], 1, kind="span", num_samples=M)
    assert ev.frac_paths_violating > 0.01
    assert ev.verdict.startswith("holds under stated assumptions")
    # E chi_1 - (E chi_2 - E chi_1) in expectation
    exact = 2 * math.sqrt(2 / math.pi) - math.sqrt(math.pi / 2)
    assert abs(ev.slack - exact) < 5 * ev.slack_stderr


def test_hull_needs_nonempty_a():
    with pytest.raises(ValueError, match="non-empty"):
        cc.check_submodularity(jr.key(0), jnp.eye(3), [], [0], 1, kind="hull", num_samples=10)
    with pytest.raises(ValueError, match="contained"):
        cc.check_submodularity(jr.key(0), jnp.eye(3), [2], [0], 1, num_samples=10)


def test_adversarial_ordering_is_detected(key):
    """Tiny experts first: convex step at n = 2 (fixed order); random subsets stay concave."""
    gen = cc.tiny_first_generators(N, tiny=0.01, num_tiny=2)
    fixed = cc.check_concavity(key, gen, kind="hull", num_samples=M)
    assert fixed.verdict.startswith("fails: convex step at n=2"), fixed.verdict
    # w_1 = 0, w_2 = eps / sqrt(pi), w_3 = E max(eps Z_1, eps Z_2, Z_3) ~ 1/sqrt(2 pi)
    assert fixed.curve.diff2[0] > 0.35
    assert fixed.details.max_diff2_z > 20
    assert fixed.details.convex_n == 2  # the convex step as data, not parsed from the reason
    subsets = cc.check_concavity(key, gen, kind="hull", ordering="random_subsets", num_samples=M)
    assert not subsets.verdict.startswith("fails"), subsets.verdict
    # every path of the exact subset mean is concave, hence so is the mean
    assert np.max(subsets.curve.diff2) <= 1e-12


def test_span_is_scale_free_under_the_adversarial_ordering(key):
    gen = cc.tiny_first_generators(N)
    ev = cc.check_concavity(key, gen, kind="span", num_samples=M)
    assert not ev.verdict.startswith("fails"), ev.verdict
    chi = np.sqrt(2) * np.exp(
        [math.lgamma((k + 1) / 2) - math.lgamma(k / 2) for k in range(1, N + 1)]
    )
    assert np.all(np.abs(ev.curve.mean - chi) < 5 * ev.curve.stderr + 1e-12)


def test_zonotope_is_linear_for_orthogonal_equal_norms(key):
    rho = 2.5
    gen = rho * jnp.eye(N)
    exact = np.arange(1, N + 1) * rho / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(cc.zonotope_width_closed_form(gen), exact, rtol=1e-12)
    ev = cc.check_concavity(key, gen, kind="zonotope", num_samples=M)
    assert np.all(np.abs(ev.curve.mean - exact) < 5 * ev.curve.stderr)
    assert ev.verdict.startswith("fails: not strictly concave"), ev.verdict
    sub = cc.check_concavity(key, gen, kind="zonotope", ordering="random_subsets", num_samples=M)
    np.testing.assert_allclose(sub.curve.diff2, 0.0, atol=1e-12)
    assert sub.verdict.startswith("fails: not strictly concave")


def test_subset_mean_matches_golden_table(key):
    """Orthonormal experts: every n-subset alike, so the subset mean is E max(0, Z_1..Z_n)."""
    est = cc.subset_mean_width(key, jnp.eye(N), kind="hull0", num_samples=M)
    golden = np.array([expected_max_normal_with_zero(n) for n in range(1, N + 1)])
    assert np.all(np.abs(np.asarray(est.mean) - golden) < 5 * np.asarray(est.stderr))


def test_subset_mean_traces_once(key, assert_traced_once):
    gen = jnp.eye(N)
    key2, gen2 = jr.fold_in(key, 1), 2.0 * gen  # eager ops outside the probed calls
    calls = iter(
        [
            lambda: cc.subset_mean_width(key, gen, kind="hull", num_samples=M),
            lambda: cc.subset_mean_width(key2, gen2, kind="hull0", num_samples=M),
        ]
    )
    assert_traced_once(lambda: next(calls)())


def _curve(mean, d2_se=0.01, n_samples=1000):
    mean = np.asarray(mean, float)
    d1 = np.diff(mean)
    d2 = np.diff(d1)
    return NestedWidthEstimate(
        mean,
        np.full_like(mean, 0.01),
        d1,
        np.full_like(d1, 0.01),
        d2,
        np.full_like(d2, d2_se),
        n_samples,
    )


def test_concavity_verdict_classes():
    ns = np.arange(1, 9)
    verdict, det = cc.concavity_verdict(_curve(np.log1p(ns) * 3.0, d2_se=0.001))
    assert verdict == "holds"
    assert 0 < det["elasticity"] < 1
    assert cc.concavity_verdict(_curve(0.4 * ns))[0].startswith("fails: not strictly concave")
    convex = np.log1p(ns)
    convex[3:] += 0.5
    v, det = cc.concavity_verdict(_curve(convex))
    assert v.startswith("fails: convex step at n=3"), v
    assert det["worst_n"] == 3
    assert "convex_n" not in det  # the report form holds numbers only
    assert cc.classify_concavity(_curve(convex))[1].convex_n == 3
    assert cc.classify_concavity(_curve(0.4 * ns))[1].convex_n is None  # linear, not convex
    flat_tail = np.concatenate([np.log1p(ns[:4]) * 3, np.log1p(4) * 3 + 0.05 * np.arange(1, 5)])
    assert cc.concavity_verdict(_curve(flat_tail))[0].startswith("holds under stated")


def test_generator_gram_accepts_sets_and_arrays(key):
    tv = _gaussian(key, N, 9)
    g = tv @ tv.T
    np.testing.assert_allclose(cc.generator_gram(tv), g, rtol=1e-12)
    np.testing.assert_allclose(cc.generator_gram(PointSet.from_task_vectors(tv)), g, rtol=1e-12)
    np.testing.assert_allclose(cc.generator_gram({"a": tv[:, :4], "b": tv[:, 4:]}), g, rtol=1e-12)


def test_submodularity_traces_once(key, assert_traced_once):
    tv = _gaussian(key, N, 12)
    key2, tv2 = jr.fold_in(key, 1), 2 * tv  # eager ops outside the probed calls
    calls = iter(
        [
            lambda: cc.check_submodularity(key, tv, [0], [0, 1], 3, kind="hull", num_samples=M),
            lambda: cc.check_submodularity(
                key2, tv2, [1], [1, 2, 4], 0, kind="hull", num_samples=M
            ),
        ]
    )
    assert_traced_once(lambda: next(calls)())
