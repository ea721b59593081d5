"""Tests for mergetheory.tree: pytree maths and validation."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory import tree


def _tv(key, num=4, dtype=jnp.float64):
    k1, k2, k3 = jr.split(key, 3)
    return {
        "dense": {"w": jr.normal(k1, (num, 5, 3), dtype), "b": jr.normal(k2, (num, 3), dtype)},
        "head": jr.normal(k3, (num, 7), dtype),
    }


def test_stack_unstack_roundtrip(key):
    tv = _tv(key)
    parts = tree.tree_unstack(tv)
    assert len(parts) == 4
    assert parts[0]["dense"]["w"].shape == (5, 3)
    back = tree.tree_stack(parts)
    jax.tree.map(np.testing.assert_array_equal, back, tv)


def test_stack_rejects_mismatched_structure_and_shape(key):
    a = {"w": jnp.ones(3), "b": jnp.ones(2)}
    with pytest.raises(tree.TaskVectorError, match=r"only in tree 1: \['c'\]"):
        tree.tree_stack([a, {"w": jnp.ones(3), "c": jnp.ones(2)}])
    with pytest.raises(tree.TaskVectorError, match=r"leaf \['b'\] has shape \(4,\) in tree 1"):
        tree.tree_stack([a, {"w": jnp.ones(3), "b": jnp.ones(4)}])
    with pytest.raises(tree.TaskVectorError, match="empty"):
        tree.tree_stack([])


def test_vdot_norm_add_scale_match_flat_numpy(key):
    tv = _tv(key)
    a, b = tree.tree_unstack(tv)[:2]
    flat, _ = tree.ravel_tasks(tv)
    fa, fb = np.asarray(flat[0]), np.asarray(flat[1])
    np.testing.assert_allclose(tree.tree_vdot(a, b), fa @ fb, rtol=1e-12)
    np.testing.assert_allclose(tree.tree_norm(a), np.linalg.norm(fa), rtol=1e-12)
    s = tree.tree_add(a, tree.tree_scale(b, 2.5))
    s_flat, _ = tree.ravel_tasks(tree.tree_stack([s]))
    np.testing.assert_allclose(s_flat[0], fa + 2.5 * fb, rtol=1e-12)
    d = tree.tree_sub(s, a)
    d_flat, _ = tree.ravel_tasks(tree.tree_stack([d]))
    np.testing.assert_allclose(d_flat[0], 2.5 * fb, rtol=1e-12)


def test_gram_matrix_matches_flat(key):
    tv = _tv(key, num=5)
    flat, _ = tree.ravel_tasks(tv)
    f = np.asarray(flat)
    np.testing.assert_allclose(tree.gram_matrix(tv), f @ f.T, rtol=1e-12)
    g = np.asarray(tree.gram_matrix(tv))
    np.testing.assert_array_equal(g, g.T)


def test_ravel_unravel_roundtrip_and_dtypes(key):
    tv = {"a": jr.normal(key, (3, 2, 2), jnp.float32), "b": jnp.ones((3, 4), jnp.float32)}
    flat, unravel = tree.ravel_tasks(tv)
    assert flat.shape == (3, 8)
    back = unravel(flat)
    jax.tree.map(np.testing.assert_array_equal, back, tv)
    row = unravel(flat[1])
    assert row["a"].shape == (2, 2) and row["a"].dtype == jnp.float32
    np.testing.assert_array_equal(row["b"], tv["b"][1])


@pytest.mark.parametrize("num", [1, 3, 8, 70])
def test_sum_tasks_unrolled_matches_reference(key, num):
    x = jr.normal(key, (num, 6, 5))
    w = jr.uniform(jr.fold_in(key, 1), (num,))
    np.testing.assert_allclose(tree.sum_tasks(x), np.asarray(x).sum(0), rtol=1e-12)
    np.testing.assert_allclose(
        tree.sum_tasks(x, w), np.tensordot(np.asarray(w), np.asarray(x), 1), rtol=1e-12
    )
    merged = tree.tree_weighted_sum({"x": x}, w)
    np.testing.assert_allclose(merged["x"], np.tensordot(np.asarray(w), np.asarray(x), 1))


def test_validate_returns_num_tasks_and_names_bad_leaf(key):
    tv = _tv(key)
    assert tree.validate_task_vectors(tv) == 4
    bad_axis = {"a": jnp.ones((3, 2)), "b": {"c": jnp.ones((2, 2))}}
    with pytest.raises(tree.TaskVectorError, match=r"\['b'\]\['c'\]: task axis has length 2"):
        tree.validate_task_vectors(bad_axis)
    bad_dtype = {"a": jnp.ones((3, 2)), "i": jnp.ones((3, 2), jnp.int32)}
    with pytest.raises(tree.TaskVectorError, match=r"\['i'\]: dtype int32 is not floating"):
        tree.validate_task_vectors(bad_dtype)
    nan = {"a": jnp.ones((3, 2)), "n": jnp.array([[1.0, jnp.nan]] * 3)}
    with pytest.raises(tree.TaskVectorError, match=r"\['n'\]: 3 NaN and 0 Inf"):
        tree.validate_task_vectors(nan)
    assert tree.validate_task_vectors(nan, finite=False) == 3
    with pytest.raises(tree.TaskVectorError, match="no array leaves"):
        tree.validate_task_vectors({})
    with pytest.raises(tree.TaskVectorError, match="scalar leaf"):
        tree.validate_task_vectors({"s": jnp.float64(1.0)})
    with pytest.raises(tree.TaskVectorError, match="empty"):
        tree.validate_task_vectors({"a": jnp.ones((0, 2))})


def test_check_finite_skips_tracers():
    @jax.jit
    def f(x):
        tree.check_finite({"x": x})
        return x * 2

    out = f(jnp.array([jnp.inf]))
    assert jnp.isinf(out[0])


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
def test_check_finite_counts_on_device_for_sharded_arrays(dtype):
    """An array sharded over devices is counted where it lives, with the host's counts."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py forces 8 host devices)")
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("d",))
    x = np.ones((3, 8))
    x[0, 1] = x[2, 7] = np.nan  # on the first and the last device
    x[1, 4] = -np.inf
    sharded = jax.device_put(jnp.asarray(x, dtype), NamedSharding(mesh, P(None, "d")))
    assert len(sharded.devices()) == 4
    with pytest.raises(tree.TaskVectorError, match=r"\['w'\]: 2 NaN and 1 Inf .* shape \(3, 8\)"):
        tree.validate_task_vectors({"a": jnp.ones((3, 2)), "w": sharded})
    clean = jax.device_put(jnp.ones((3, 8), dtype), NamedSharding(mesh, P(None, "d")))
    assert tree.validate_task_vectors({"w": clean}) == 3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_large_leaves_screened_in_one_pass(dtype, bad):
    # leaves of >= 2**16 entries take the jitted screen; one bad value anywhere is found
    # and counted, a finite leaf passes
    rng = np.random.default_rng(3)
    good = rng.standard_normal((2, 300, 300))
    tree.check_finite({"x": jnp.asarray(good, dtype), "y": np.asarray(good)})
    for pos in [(0, 0, 0), (1, 299, 299), (1, 150, 7)]:
        x = good.copy()
        x[pos] = bad
        nan, inf = (1, 0) if np.isnan(bad) else (0, 1)
        with pytest.raises(tree.TaskVectorError, match=rf"\['x'\]: {nan} NaN and {inf} Inf"):
            tree.check_finite({"x": jnp.asarray(x, dtype), "y": jnp.ones((2, 3))})


