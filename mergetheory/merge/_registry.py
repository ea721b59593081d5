"""The merge-operator record type.

Every operator is a pure function ``fn(task_vectors, key, *, **hparams) -> merged``.
A :class:`MergeOperator` records that function together with the properties it *claims*;
``tests/merge/test_registry.py`` parametrizes over ``MERGE_OPERATORS`` and checks every claim,
so adding an operator is one function plus one registry line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple


class MergeOperator(NamedTuple):
    """An entry of the merge-operator registry.

    Attributes:
      fn: ``fn(task_vectors, key, **hparams) -> merged``.
      linear: ``fn(a X + b Y) == a fn(X) + b fn(Y)`` for fixed hyperparameters.
      stochastic: output depends on ``key``.
      permutation_invariant: permuting the task axis (and ``weights``, if given) leaves
        the output unchanged (in distribution, for stochastic operators: tested with a
        fixed key only when not stochastic).
      identity_at_one: with ``T = 1`` and ``identity_hparams`` the output equals the input.
      scale_equivariant: ``fn(a X) == a fn(X)`` for ``a > 0``.
      needs: names of extra *required* keyword arguments (per-task data such as
        ``base_accuracy``) or ``"base"`` when the base model is needed.
      default_hparams: hyperparameters used by the table-driven tests and the CLI.
      identity_hparams: overrides of ``default_hparams`` under which ``T = 1`` is the
        identity (e.g. ``density=1.0``).
      continuous_hparams: names of hyperparameters that may be traced (vmapped over).
      static_argnames: names of shape-determining (Python int / str / bool) hyperparameters.
      has_weights: the operator accepts a ``weights`` ``[T]`` argument.
      per_tensor: the merge of a pytree is the merge of each leaf alone, bit for bit, when
        the hyperparameters take these values (``{}``: always; ``{"trim": "tensor"}``: with
        a per-tensor trim); ``None``: it needs the whole tree (a global trim, leaves
        coupled). For a ``stochastic`` operator, leaf ``i`` merged alone is given the key
        it has in the tree, a per-leaf key pytree ``{name: fold_in(key, i)}``
        (:func:`mergetheory.merge.leaf_key_list`). Streaming merges, one tensor at a
        time (``mergetheory merge``), are used only where this holds.
      description: one line for ``mergetheory merge --help`` and the docs.
    """

    fn: Callable[..., Any]
    linear: bool = False
    stochastic: bool = False
    permutation_invariant: bool = True
    identity_at_one: bool = True
    scale_equivariant: bool = True
    needs: tuple[str, ...] = ()
    default_hparams: Mapping[str, Any] = {}
    identity_hparams: Mapping[str, Any] = {}
    continuous_hparams: tuple[str, ...] = ()
    static_argnames: tuple[str, ...] = ()
    has_weights: bool = True
    per_tensor: Mapping[str, Any] | None = None
    description: str = ""


ENTRY_POINT_GROUP = "mergetheory.operators"
"""The package entry-point group in which plugins publish operators (name -> object)."""

KNOWN_CLAIMS: tuple[str, ...] = tuple(f for f in MergeOperator._fields if f != "fn")
"""The claim keywords :func:`register_operator` accepts (the fields of :class:`MergeOperator`)."""


class PluginError(ValueError):
    """A plugin operator cannot be registered: name clash, bad signature or unknown claim."""


def _check_signature(name: str, fn: Callable[..., Any], op: MergeOperator) -> None:
    """``fn(task_vectors, key, *, **hparams)``: data first, key second, keyword hyperparameters."""
    if not callable(fn):
        raise PluginError(f"operator {name!r}: fn must be callable, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins / C callables: nothing to inspect
    params = list(sig.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    want = "fn(task_vectors, key, *, **hparams)"
    if len(positional) < 2 or any(p.kind == p.VAR_POSITIONAL for p in positional[:2]):
        raise PluginError(
            f"operator {name!r}: {getattr(fn, '__name__', fn)}{sig} must take the data first "
            f"and the PRNG key second: {want}"
        )
    extra = [p.name for p in positional[2:] if p.default is p.empty]
    if extra:
        raise PluginError(
            f"operator {name!r}: hyperparameter(s) {extra} must be keyword arguments with "
            f"defaults or keyword-only: {want}"
        )
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params[2:] if p.kind != p.VAR_POSITIONAL}
    named = (
        set(op.default_hparams)
        | set(op.identity_hparams)
        | set(op.continuous_hparams)
        | set(op.static_argnames)
        | {n for n in op.needs}
        | ({"weights"} if op.has_weights else set())
    )
    missing = sorted(named - accepted)
    if missing:
        raise PluginError(
            f"operator {name!r}: claims keyword argument(s) {missing} that "
            f"{getattr(fn, '__name__', fn)}{sig} does not accept"
            + (" (pass has_weights=False if it takes no weights)" if "weights" in missing else "")
        )


def make_operator(name: str, fn: Callable[..., Any], **claims: Any) -> MergeOperator:
    """Build a checked :class:`MergeOperator` record (what :func:`register_operator` stores).

    Raises:
      PluginError: a claim that is not one of :data:`KNOWN_CLAIMS`, or a signature that is
        not ``fn(task_vectors, key, *, **hparams)`` / does not accept a claimed keyword.
    """
    unknown = sorted(set(claims) - set(KNOWN_CLAIMS))
    if unknown:
        raise PluginError(
            f"operator {name!r}: unknown claim(s) {unknown}; known: {', '.join(KNOWN_CLAIMS)}"
        )
    tuples = ("needs", "continuous_hparams", "static_argnames")
    claims = {k: tuple(v) if k in tuples else v for k, v in claims.items()}
    op = MergeOperator(fn=fn, **claims)
    _check_signature(name, fn, op)
    return op


def add_operator(
    registry: dict[str, MergeOperator], name: str, op: MergeOperator, *, replace: bool = False
) -> MergeOperator:
    """Insert ``op`` under ``name`` into ``registry`` (a clash is an error unless ``replace``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginError(f"operator name must be a Python identifier, got {name!r}")
    if name in registry and not replace and registry[name] is not op:
        old = registry[name].fn
        where = f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', '?')}"
        raise PluginError(
            f"operator {name!r} is already registered (fn {where}); choose another name"
        )
    registry[name] = op
    return op
