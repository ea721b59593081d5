r"""Operators from outside the library: :func:`register_operator` and entry-point plugins.

An operator is a pure function ``fn(task_vectors, key, *, **hparams) -> merged`` (data
first, PRNG key second, keyword hyperparameters). Registering it records the properties it
*claims* (the fields of :class:`~mergetheory.merge.MergeOperator`); the conformance suite
:func:`mergetheory.testing.check_operator` then checks each claim.

A package publishes operators in the entry-point group ``mergetheory.operators``; each entry
names the operator and points at a :class:`~mergetheory.merge.MergeOperator` (or a mapping
``{"fn": ..., **claims}``, or a bare function with the default claims)::

    [project.entry-points."mergetheory.operators"]
    my_median = "my_merge_op:MEDIAN"

:func:`load_plugins` (called by :func:`get_operator`, :func:`operator_names` and the CLI)
registers every installed entry once. :data:`~mergetheory.merge.MERGE_OPERATORS` itself
holds the built-in operators until plugins are loaded or registered.

Example:
  >>> import jax.numpy as jnp
  >>> from mergetheory.merge import register_operator, unregister_operator
  >>> def my_mean(task_vectors, key, *, weights=None):
  ...     return {k: jnp.mean(v, axis=0) for k, v in task_vectors.items()}
  >>> op = register_operator("my_mean", my_mean, linear=True, description="plain mean")
  >>> unregister_operator("my_mean")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from . import MERGE_OPERATORS
from ._registry import (
    ENTRY_POINT_GROUP,
    KNOWN_CLAIMS,
    MergeOperator,
    PluginError,
    add_operator,
    make_operator,
)

__all__ = [
    "BUILTIN_OPERATOR_NAMES",
    "ENTRY_POINT_GROUP",
    "KNOWN_CLAIMS",
    "PluginError",
    "get_operator",
    "load_plugins",
    "operator_names",
    "plugin_names",
    "register_operator",
    "unregister_operator",
]

BUILTIN_OPERATOR_NAMES: tuple[str, ...] = tuple(sorted(MERGE_OPERATORS))
"""The operators shipped with the library, sorted."""

_loaded: set[str] = set()  # entry points (name=value) already registered


def register_operator(
    name: str, fn: Callable[..., Any], *, replace: bool = False, **claims: Any
) -> MergeOperator:
    """Register ``fn`` as merge operator ``name`` in :data:`MERGE_OPERATORS`.

    Args:
      name: a Python identifier, not yet registered (unless ``replace``).
      fn: ``fn(task_vectors, key, *, **hparams) -> merged``.
      replace: allow replacing an existing plugin entry (never a built-in one).
      **claims: the properties ``fn`` claims, fields of :class:`MergeOperator`
        (``linear``, ``stochastic``, ``permutation_invariant``, ``identity_at_one``,
        ``scale_equivariant``, ``needs``, ``default_hparams``, ``identity_hparams``,
        ``continuous_hparams``, ``static_argnames``, ``has_weights``, ``per_tensor``,
        ``description``).

    Returns:
      The stored :class:`MergeOperator`.

    Raises:
      PluginError: a name clash, a signature other than data, key, keyword hyperparameters
        (or one that does not accept a claimed hyperparameter), or an unknown claim.
    """
    if replace and name in BUILTIN_OPERATOR_NAMES:
        raise PluginError(f"operator {name!r} is built in and cannot be replaced")
    return add_operator(MERGE_OPERATORS, name, make_operator(name, fn, **claims), replace=replace)


def unregister_operator(name: str) -> None:
    """Remove a registered plugin operator (built-in operators cannot be removed)."""
    if name in BUILTIN_OPERATOR_NAMES:
        raise PluginError(f"operator {name!r} is built in and cannot be removed")
    if name not in MERGE_OPERATORS:
        raise KeyError(f"no operator {name!r} is registered")
    del MERGE_OPERATORS[name]


def plugin_names() -> list[str]:
    """Names of the operators installed packages publish (reads metadata only, no import)."""
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def _as_operator(name: str, obj: Any) -> MergeOperator:
    if isinstance(obj, MergeOperator):
        return make_operator(name, obj.fn, **{k: v for k, v in obj._asdict().items() if k != "fn"})
    if isinstance(obj, Mapping):
        claims = dict(obj)
        if "fn" not in claims:
            raise PluginError(f"operator {name!r}: the mapping has no 'fn'")
        return make_operator(name, claims.pop("fn"), **claims)
    return make_operator(name, obj)


def load_plugins() -> list[str]:
    """Register every operator of the ``mergetheory.operators`` entry points (once each).

    Returns:
      The names newly registered.

    Raises:
      PluginError: an entry point that cannot be imported, clashes with a registered name,
        or is not an operator; the message names the entry point.
    """
    new = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        tag = f"{ep.name}={ep.value}"
        if tag in _loaded and ep.name in MERGE_OPERATORS:
            continue
        where = f"entry point {ep.name} = {ep.value!r} (group {ENTRY_POINT_GROUP})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"{where}: cannot load ({type(exc).__name__}: {exc})") from exc
        try:
            add_operator(MERGE_OPERATORS, ep.name, _as_operator(ep.name, obj))
        except PluginError as exc:
            raise PluginError(f"{where}: {exc}") from None
        _loaded.add(tag)
        new.append(ep.name)
    return new


def operator_names() -> list[str]:
    """Every registered operator name (built-in, registered and installed plugins), sorted."""
    load_plugins()
    return sorted(MERGE_OPERATORS)


def get_operator(name: str) -> MergeOperator:
    """The registered operator ``name`` (plugins loaded first); ``KeyError`` lists the names."""
    if name not in MERGE_OPERATORS:
        load_plugins()
    if name not in MERGE_OPERATORS:
        raise KeyError(
            f"no merge operator {name!r}; registered: {', '.join(sorted(MERGE_OPERATORS))}"
        )
    return MERGE_OPERATORS[name]
