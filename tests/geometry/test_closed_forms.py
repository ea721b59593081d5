"""Tests for mergetheory.geometry.closed_forms: the oracles themselves, against independent sources.

The golden E max table is typed in from Sources S2 (an independent source);
other values are checked against exact special cases or a large NumPy Monte Carlo.
"""

import math

import numpy as np
import pytest

from mergetheory.geometry import closed_forms as cf

# Sources S2: n, E_n, E0_n (4 decimals)
GOLDEN = [
    (1, 0.0000, 0.3989),
    (2, 0.5642, 0.6810),
    (3, 0.8463, 0.8881),
    (4, 1.0294, 1.0458),
    (5, 1.1630, 1.1697),
    (6, 1.2672, 1.2701),
    (7, 1.3522, 1.3534),
    (8, 1.4236, 1.4242),
    (9, 1.4850, 1.4853),
    (10, 1.5388, 1.5389),
    (11, 1.5864, 1.5865),
    (12, 1.6292, 1.6293),
]


@pytest.mark.parametrize("n, e_n, e0_n", GOLDEN)
def test_golden_table(n, e_n, e0_n):
    assert round(cf.expected_max_normal(n), 4) == pytest.approx(e_n, abs=1e-12)
    assert round(cf.expected_max_normal_with_zero(n), 4) == pytest.approx(e0_n, abs=1e-12)


def test_golden_table_exact_values_and_concavity():
    assert cf.expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-12)
    assert cf.expected_max_normal_with_zero(1) == pytest.approx(
        1 / math.sqrt(2 * math.pi), abs=1e-12
    )
    # E max(Z1, Z2, Z3) = 3 / (2 sqrt(pi))
    assert cf.expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-12)
    e = np.array([cf.expected_max_normal(n) for n in range(1, 13)])
    e0 = np.array([cf.expected_max_normal_with_zero(n) for n in range(1, 13)])
    for seq in (e, e0):
        assert np.all(np.diff(seq) > 0) and np.all(np.diff(seq, 2) < 0)
    assert np.all(e0 >= e) and cf.expected_max_normal_with_zero(0) == 0.0
    # the finite-set bound sqrt(2 log n) dominates
    assert np.all(e <= [cf.finite_set_width_bound(1.0, n) + 1e-12 for n in range(1, 13)])


def test_ball_widths_exact_cases():
    assert cf.l2_ball_width(1) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-12)
    assert cf.l2_ball_width(2) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-12)
    assert cf.l2_ball_width(3, radius=2.0) == pytest.approx(2 * 2 * math.sqrt(2 / math.pi))
    # large D: E chi_D = sqrt(D - 1/2) + O(D^-3/2), and gammaln keeps it finite
    assert cf.l2_ball_width(10**6) == pytest.approx(math.sqrt(10**6 - 0.5), rel=1e-8)
    assert cf.linf_ball_width(7, radius=0.5) == pytest.approx(0.5 * 7 * math.sqrt(2 / math.pi))
    assert cf.l1_ball_width(1) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-10)
    assert cf.subspace_width(4) == cf.l2_ball_width(4) and cf.subspace_width(0) == 0.0
    assert cf.subspace_statdim(3) == 3.0 and cf.orthant_statdim(9) == 4.5


def test_l1_and_orthant_against_numpy_monte_carlo():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((200_000, 6))
    for name, samples, exact in [
        ("l1", np.abs(g).max(1), cf.l1_ball_width(6)),
        ("orthant", np.linalg.norm(np.maximum(g, 0), axis=1), cf.orthant_width(6)),
    ]:
        se = samples.std(ddof=1) / math.sqrt(len(samples))
        assert abs(samples.mean() - exact) < 5 * se, name


def test_circular_cone_exact_cases():
    for a in (0.0, 0.3, math.pi / 4, 1.2, math.pi / 2):
        # planar wedge of opening 2 alpha: delta = 2 alpha / pi + 1/2
        assert cf.circular_cone_statdim(2, a) == pytest.approx(2 * a / math.pi + 0.5, abs=1e-9)
    assert cf.circular_cone_statdim(7, math.pi / 2) == pytest.approx(6.5, abs=1e-9)  # half-space
    assert cf.circular_cone_statdim(7, 0.0) == pytest.approx(0.5, abs=1e-9)  # a ray
    assert cf.circular_cone_statdim(1, 0.7) == 0.5
    # Circ_2(pi/4) is a rotated orthant of R^2
    assert cf.circular_cone_width(2, math.pi / 4) == pytest.approx(cf.orthant_width(2), rel=1e-9)
    # ALMT 2014 approximation D sin^2 a + cos 2a is tight at moderate angles, large D
    for a in (0.3, math.pi / 4, 1.2):
        assert cf.circular_cone_statdim(200, a) == pytest.approx(
            cf.circular_cone_statdim_approx(200, a), abs=1e-3
        )


def test_circular_cone_against_numpy_monte_carlo():
    rng = np.random.default_rng(1)
    d, a = 5, 0.6
    g = rng.standard_normal((200_000, d))
    x1, r = g[:, 0], np.linalg.norm(g[:, 1:], axis=1)
    inside = x1 >= np.linalg.norm(g, axis=1) * math.cos(a)
    proj = np.where(
        inside, np.linalg.norm(g, axis=1), np.maximum(x1 * math.cos(a) + r * math.sin(a), 0)
    )
    for samples, exact in [
        (proj**2, cf.circular_cone_statdim(d, a)),
        (proj, cf.circular_cone_width(d, a)),
    ]:
        se = samples.std(ddof=1) / math.sqrt(len(samples))
        assert abs(samples.mean() - exact) < 5 * se


def test_zonotope_bound_and_kinematic_constants():
    gram = np.array([[4.0, 1.0], [1.0, 9.0]])
    assert cf.zonotope_width(gram) == pytest.approx(5.0 / math.sqrt(2 * math.pi))
    assert cf.finite_set_width_bound(2.0, 1) == 0.0
    assert cf.finite_set_width_bound(2.0, 8) == pytest.approx(2 * math.sqrt(2 * math.log(8)))
    # Sources S4: a_0.05 ~ 5.92, a_0.01 ~ 6.92
    assert cf.kinematic_a_eta(0.05) == pytest.approx(5.92, abs=0.005)
    assert cf.kinematic_a_eta(0.01) == pytest.approx(6.92, abs=0.005)


@pytest.mark.parametrize(
    "fn, args",
    [
        (cf.l2_ball_width, (0,)),
        (cf.l1_ball_width, (2.5,)),
        (cf.expected_max_normal, (0,)),
        (cf.expected_max_normal_with_zero, (-1,)),
        (cf.orthant_width, (True,)),
        (cf.circular_cone_statdim, (3, 2.0)),
        (cf.kinematic_a_eta, (1.5,)),
        (cf.finite_set_width_bound, (1.0, 0)),
        (cf.zonotope_width, (np.ones(3),)),
    ],
)
def test_bad_arguments(fn, args):
    with pytest.raises(ValueError):
        fn(*args)
