r"""Conformance suite for merge operators: check every property an operator claims.

The same table-driven checks run on the library's own registry (``tests/merge/
test_registry.py``) and on any third-party operator::

    from mergetheory.testing import check_operator
    check_operator("my_median")            # a registered name, or a MergeOperator

Each check runs the operator on a small two-leaf pytree (``{"w": [T, 6, 5], "b": [T, 5]}``,
float64 under ``jax.enable_x64(True)``) and raises an :class:`AssertionError` naming the
operator and the property on failure. The checks (:data:`CHECKS`):

* ``structure_shape_dtype``: float32 in, same pytree without the task axis, float32, finite;
* ``eager_equals_jit``: a ``jax.jit`` of the call, continuous hyperparameters traced;
* ``vmap_over_keys`` / ``vmap_over_continuous_hparams``: ``jax.vmap`` equals the loop;
* ``permutation_invariance`` (claimed, deterministic): permuting tasks (and weights);
* ``identity_at_one_task`` (claimed): ``T = 1`` with ``identity_hparams`` returns the input;
* ``linearity``, ``scale_equivariance`` (claimed): ``f(aX + bY) = a f(X) + b f(Y)``, ``f(aX) =
  a f(X)``, ``a > 0``;
* ``stochasticity``: the same key reproduces; another key changes the output iff claimed;
* ``needs_required``: each claimed need (``"base"``, per-task data) is required;
* ``traced_once``: a second call with other continuous hyperparameter values traces nothing
  (counted with ``jax.monitoring``'s ``/jax/core/compile/jaxpr_trace_duration`` events);
* ``bad_input_rejected``: NaN in a leaf, mismatched task axes and wrong-shaped weights raise
  ``ValueError`` / ``TypeError``;
* ``per_tensor`` (claimed): each leaf merged alone equals its merge in the tree, bit for
  bit, under the claimed hyperparameters (what streaming merges rely on); a stochastic
  operator's leaf ``i`` is given its key in the tree, ``{name: fold_in(key, i)}``;
* ``record_consistent``: the record's claims agree with each other;
* ``float32_x64_off``: with x64 off the float32 result is within float32 rounding of x64.

Tolerances: ``rtol = 1e-9``, ``atol = 1e-12`` in float64 (``rtol = 1e-12`` for eager == jit
and the identity), ``1e-5`` relative for float32 against float64.

For pytest, :func:`operator_conformance_cases` gives one parameter per (operator, check)::

    import pytest
    from mergetheory.testing import operator_conformance_cases, run_check

    @pytest.mark.parametrize("name, check", operator_conformance_cases(["my_median"]))
    def test_conformance(name, check):
        run_check(name, check)     # pytest.skip when the property is not claimed

Reference: docs/extending.md (writing, registering and checking an operator).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .merge import MergeOperator, get_operator

__all__ = [
    "CHECKS",
    "NUM_TASKS",
    "check_operator",
    "count_compiles",
    "count_traces",
    "operator_conformance_cases",
    "run_check",
]

NUM_TASKS = 4
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_trace_count = [0]
_compile_count = [0]


def _on_event(name: str, _duration: float, **_kwargs: Any) -> None:
    if name == _TRACE_EVENT:
        _trace_count[0] += 1
    elif name == _COMPILE_EVENT:
        _compile_count[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def count_traces(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Call ``fn(*args, **kwargs)``; return ``(result, number of jit traces it caused)``."""
    before = _trace_count[0]
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, _trace_count[0] - before


