"""Tests for the per-leaf tree path (mergetheory.merge.leafwise): same values, fewer compiles."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.merge import (
    average,
    dare_linear,
    dare_linear_array,
    dare_ties,
    dare_ties_array,
    magnitude_prune,
    magnitude_prune_array,
    rht,
    rht_array,
    task_arithmetic,
    ties,
    ties_array,
)
from mergetheory.merge.leafwise import map_leaves
from mergetheory.testing import count_compiles, count_traces

NUM = 3


def _gpt2_like(d: int, layers: int, num: int = NUM, seed: int = 0) -> dict:
    """GPT-2's leaf layout at width ``d``: 2 + 12 * layers + 2 leaves, 9 distinct shapes."""
    shapes = {"wte": (4 * d + 20, d), "wpe": (16, d)}
    for i in range(layers):
        shapes.update(
            {
                f"h{i}.ln_1.g": (d,),
                f"h{i}.ln_1.b": (d,),
                f"h{i}.attn.w": (d, 3 * d),
                f"h{i}.attn.b": (3 * d,),
                f"h{i}.proj.w": (d, d),
                f"h{i}.proj.b": (d,),
                f"h{i}.ln_2.g": (d,),
                f"h{i}.ln_2.b": (d,),
                f"h{i}.fc.w": (d, 4 * d),
                f"h{i}.fc.b": (4 * d,),
                f"h{i}.fc_proj.w": (4 * d, d),
                f"h{i}.fc_proj.b": (d,),
            }
        )
    shapes.update({"ln_f.g": (d,), "ln_f.b": (d,)})
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal((num, *s))) for k, s in shapes.items()}


WEIGHTS = jnp.asarray([0.5, 1.0, 2.0])
COUNT_MAX = {"election": "count", "zero_sign": "majority", "aggregate": "max"}

