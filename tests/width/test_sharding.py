"""Tests for mergetheory.width.sharding on the 8 forced host devices of tests/conftest.py."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mergetheory import width
from mergetheory.geometry import ConvexHull, ConvexHullWithOrigin
from mergetheory.tree import TaskVectorError, gram_matrix
from mergetheory.width import sharding as sh

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


def _normal(seed, shape):
    # NumPy data: jax.random would add a slow XLA:CPU compilation per shape to every test
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _task_vectors(num=5):
    # every leaf size is coprime to 8: each needs padding on the 8-device mesh
    return {"w": _normal(0, (num, 13, 7)), "b": _normal(1, (num, 3)), "v": _normal(2, (num, 1001))}


def test_sharded_gram_equals_unsharded_pytree():
    tv = _task_vectors()
    g = sh.sharded_gram_matrix(tv)  # default mesh: all 8 devices, D not divisible by 8
    np.testing.assert_allclose(g, gram_matrix(tv), rtol=1e-12, atol=1e-12)
    assert g.shape == (5, 5) and g.dtype == jnp.float64
    np.testing.assert_array_equal(g, g.T)


def test_sharded_gram_flat_array_other_meshes():
    x = _normal(3, (4, 1001))
    ref = x @ x.T
    # wide enough for the column-blocked CPU kernel on every device (tree.gram_2d)
    wide = _normal(7, (3, 8 * 65536 + 5))
    np.testing.assert_allclose(
        sh.sharded_gram_matrix(wide), np.asarray(wide) @ np.asarray(wide).T, rtol=1e-12
    )
    np.testing.assert_allclose(sh.sharded_gram_matrix(x, sh.make_mesh(3)), ref, rtol=1e-12)
    mesh2d = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    g2 = sh.sharded_gram_matrix(x, mesh2d, axis_name=("data", "model"))
    np.testing.assert_allclose(g2, ref, rtol=1e-12)


def test_shard_task_vectors_pads_and_places():
    tv = _task_vectors()
    mesh = sh.make_mesh(8)
    placed = sh.shard_task_vectors(tv, mesh)
    assert [p.shape for p in placed] == [(5, 8), (5, 1008), (5, 96)]  # leaves: b, v, w
    spec = NamedSharding(mesh, P(None, sh.DEFAULT_AXIS))
    assert all(p.sharding.is_equivalent_to(spec, 2) for p in placed)
    np.testing.assert_allclose(
        sh.sharded_gram_matrix(placed, mesh), gram_matrix(tv), rtol=1e-12, atol=1e-12
    )


def test_sharded_gram_traced_once(assert_traced_once):
    x = _normal(4, (3, 40))
    inputs = iter([x, x + 1.0])  # new values, same shapes: no retrace
    assert_traced_once(lambda: sh.sharded_gram_matrix(next(inputs)))


def test_sharded_gram_validates():
    with pytest.raises(TaskVectorError, match="NaN"):
        sh.sharded_gram_matrix(jnp.full((2, 9), jnp.nan))
    with pytest.raises(ValueError, match="not an axis"):
        sh.sharded_gram_matrix(jnp.ones((2, 9)), sh.make_mesh(2), axis_name="nope")


def _pair(k):
    g = jr.normal(k, (3,), jnp.float64)
    return {"sq": g * g, "max": jnp.max(g)}


def test_sharded_monte_carlo_is_mesh_independent(key):
    num = 13  # not a multiple of 8: the last device holds masked padding samples
    one = sh.sharded_monte_carlo(key, _pair, num, sh.make_mesh(1))
    eight = sh.sharded_monte_carlo(key, _pair, num, sh.make_mesh(8), chunk_size=2)
    # reference from the explicit per-sample values, sample i <- fold_in(key, i)
    vals = jax.vmap(lambda i: _pair(jr.fold_in(key, i)))(jnp.arange(num, dtype=jnp.uint32))
    for est in (one, eight):
        assert est.num_samples == num
        for name in ("sq", "max"):
            v = np.asarray(vals[name])
            np.testing.assert_allclose(est.mean[name], v.mean(0), rtol=1e-13)
            np.testing.assert_allclose(
                est.stderr[name], v.std(0, ddof=1) / np.sqrt(num), rtol=1e-12
            )


def test_sharded_width_equals_single_device_estimate(key):
    x = _normal(5, (6, 50))
    hull = ConvexHull.from_gram(gram_matrix(x))
    # 16 chunks of 64 on 8 devices; the last chunk is partly beyond M (masked)
    ref = width.gaussian_width(key, hull, num_samples=1001, chunk_size=64)
    est = sh.sharded_gaussian_width(key, hull, num_samples=1001, chunk_size=64)
    # 3 devices: 16 chunks padded to 18 with dummy chunks
    est3 = sh.sharded_gaussian_width(
        key, hull, num_samples=1001, chunk_size=64, mesh=sh.make_mesh(3)
    )
    assert isinstance(est, width.WidthEstimate) and est.num_samples == 1001
    for e in (est, est3):
        np.testing.assert_allclose(e.mean, ref.mean, rtol=1e-12)
        np.testing.assert_allclose(e.stderr, ref.stderr, rtol=1e-10)


def test_sharded_nested_width_equals_single_device_estimate(key):
    x = _normal(6, (4, 30))
    ref = width.nested_width(key, x, kind="hull0", num_samples=203, chunk_size=32)
    hull0 = ConvexHullWithOrigin.from_task_vectors(x)
    est = sh.sharded_gaussian_width(key, hull0, nested=True, num_samples=203, chunk_size=32)
    assert isinstance(est, width.NestedWidthEstimate)
    for field in ("mean", "stderr", "diff1", "diff1_stderr", "diff2", "diff2_stderr"):
        np.testing.assert_allclose(getattr(est, field), getattr(ref, field), rtol=1e-10)


def test_sharded_width_rejects_bad_input(key):
    hull = ConvexHull.from_gram(jnp.eye(3, dtype=jnp.float64))
    with pytest.raises(ValueError, match="num_samples"):
        sh.sharded_gaussian_width(key, hull, num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        sh.sharded_monte_carlo(key, _pair, 1)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_sharded_monte_carlo_of_integer_samples(key, dtype):
    """Indicator samples: moments in floating point, equal to NumPy on the same draws."""

    def hit(k):
        return (jr.uniform(k) < 0.3).astype(dtype)

    num = 1000
    est = sh.sharded_monte_carlo(key, hit, num, sh.make_mesh(4), chunk_size=50)
    draws = np.array([float(hit(jr.fold_in(key, i))) for i in range(num)])
    np.testing.assert_allclose(est.mean, draws.mean(), rtol=1e-12)
    np.testing.assert_allclose(est.stderr, draws.std(ddof=1) / np.sqrt(num), rtol=1e-10)
    assert jnp.issubdtype(est.mean.dtype, jnp.floating)