def test_check_same_structure_message():
    with pytest.raises(tree.TaskVectorError, match=r"only in a: \['x'\]; only in b: \['y'\]"):
        tree.check_same_structure({"x": 1.0}, {"y": 1.0})
    tree.check_same_structure({"x": jnp.ones(2)}, {"x": jnp.zeros(3)})


@pytest.mark.parametrize("num", [1, 8, 9, 16, 33, 64, 65])
def test_gram_2d_blocked_kernel_matches_numpy(num):
    """Column blocks (with a remainder) and, for 8 < T <= 64, upper-triangular row groups."""
    from mergetheory.tree import gram_2d

    block = (1 << 20) // (num * 8)  # float64 column block of the CPU kernel, at least 1024
    dim = 2 * max(1024, 1 << (block.bit_length() - 1)) + 37  # two blocks and a remainder
    x = np.random.default_rng(num).standard_normal((num, dim))
    g = np.asarray(jax.jit(gram_2d)(jnp.asarray(x)))
    np.testing.assert_allclose(g, x @ x.T, rtol=1e-12, atol=1e-10 * dim)
    assert g.dtype == np.float64


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_validate_rejects_nan_in_half_precision(dtype):
    x = jnp.asarray(np.array([[1.0, np.nan], [np.inf, 2.0]]), dtype)
    with pytest.raises(tree.TaskVectorError, match=r"\['w'\]: 1 NaN and 1 Inf"):
        tree.validate_task_vectors({"w": x})


def test_check_finite_via_screens_the_result_and_names_the_input_leaf():
    tv = {"a": jnp.ones((3, 2)), "n": jnp.array([[1.0, jnp.inf], [2.0, 0.0], [3.0, 0.0]])}
    clean = {"a": jnp.ones(2), "n": jnp.ones(2)}
    tree.check_finite_via(clean, tv, name="tv")  # a finite result: the input is not read
    with pytest.raises(tree.TaskVectorError, match=r"tv\['n'\]: 0 NaN and 1 Inf"):
        tree.check_finite_via({"a": jnp.ones(2), "n": jnp.array([1.0, jnp.nan])}, tv, name="tv")
    # a non-finite result of finite inputs (an overflow) raises nothing
    finite = {"w": jnp.full((2, 3), 3e38, jnp.float32)}
    tree.check_finite_via({"w": finite["w"].sum(0)}, finite)