def count_compiles(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Call ``fn(*args, **kwargs)``; return ``(result, number of XLA compiles it caused)``."""
    before = _compile_count[0]
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, _compile_count[0] - before


class NotClaimed(Exception):
    """Raised by a check whose property the operator does not claim (the check is skipped)."""


# --- inputs ------------------------------------------------------------------------------
def _tree(seed: int, num: int = NUM_TASKS, dtype: Any = np.float64) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((num, 6, 5)).astype(dtype)),
        "b": jnp.asarray(rng.standard_normal((num, 5)).astype(dtype)),
    }


def _needs(op: MergeOperator, num: int, extra: Mapping[str, Callable[[int], Any]]) -> dict:
    """Values for the operator's required inputs: ``base``, per-task ``base_accuracy``, extras."""
    rng = np.random.default_rng(100)
    out = {}
    for need in op.needs:
        if need in extra:
            out[need] = extra[need](num)
        elif need == "base_accuracy":
            out[need] = jnp.asarray(rng.uniform(0.1, 0.9, num))
        elif need == "base":
            out[need] = jtu.tree_map(
                lambda x: jnp.asarray(rng.standard_normal(x.shape[1:])), _tree(0)
            )
        else:
            raise AssertionError(
                f"the conformance suite cannot supply the required input {need!r}: pass "
                f"needs={{{need!r}: lambda num_tasks: ...}}"
            )
    return out


def _per_task_needs(needs: Mapping[str, Any], num: int) -> list[str]:
    """Names of needs whose leading axis is the task axis (they are permuted with tasks)."""
    return [k for k, v in needs.items() if hasattr(v, "shape") and v.shape[:1] == (num,)]


def _call(op: MergeOperator, tv: Any, key: Any, needs: Mapping[str, Any], **override: Any):
    hp = {**op.default_hparams, **override}
    return op.fn(tv, key, **hp, **needs)


def _close(a: Any, b: Any, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    jtu.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# --- the checks --------------------------------------------------------------------------
def _structure_shape_dtype(op, key, extra):
    tv = _tree(1, dtype=np.float32)
    out = _call(op, tv, key, _needs(op, NUM_TASKS, extra))
    assert jtu.tree_structure(out) == jtu.tree_structure(tv), "output pytree structure differs"
    for x, y in zip(jtu.tree_leaves(tv), jtu.tree_leaves(out), strict=True):
        assert y.shape == x.shape[1:], f"leaf shape {y.shape}, expected {x.shape[1:]}"
        assert y.dtype == jnp.float32, f"float32 input gave dtype {y.dtype}"
        assert np.all(np.isfinite(y)), "non-finite output"


def _eager_equals_jit(op, key, extra):
    tv, needs = _tree(2), _needs(op, NUM_TASKS, extra)
    cont = {h: op.default_hparams[h] for h in op.continuous_hparams if h in op.default_hparams}
    static = {h: v for h, v in op.default_hparams.items() if h not in cont}

    @jax.jit
    def run(tv, key, cont, needs):
        return op.fn(tv, key, **static, **cont, **needs)

    _close(run(tv, key, cont, needs), _call(op, tv, key, needs), rtol=1e-12)


def _vmap_over_keys(op, key, extra):
    tv, needs = _tree(3), _needs(op, NUM_TASKS, extra)
    keys = jr.split(key, 3)
    batched = jax.vmap(lambda k: _call(op, tv, k, needs))(keys)
    for i in range(3):
        _close(jtu.tree_map(lambda x, i=i: x[i], batched), _call(op, tv, keys[i], needs))


def _vmap_over_continuous_hparams(op, key, extra):
    if not op.continuous_hparams:
        raise NotClaimed("no continuous hyperparameters")
    tv, needs = _tree(4), _needs(op, NUM_TASKS, extra)
    for h in op.continuous_hparams:
        base = float(op.default_hparams.get(h, 1.0))
        values = np.array(
            [base, base * 0.75, min(1.0, base * 1.5) if h == "density" else base * 1.5]
        )
        batched = jax.vmap(lambda v, h=h: _call(op, tv, key, needs, **{h: v}))(jnp.asarray(values))
        for i, v in enumerate(values):
            eager = _call(op, tv, key, needs, **{h: float(v)})
            _close(jtu.tree_map(lambda x, i=i: x[i], batched), eager)


def _permutation_invariance(op, key, extra):
    if not op.permutation_invariant or op.stochastic:
        raise NotClaimed("not claimed, or stochastic (invariant in distribution only)")
    tv, needs = _tree(5), _needs(op, NUM_TASKS, extra)
    perm = np.array([2, 0, 3, 1])
    permuted = jtu.tree_map(lambda x: x[perm], tv)
    needs_p = dict(needs)
    for k in _per_task_needs(needs, NUM_TASKS):
        needs_p[k] = needs[k][perm]
    _close(_call(op, permuted, key, needs_p), _call(op, tv, key, needs))
    if op.has_weights:
        w = jnp.asarray([0.5, 1.5, 1.0, 2.0])
        _close(
            _call(op, permuted, key, needs_p, weights=w[perm]),
            _call(op, tv, key, needs, weights=w),
        )


def _identity_at_one_task(op, key, extra):
    if not op.identity_at_one:
        raise NotClaimed("not claimed")
    tv = _tree(6, num=1)
    out = _call(op, tv, key, _needs(op, 1, extra), **op.identity_hparams)
    _close(out, jtu.tree_map(lambda x: x[0], tv), rtol=1e-12)


def _linearity(op, key, extra):
    if not op.linear:
        raise NotClaimed("not claimed")
    x, y, needs = _tree(7), _tree(8), _needs(op, NUM_TASKS, extra)
    a, b = 1.7, -0.6
    mixed = jtu.tree_map(lambda u, v: a * u + b * v, x, y)
    expected = jtu.tree_map(
        lambda u, v: a * u + b * v, _call(op, x, key, needs), _call(op, y, key, needs)
    )
    _close(_call(op, mixed, key, needs), expected)


def _scale_equivariance(op, key, extra):
    if not op.scale_equivariant:
        raise NotClaimed("not claimed")
    tv, needs = _tree(9), _needs(op, NUM_TASKS, extra)
    a = 3.0
    scaled = jtu.tree_map(lambda x: a * x, tv)
    _close(_call(op, scaled, key, needs), jtu.tree_map(lambda x: a * x, _call(op, tv, key, needs)))


def _stochasticity(op, key, extra):
    tv, needs = _tree(10), _needs(op, NUM_TASKS, extra)
    k1, k2 = jr.split(key)
    same = _call(op, tv, k1, needs)
    _close(_call(op, tv, k1, needs), same, rtol=0, atol=0)  # same key reproduces
    other = _call(op, tv, k2, needs)
    pairs = zip(jtu.tree_leaves(same), jtu.tree_leaves(other), strict=True)
    differs = any(not np.array_equal(u, v) for u, v in pairs)
    assert differs == op.stochastic, (
        "another key changed the output but stochastic=False is claimed"
        if differs
        else "another key gave the same output but stochastic=True is claimed"
    )


def _needs_required(op, key, extra):
    if not op.needs:
        raise NotClaimed("needs nothing")
    tv, needs = _tree(12), _needs(op, NUM_TASKS, extra)
    for need in op.needs:
        rest = {k: v for k, v in needs.items() if k != need}
        try:
            _call(op, tv, key, rest)
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"claims it needs {need!r}, but a call without it succeeded")


def _traced_once(op, key, extra):
    tv, needs = _tree(13), _needs(op, NUM_TASKS, extra)
    # a first call with fresh shapes (T = 3) may trace; the second, with other values of
    # the continuous hyperparameters and another key, must trace nothing
    tv3 = jtu.tree_map(lambda x: x[:3], tv)
    needs3 = {k: v[:3] if k in _per_task_needs(needs, NUM_TASKS) else v for k, v in needs.items()}
    count_traces(_call, op, tv3, key, needs3)
    moved = {}
    for h in op.continuous_hparams:
        v = float(op.default_hparams.get(h, 1.0))
        moved[h] = v * 0.9
    _, second = count_traces(_call, op, tv3, jr.fold_in(key, 1), needs3, **moved)
    assert second == 0, (
        f"a second call with the same shapes (continuous hyperparameters {moved}) traced "
        f"{second} more program(s): jit the core once, with only shape-determining options static"
    )


def _expect_rejected(what: str, call: Callable[[], Any]) -> None:
    try:
        out = call()
    except (TypeError, ValueError):
        return
    raise AssertionError(f"{what} was not rejected (returned {jtu.tree_structure(out)})")


def _bad_input_rejected(op, key, extra):
    tv, needs = _tree(14), _needs(op, NUM_TASKS, extra)
    nan = {**tv, "b": tv["b"].at[1, 2].set(jnp.nan)}
    _expect_rejected("a NaN in a task vector", lambda: _call(op, nan, key, needs))
    ragged = {**tv, "b": tv["b"][:3]}
    _expect_rejected("leaves with different task axes", lambda: _call(op, ragged, key, needs))
    if op.has_weights:
        w = jnp.ones(NUM_TASKS + 1)
        _expect_rejected(
            f"weights of shape {w.shape} for T = {NUM_TASKS}",
            lambda: _call(op, tv, key, needs, weights=w),
        )


def _per_tensor(op, key, extra):
    if op.per_tensor is None:
        raise NotClaimed("needs the whole tree")
    rng = np.random.default_rng(15)  # leaves of other sizes and scales: global rules show
    tv = {
        "w": jnp.asarray(rng.standard_normal((NUM_TASKS, 6, 5))),
        "v": jnp.asarray(10 * rng.standard_normal((NUM_TASKS, 4, 3))),
        "b": jnp.asarray(0.1 * rng.standard_normal((NUM_TASKS, 5))),
    }
    needs = _needs(op, NUM_TASKS, extra)
    whole = _call(op, tv, key, needs, **op.per_tensor)
    order = sorted(tv)  # the dict's flatten order
    for k in tv:
        # a stochastic operator gets the key leaf k has in the tree (per-leaf keys)
        kk = {k: jr.fold_in(key, order.index(k))} if op.stochastic else key
        alone = _call(op, {k: tv[k]}, kk, needs, **op.per_tensor)[k]
        assert np.array_equal(np.asarray(alone), np.asarray(whole[k])), (
            f"leaf {k!r} merged alone differs from its merge in the tree, but "
            f"per_tensor={dict(op.per_tensor)} is claimed"
        )


def _record_consistent(op, key, extra):
    assert callable(op.fn), "fn is not callable"
    overlap = set(op.continuous_hparams) & set(op.static_argnames)
    assert not overlap, f"hyperparameters {sorted(overlap)} are both continuous and static"
    unknown = set(op.identity_hparams) - set(op.default_hparams) - set(op.static_argnames)
    assert not unknown, f"identity_hparams {sorted(unknown)} are neither default nor static"
    if op.per_tensor is not None:
        params = inspect.signature(op.fn).parameters
        unknown = set(op.per_tensor) - set(params)
        assert not unknown, f"per_tensor names {sorted(unknown)}, not hyperparameters of fn"
    assert op.description, "no description"


def _float32_x64_off(op, key, extra):
    tv32 = _tree(11, dtype=np.float32)
    needs = _needs(op, NUM_TASKS, extra)
    to64 = lambda x: jnp.asarray(np.asarray(x, np.float64))  # noqa: E731
    want = _call(op, jtu.tree_map(to64, tv32), key, jtu.tree_map(to64, needs))
    with jax.enable_x64(False):
        to32 = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
        got = _call(op, jtu.tree_map(to32, tv32), key, jtu.tree_map(to32, needs))
        got = jtu.tree_map(np.asarray, got)
    for g, w in zip(jtu.tree_leaves(got), jtu.tree_leaves(want), strict=True):
        assert g.dtype == np.float32, f"float32 input with x64 off gave {g.dtype}"
        scale = float(np.max(np.abs(w))) or 1.0
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale)