# operator, per-leaf reference fn(leaf, leaf key, **hp), traced hyperparameters, static ones
CASES = {
    "ties": (ties, lambda x, k, **h: ties_array(x, **h), {"density": 0.3, "weights": WEIGHTS}, {}),
    "ties_count_majority_max": (
        ties,
        lambda x, k, **h: ties_array(x, **h, **COUNT_MAX),
        {"density": 0.4},
        COUNT_MAX,
    ),
    "magnitude_prune": (
        magnitude_prune,
        lambda x, k, **h: magnitude_prune_array(x, **h),
        {"density": 0.3, "scale": 0.7},
        {},
    ),
    "rht": (rht, lambda x, k, **h: rht_array(x, **h), {"density": 0.6}, {}),
    "dare_linear": (dare_linear, dare_linear_array, {"density": 0.4, "weights": WEIGHTS}, {}),
    "dare_ties": (dare_ties, dare_ties_array, {"density": 0.4, "scale": 0.5}, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tree_path_equals_per_leaf_reference(name, key):
    # leaves above 2**15 entries take the threshold search, smaller ones the sort;
    # the reference is the operator's one-array form, jitted with the same traced values
    tv = _gpt2_like(d=100, layers=0)
    fn, ref, traced, static = CASES[name]
    out = fn(tv, key, **traced, **static)
    ref_jit = jax.jit(ref)
    for i, path in enumerate(sorted(tv)):  # flatten order: leaf i has key fold_in(key, i)
        want = ref_jit(tv[path], jr.fold_in(key, i), **jax.tree.map(jnp.asarray, traced))
        np.testing.assert_array_equal(np.asarray(out[path]), np.asarray(want), path)


def test_linear_tree_path_closed_form(key):
    tv = _gpt2_like(d=10, layers=1)
    w = np.asarray(WEIGHTS)
    out = task_arithmetic(tv, key, weights=WEIGHTS, scale=0.3)
    mean = average(tv, key, weights=WEIGHTS)
    for path, x in tv.items():
        xs = np.asarray(x)
        want = np.tensordot(w, xs, axes=1)
        np.testing.assert_allclose(out[path], 0.3 * want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(mean[path], want / w.sum(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", [ties, magnitude_prune])
def test_one_leaf_global_trim_equals_per_leaf_path(fn, key):
    # trim="global" still runs one jit over the whole tree; on a one-leaf tree it is the
    # same maths as the per-leaf kernel
    tv = {"w": _gpt2_like(d=100, layers=0)["wte"]}
    a = fn(tv, key, density=0.25, trim="global")["w"]
    b = fn(tv, key, density=0.25, trim="tensor")["w"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fn", [ties, dare_ties, task_arithmetic, rht])
def test_outer_jit_and_vmap_match_eager(fn, key):
    tv = _gpt2_like(d=10, layers=1)
    hp = {} if fn is task_arithmetic else {"density": 0.5}
    eager = fn(tv, key, **hp)
    jitted = jax.jit(lambda t: fn(t, key, **hp))(tv)
    for path in tv:
        np.testing.assert_array_equal(np.asarray(jitted[path]), np.asarray(eager[path]), path)
    if fn is task_arithmetic:
        return
    dens = jnp.asarray([0.3, 0.5])
    swept = jax.vmap(lambda d: fn(tv, key, density=d))(dens)
    for path in tv:
        np.testing.assert_allclose(swept[path][1], eager[path], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", [ties, dare_ties, task_arithmetic])
def test_148_leaf_tree_compiles_once_per_distinct_shape(fn, key):
    # a width no other test uses, so no kernel is cached yet: 148 leaves, 9 shapes
    d = 7 + {ties: 0, dare_ties: 1, task_arithmetic: 2}[fn]
    tv = _gpt2_like(d=d, layers=12)
    assert len(tv) == 148
    num_shapes = len({x.shape for x in tv.values()})
    assert num_shapes == 9
    hp = {} if fn is task_arithmetic else {"density": 0.5}
    _, first = count_compiles(fn, tv, key, **hp)
    assert 1 <= first <= num_shapes
    # new hyperparameter values, or another tree of the same shapes (other structure and
    # number of leaves): nothing traced, nothing compiled
    hp2 = {"scale": 0.5} if fn is task_arithmetic else {"density": 0.25}
    _, traces = count_traces(fn, tv, key, **hp2)
    assert traces == 0
    other = _gpt2_like(d=d, layers=3, seed=1)
    _, compiles = count_compiles(fn, other, key, **hp)
    _, traces = count_traces(fn, other, key, **hp2)
    assert compiles == 0 and traces == 0


def test_map_leaves_rejects_wrong_per_leaf_length():
    tv = {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 4))}
    with pytest.raises(ValueError, match="2 leaves"):
        map_leaves(jax.jit(lambda x, k: x.sum(0) * k), tv, [1.0])


def test_propagate_nonfinite_keeps_bits_and_marks_bad_entries():
    from mergetheory.merge.leafwise import propagate_nonfinite

    out = jnp.asarray([0.0, -0.0, -1.5, 2.0, 3.0], jnp.float32)
    x = jnp.asarray([[1.0, -2.0, 0.0, -0.0, 5.0], [-3.0, 0.0, 1e30, 7.0, 1.0]], jnp.float32)
    got = np.asarray(jax.jit(propagate_nonfinite)(out, x))
    np.testing.assert_array_equal(got.view(np.uint32), np.asarray(out).view(np.uint32))
    for bad in [np.nan, np.inf, -np.inf]:
        y = x.at[1, 2].set(bad)
        got = np.asarray(propagate_nonfinite(out, y))
        assert np.isnan(got[2]) and np.isfinite(np.delete(got, 2)).all()


@pytest.mark.parametrize("op", [task_arithmetic, average, dare_linear, dare_ties])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_raises_after_the_fused_screen(op, bad):
    """The NaN / Inf check runs on the output; a bad entry that DARE drops still raises."""
    x = np.ones((3, 2000), np.float32)
    x[2, 1234] = bad
    tv = {"a": jnp.ones((3, 5)), "b": jnp.asarray(x)}
    kwargs = {"weights": jnp.asarray([1.0, 1.0, 0.0])} if op is task_arithmetic else {}
    if op in (dare_linear, dare_ties):
        kwargs["density"] = 1e-3  # entry 1234 of task 2 is almost surely dropped
    nan, inf = (1, 0) if np.isnan(bad) else (0, 1)
    with pytest.raises(ValueError, match=rf"task_vectors\['b'\]: {nan} NaN and {inf} Inf"):
        op(tv, jr.key(0), **kwargs)
