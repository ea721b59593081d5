"""The conformance suite can fail: a deliberately broken operator for each property.

A small correct operator (weighted mean times ``scale``, validated eagerly, jitted core)
passes every check; each variant below breaks exactly one claim and the matching check
must raise an AssertionError naming that check.
"""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest

from mergetheory.merge import MergeOperator
from mergetheory.testing import CHECKS, check_operator, run_check
from mergetheory.tree import validate_task_vectors


@jax.jit
def _mean_core(tv, weights, scale):
    w = weights / jnp.sum(weights)
    return jtu.tree_map(lambda x: scale * jnp.tensordot(w.astype(x.dtype), x, axes=1), tv)


def _validate(tv, weights):
    num = validate_task_vectors(tv)
    if weights is not None and jnp.shape(weights) != (num,):
        raise ValueError(f"weights has shape {jnp.shape(weights)}, expected ({num},)")
    return jnp.ones(num) if weights is None else jnp.asarray(weights)


def good_mean(tv, key, *, weights=None, scale=1.0):
    return _mean_core(tv, _validate(tv, weights), scale)


GOOD = MergeOperator(
    fn=good_mean,
    linear=True,
    default_hparams={"scale": 1.0},
    identity_hparams={"scale": 1.0},
    continuous_hparams=("scale",),
    per_tensor={},
    description="weighted mean times scale",
)


def _post(fn):
    """A variant of ``good_mean`` whose output leaves go through ``fn(leaf, tv, key)``."""

    def op(tv, key, *, weights=None, scale=1.0):
        out = good_mean(tv, key, weights=weights, scale=scale)
        return jtu.tree_map(lambda y: fn(y, tv, key, scale), out)

    return op


def _traced(x):
    return isinstance(x, jax.core.Tracer)


def _retracing(tv, key, *, weights=None, scale=1.0):
    w = _validate(tv, weights)
    return jax.jit(lambda t, w: _mean_core(t, w, scale))(tv, w)  # a new jit every call


def _unchecked(tv, key, *, weights=None, scale=1.0):
    num = jtu.tree_leaves(tv)[0].shape[0]
    w = jnp.ones(num) if weights is None else jnp.asarray(weights)[:num]
    return jtu.tree_map(lambda x: scale * jnp.tensordot(w / w.sum(), x[:num], axes=1), tv)


def _needs_base(tv, key, *, weights=None, scale=1.0, base=None):
    return good_mean(tv, key, weights=weights, scale=scale)


def _first_task_heavier(tv, key, *, weights=None, scale=1.0):
    w = _validate(tv, weights)
    return _mean_core(tv, w.at[0].multiply(2.0), scale)


BROKEN = {
    "structure_shape_dtype": GOOD._replace(fn=_post(lambda y, tv, k, s: y.astype(jnp.float64))),
    "eager_equals_jit": GOOD._replace(fn=_post(lambda y, tv, k, s: y + 1e-3 * _traced(k))),
    "vmap_over_keys": GOOD._replace(
        fn=_post(lambda y, tv, k, s: y + 1e-3 * _traced(k) * jnp.ones_like(y))
    ),
    "vmap_over_continuous_hparams": GOOD._replace(
        fn=_post(lambda y, tv, k, s: y + 1e-3 * _traced(s))
    ),
    "permutation_invariance": GOOD._replace(fn=_first_task_heavier),
    "identity_at_one_task": GOOD._replace(fn=_post(lambda y, tv, k, s: 0.5 * y)),
    "linearity": GOOD._replace(fn=_post(lambda y, tv, k, s: y + 0.1 * jnp.abs(y))),
    "scale_equivariance": GOOD._replace(fn=_post(lambda y, tv, k, s: y + 1e-3)),
    "stochasticity": GOOD._replace(stochastic=True),
    "needs_required": GOOD._replace(fn=_needs_base, needs=("base",)),
    "traced_once": GOOD._replace(fn=_retracing),
    "bad_input_rejected": GOOD._replace(fn=_unchecked),
    "per_tensor": GOOD._replace(  # each leaf shifted by the tree's number of leaves
        fn=_post(lambda y, tv, k, s: y + 1e-3 * len(jtu.tree_leaves(tv)))
    ),
    "record_consistent": GOOD._replace(description=""),
    "float32_x64_off": GOOD._replace(
        fn=_post(  # bfloat16 rounding on the float32 path only
            lambda y, tv, k, s: (
                y.astype(jnp.bfloat16).astype(y.dtype) if y.dtype == jnp.float32 else y
            )
        ),
        identity_at_one=False,
        linear=False,
        scale_equivariant=False,
    ),
}


def test_every_check_has_a_broken_operator():
    assert set(BROKEN) == set(CHECKS)


def test_the_correct_operator_passes_everything():
    ran = check_operator(GOOD)
    assert set(ran) == set(CHECKS) - {"needs_required"}  # it needs nothing


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_the_suite_catches_a_broken_operator(check, key):
    with pytest.raises(AssertionError, match=f"^operator \\w+: {check} failed: "):
        run_check(BROKEN[check], check, key=key)


def test_check_operator_lists_every_failed_property(key):
    twice = GOOD._replace(fn=_post(lambda y, tv, k, s: 0.5 * y + 1e-3), description="")
    with pytest.raises(AssertionError) as info:
        check_operator(twice, key=key)
    text = str(info.value)
    for check in ("identity_at_one_task", "scale_equivariance", "record_consistent"):
        assert f"{check} failed" in text
    assert "structure_shape_dtype failed" not in text


def test_stochastic_claim_without_randomness_is_named(key):
    with pytest.raises(AssertionError, match="same output but stochastic=True"):
        run_check(BROKEN["stochasticity"], "stochasticity", key=key)


def test_unknown_need_fails_with_a_hint(key):
    op = GOOD._replace(fn=functools.partial(_needs_base), needs=("teacher_logits",))
    with pytest.raises(AssertionError, match="needs=\\{'teacher_logits'"):
        run_check(op, "structure_shape_dtype", key=key)


def test_unknown_check_is_an_error():
    with pytest.raises(ValueError, match="unknown check 'linear'"):
        run_check(GOOD, "linear")


def test_key_is_used(key):
    # a stochastic operator that really draws from the key passes the stochasticity check
    def noisy(tv, key, *, weights=None, scale=1.0):
        out = good_mean(tv, key, weights=weights, scale=scale)
        return jtu.tree_map(lambda y: y + 1e-3 * jr.normal(key, y.shape, y.dtype), out)

    op = GOOD._replace(fn=noisy, stochastic=True, linear=False, identity_at_one=False)
    assert run_check(op, "stochasticity", key=key) is True


def test_conformance_cases_cover_every_check_of_every_name():
    from mergetheory.testing import operator_conformance_cases

    cases = operator_conformance_cases(["a", "b"])
    assert len(cases) == 2 * len(CHECKS) == len(set(cases))
    assert {c for n, c in cases if n == "b"} == set(CHECKS)