CHECKS: dict[str, Callable[[MergeOperator, Any, Mapping[str, Any]], None]] = {
    "structure_shape_dtype": _structure_shape_dtype,
    "eager_equals_jit": _eager_equals_jit,
    "vmap_over_keys": _vmap_over_keys,
    "vmap_over_continuous_hparams": _vmap_over_continuous_hparams,
    "permutation_invariance": _permutation_invariance,
    "identity_at_one_task": _identity_at_one_task,
    "linearity": _linearity,
    "scale_equivariance": _scale_equivariance,
    "stochasticity": _stochasticity,
    "needs_required": _needs_required,
    "traced_once": _traced_once,
    "bad_input_rejected": _bad_input_rejected,
    "per_tensor": _per_tensor,
    "record_consistent": _record_consistent,
    "float32_x64_off": _float32_x64_off,
}
"""Every conformance check, by name (``fn(op, key, needs_factories)``)."""


def _resolve(op_or_name: MergeOperator | str) -> tuple[str, MergeOperator]:
    if isinstance(op_or_name, MergeOperator):
        return getattr(op_or_name.fn, "__name__", "operator"), op_or_name
    if isinstance(op_or_name, str):
        return op_or_name, get_operator(op_or_name)
    raise TypeError(f"expected a MergeOperator or a registered name, got {type(op_or_name)}")


