"""Tests for mergetheory.theory.kinematic: cone/subspace hits and the ALMT bounds."""

import math

import numpy as np
import pytest

from mergetheory.theory import kinematic as kn


def test_haar_orthogonal_is_orthogonal_deterministic_and_uniform(key):
    q = kn.haar_orthogonal(key, 6, 2000)
    assert q.shape == (2000, 6, 6)
    eye = np.broadcast_to(np.eye(6), q.shape)
    np.testing.assert_allclose(np.einsum("bij,bik->bjk", q, q), eye, atol=1e-12)
    np.testing.assert_array_equal(q[:3], kn.haar_orthogonal(key, 6, 3))  # same key, same Q
    # Haar: every entry has mean 0 and variance 1/D (the sign fix matters for the mean)
    entries = q.reshape(2000, -1)
    se = np.sqrt(1.0 / 6 / 2000)
    assert np.all(np.abs(entries.mean(0)) < 5 * se)
    np.testing.assert_allclose((entries**2).mean(0), 1.0 / 6, atol=0.03)


def _perm(cols, dim):
    return np.eye(dim)[:, cols]


def test_cone_meets_subspace_small_cases():
    e = np.eye(3)
    # L = span(e1, e2) contains the ray e1; L = span(e2, e3) does not
    assert kn.cone_meets_subspace(e[:1], _perm([0, 1, 2], 3), 2)
    assert not kn.cone_meets_subspace(e[:1], _perm([1, 2, 0], 3), 2)
    assert not kn.cone_meets_subspace(e[:1], np.eye(3), 0)
    assert kn.cone_meets_subspace(e[:1], np.eye(3), 3)
    # a cone in the open orthant misses the line through (1, -1, 0)
    q = np.linalg.qr(np.array([[1.0, 1, 0], [-1, 0, 1], [0, 0, 1]]))[0]
    assert not kn.cone_meets_subspace(np.array([[1.0, 0.1, 0], [0.1, 1, 0]]), q, 1)


def test_non_pointed_cone_is_not_fooled_by_zero():
    # cone{e1, -e1, e2} = R x R_+ x {0}: lambda = (1/2, 1/2, 0) gives T lambda = 0, which
    # lies in every subspace; the LP route must not count it as a hit.
    gens = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]])
    assert not kn.cone_meets_subspace(gens, _perm([2, 0, 1], 3), 1)  # L = span(e3)
    assert kn.cone_meets_subspace(gens, _perm([0, 1, 2], 3), 1)  # L = span(e1)
    assert kn.cone_meets_subspace(gens, _perm([1, 2, 0], 3), 1)  # L = span(e2)
    assert kn.critical_subspace_dim(gens, _perm([2, 1, 0], 3)) == 2


def test_orthant_probability_closed_form_edges():
    dim = 9
    p = kn.orthant_intersection_probability(dim, dim, np.arange(dim + 1))
    assert p[0] == 0.0 and p[-1] == 1.0
    assert p[1] == pytest.approx(2.0 / 2**dim)  # a random line meets +-orthant
    assert p[dim - 1] == pytest.approx(1.0 - 2.0 ** (1 - dim))  # a random hyperplane
    # polarity: the orthant is self-dual, so P(m) + P(D - m) = 1
    np.testing.assert_allclose(p + p[::-1], 1.0, atol=1e-12)


@pytest.mark.parametrize("dim,n", [(12, 12), (12, 5), (30, 30)])
def test_empirical_probability_matches_crofton(key, dim, n):
    trials = 300
    est = kn.intersection_probability(key, np.eye(dim)[:n], num_trials=trials)
    exact = kn.orthant_intersection_probability(dim, n, est.ms)
    se = np.sqrt(np.maximum(exact * (1 - exact), 1.0 / trials) / trials)
    assert np.all(np.abs(est.prob - exact) <= 5 * se)
    assert np.all(np.diff(est.prob) >= 0)
    # the transition sits at m = D - delta = D - n/2
    assert (
        abs(np.mean(est.critical_dims) - (dim - n / 2 + 0.5))
        < 5 * np.std(est.critical_dims) / math.sqrt(trials) + 0.5
    )


def test_almt_bounds_respected_where_non_vacuous(key):
    # D = 64, n = 8 orthonormal generators (delta = 4), eta = 0.5: below the window
    # (m <= D - a sqrt(D) - delta ~ 27) the hit probability must be <= eta.
    dim, n = 64, 8
    ev = kn.check_kinematic_formula(
        key, np.eye(dim)[:n], num_trials=100, eta=0.5, delta=n / 2, delta_stderr=0.0
    )
    assert ev.num_bounds_tested > 20
    assert ev.m_lower == math.floor(dim - ev.a_eta * math.sqrt(dim) - n / 2)
    assert ev.max_excess <= 5.0
    assert ev.verdict == "holds"
    assert abs(ev.m_50 - (dim - n / 2)) < ev.a_eta * math.sqrt(dim)


def test_check_reports_vacuous_bounds_at_small_dimension(key):
    ev = kn.check_kinematic_formula(
        key, np.eye(10), num_trials=60, eta=0.05, delta=5.0, delta_stderr=0.0
    )
    assert ev.num_bounds_tested == 0  # a_eta sqrt(D) > D / 2 at D = 10
    assert ev.verdict == "holds under stated assumptions"
    assert abs(ev.offset_sqrt_d) < 1.0


def test_statistical_dimension_nnls_orthant(key):
    est = kn.statistical_dimension_nnls(key, np.eye(8)[:6], num_samples=2000)
    assert abs(est.mean - 3.0) < 5 * est.stderr  # delta(R^6_+) = 3


def test_check_fails_on_a_wrong_delta(key):
    # a ray has delta = 1/2 and meets a random subspace only when m = D; claiming
    # delta = D puts m >= a_eta sqrt(D) in the "P >= 1 - eta" region: a clear violation.
    dim = 64
    ev = kn.check_kinematic_formula(
        key, np.eye(dim)[:1], num_trials=100, eta=0.5, delta=float(dim), delta_stderr=0.0
    )
    assert ev.num_bounds_tested > 0
    assert ev.verdict.startswith("fails") and "above the window" in ev.verdict
