"""float32 runs (x64 off) of the core estimators against the x64 run on the same data.

The suite runs with x64 on (conftest); here each estimator is also run under
``jax.enable_x64(False)`` on float32 inputs with the same key, as a float32-only user would.
Monte Carlo quantities must agree with the float64 run within 5 combined standard errors
(the two runs may draw different Gaussians: the draws depend on the dtype); the Gram
matrices are deterministic and must agree to float32 rounding (``1e-5`` relative, the
tolerance of the operators' ``float32_x64_off`` check in :mod:`mergetheory.testing`).
"""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

from mergetheory import lora
from mergetheory.geometry import ConvexHullWithOrigin, PolyhedralCone, Span
from mergetheory.tree import gram_matrix
from mergetheory.width import gaussian_width, nested_width, statistical_dimension

M = 4000
N = 6


def _generators():
    """``[N, N]`` correlated float32 generators of rank ``N - 2`` plus an offset (NumPy)."""
    rng = np.random.default_rng(32)
    a = rng.standard_normal((N, N - 2)) @ rng.standard_normal((N - 2, N))
    return (a + 0.5).astype(np.float32)


def _both(fn, data32):
    """``fn`` on float64 (x64 on) and on float32 (x64 off) copies of the same NumPy data."""
    to64 = lambda x: jnp.asarray(np.asarray(x, np.float64))  # noqa: E731
    want = fn(jtu.tree_map(to64, data32))
    with jax.enable_x64(False):
        to32 = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
        got = jtu.tree_map(np.asarray, fn(jtu.tree_map(to32, data32)))
    return got, jtu.tree_map(np.asarray, want)


def _agree(got, want):
    """float32 estimate, finite, within 5 combined standard errors of the float64 one."""
    for field in ("mean", "stderr"):
        g = np.asarray(getattr(got, field))
        assert g.dtype == np.float32, f"{field}: float32 input with x64 off gave {g.dtype}"
        assert np.all(np.isfinite(g)), f"{field}: not finite: {g}"
    se = np.sqrt(np.asarray(got.stderr, np.float64) ** 2 + np.asarray(want.stderr) ** 2)
    assert np.all(se > 0)
    diff = np.abs(np.asarray(got.mean, np.float64) - np.asarray(want.mean))
    assert np.all(diff < 5 * se), (got.mean, want.mean, se)


def test_gaussian_width_float32(key):
    est = lambda g: gaussian_width(  # noqa: E731
        key, ConvexHullWithOrigin.from_task_vectors(g), num_samples=M
    )
    _agree(*_both(est, _generators()))


def test_statistical_dimension_float32(key):
    est = lambda g: statistical_dimension(  # noqa: E731
        key, PolyhedralCone.from_task_vectors(g), num_samples=M
    )
    _agree(*_both(est, _generators()))
    span = lambda g: statistical_dimension(key, Span.from_task_vectors(g), num_samples=M)  # noqa: E731
    _agree(*_both(span, _generators()))


@pytest.mark.parametrize(
    "kind, quantity", [("hull0", "width"), ("span", "width"), ("cone", "statdim")]
)
def test_nested_width_float32(key, kind, quantity):
    est = lambda g: nested_width(  # noqa: E731
        key, g, kind=kind, quantity=quantity, num_samples=M
    )
    got, want = _both(est, _generators())
    assert np.asarray(got.mean).shape == (N,)
    _agree(got, want)


def _close_gram(got, want):
    assert got.dtype == np.float32, f"float32 input with x64 off gave {got.dtype}"
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))))


def test_gram_matrix_float32():
    rng = np.random.default_rng(33)
    tv = {
        "w": rng.standard_normal((5, 7, 9)).astype(np.float32),
        "b": rng.standard_normal((5, 11)).astype(np.float32),
    }
    _close_gram(*_both(gram_matrix, tv))


def test_lora_gram_matrix_float32(key):
    shapes = {"q": lora.LoraShape(12, 10, 3), "v": lora.LoraShape(8, 10, 2, num_layers=2)}
    f = lora.sample_lora_factors(key, shapes, 4, scaling=0.5, dtype=jnp.float32)
    f = jtu.tree_map(np.asarray, f)
    f["q"] = f["q"]._replace(scaling=np.asarray([0.5, 1.0, 2.0, 0.25], np.float32))
    _close_gram(*_both(lora.lora_gram_matrix, f))