def run_check(
    op_or_name: MergeOperator | str,
    check: str,
    *,
    key: Any = None,
    needs: Mapping[str, Callable[[int], Any]] | None = None,
) -> bool:
    """Run one check; ``True`` if it ran, ``False`` if the property is not claimed.

    Inside pytest an unclaimed property calls ``pytest.skip`` instead of returning ``False``.

    Raises:
      AssertionError: ``"operator NAME: CHECK failed: ..."`` (any exception the operator
        raises during the check is reported this way too).
    """
    name, op = _resolve(op_or_name)
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; known: {', '.join(CHECKS)}")
    key = jr.key(20261123) if key is None else key
    try:
        with jax.enable_x64(True):
            CHECKS[check](op, key, dict(needs or {}))
    except NotClaimed as why:
        import sys

        if "pytest" in sys.modules:
            import pytest

            pytest.skip(f"{check}: {why}")
        return False
    except AssertionError as exc:
        raise AssertionError(f"operator {name}: {check} failed: {exc}") from exc
    except Exception as exc:
        raise AssertionError(
            f"operator {name}: {check} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return True


def check_operator(
    op_or_name: MergeOperator | str,
    *,
    key: Any = None,
    checks: Iterable[str] | None = None,
    needs: Mapping[str, Callable[[int], Any]] | None = None,
) -> list[str]:
    """Run every conformance check (or ``checks``) on an operator.

    Args:
      op_or_name: a :class:`~mergetheory.merge.MergeOperator` or a registered name
        (plugins are loaded).
      key: the PRNG key (default ``jax.random.key(20261123)``).
      checks: names from :data:`CHECKS` (default all).
      needs: factories ``num_tasks -> value`` for required inputs other than ``base`` and
        ``base_accuracy``.

    Returns:
      The names of the checks that ran (unclaimed properties are left out).

    Raises:
      AssertionError: one message per failed property, all of them listed.
    """
    ran, failures = [], []
    for check in CHECKS if checks is None else checks:
        try:
            if _run_quietly(op_or_name, check, key, needs):
                ran.append(check)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    if failures:
        raise AssertionError("\n".join(failures))
    return ran


def _run_quietly(op_or_name, check, key, needs) -> bool:
    try:
        return run_check(op_or_name, check, key=key, needs=needs)
    except BaseException as exc:  # pytest.skip's Skipped is a BaseException
        if type(exc).__name__ == "Skipped":
            return False
        raise


def operator_conformance_cases(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, check)`` pairs for ``pytest.mark.parametrize("name, check", ...)``."""
    return [(name, check) for name in names for check in CHECKS]
