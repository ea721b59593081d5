"""Flat ``{"a.b.c": array}`` names <-> nested pytrees (the safetensors layout).

Both directions go through flax (``flax.serialization.to_state_dict`` and
``flax.traverse_util.flatten_dict`` / ``unflatten_dict``), under checks that the names
invert: no key may contain the separator, no two leaves may share a name, and no name may
be an array and a group at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .common import CheckpointError

__all__ = [
    "VARIABLE_WRAPPER_KEYS",
    "flat_leaf_names",
    "flatten_tree",
    "leaf_key_paths",
    "nest_key_paths",
    "strip_variable_wrappers",
    "unflatten_tree",
]

VARIABLE_WRAPPER_KEYS = ("value", "raw_value")
"""The one key under which a saved ``nnx.State`` (or ``nnx.Variable``) holds its array."""


def flatten_tree(tree: Any, *, sep: str = ".") -> dict[str, np.ndarray]:
    """Flatten a nested pytree to ``{"a.b.c": array}`` (the safetensors layout).

    Lists and tuples are numbered (``"layers.0.w"``), NamedTuples keyed by field, as in
    ``flax.serialization.to_state_dict``; ``None`` leaves are dropped, as in ``jax.tree``.

    Args:
      tree: nested dicts / lists / tuples of arrays.
      sep: the separator joining key-path parts.

    Returns:
      A flat dict of NumPy arrays, in the tree's order.

    Raises:
      CheckpointError: if a key contains ``sep`` (the flattening would not invert) or two
        leaves get the same name.

    Example:
      >>> flatten_tree({"dense": {"kernel": np.ones((2, 3))}})["dense.kernel"].shape
      (2, 3)
    """
    from flax import serialization, traverse_util

    state = serialization.to_state_dict(tree)
    if not isinstance(state, dict):
        return {} if state is None else {"<root>": np.asarray(state)}
    out: dict[str, np.ndarray] = {}
    for path, leaf in traverse_util.flatten_dict(state).items():
        if leaf is None:
            continue
        parts = [str(k) for k in path]
        for p in parts:
            if sep in p or p == "":
                raise CheckpointError(
                    f"cannot flatten key {p!r}: it is empty or contains the separator {sep!r}"
                )
        name = sep.join(parts)
        if name in out:
            raise CheckpointError(f"two leaves flatten to the same name {name!r}")
        out[name] = np.asarray(leaf)
    return out


def unflatten_tree(flat: Mapping[str, Any], *, sep: str = ".") -> dict[str, Any]:
    """Invert :func:`flatten_tree` into nested dicts (keys stay strings, sorted).

    Raises:
      CheckpointError: if one name is a prefix of another (``"a"`` and ``"a.b"``).

    Example:
      >>> unflatten_tree({"a.b": 1, "a.c": 2})
      {'a': {'b': 1, 'c': 2}}
    """
    from flax import traverse_util

    names = set(flat)
    for name in sorted(flat):
        parts = name.split(sep)
        for i in range(1, len(parts)):
            if sep.join(parts[:i]) in names:
                raise CheckpointError(f"name {name!r} nests under the array {parts[i - 1]!r}")
    return traverse_util.unflatten_dict({name: flat[name] for name in sorted(flat)}, sep=sep)


def strip_variable_wrappers(tree: Any) -> Any:
    """Replace every ``{"value": array}`` node (a saved Flax variable) by the array.

    ``nnx.state(model)`` saved with orbax restores as ``{"kernel": {"value": w}}`` while
    the same model's pure dict (``nnx.to_pure_dict`` / linen params, e.g. in msgpack) is
    ``{"kernel": w}``; both load as the latter. Only a dict whose *only* key is one of
    :data:`VARIABLE_WRAPPER_KEYS` and whose value is an array is unwrapped, so a submodule
    named ``value`` (a dict of arrays) is kept.

    Example:
      >>> strip_variable_wrappers({"dense": {"kernel": {"value": 1.0}}})
      {'dense': {'kernel': 1.0}}
    """
    if isinstance(tree, Mapping):
        if len(tree) == 1:
            ((key, val),) = tree.items()
            if key in VARIABLE_WRAPPER_KEYS and not isinstance(val, Mapping):
                return val
        return {k: strip_variable_wrappers(v) for k, v in tree.items()}
    return tree


def flat_leaf_names(placeholders: Any) -> dict[str, int]:
    """The flat names a tree will load under, from a tree of leaf numbers (no weights read).

    A lazy reader (orbax metadata, a msgpack index) builds the checkpoint's tree with each
    array replaced by its number ``k`` (``None`` where the checkpoint holds nothing);
    :func:`strip_variable_wrappers` and :func:`flatten_tree` then give exactly the names
    that loading the whole checkpoint gives, each mapped to its leaf number.

    Example:
      >>> flat_leaf_names({"dense": {"kernel": {"value": 0}}, "b": [1, None]})
      {'dense.kernel': 0, 'b.0': 1}
    """
    flat = flatten_tree(strip_variable_wrappers(placeholders))
    return {name: int(k) for name, k in flat.items()}


def leaf_key_paths(placeholders: Any) -> dict[str, tuple[Any, ...]]:
    """Each flat name's key path in the checkpoint's own tree (wrappers kept).

    The inverse view of :func:`flat_leaf_names`: from the same tree of leaf numbers, the
    keys that lead to each leaf *in the file* (``("dense", "kernel", "value")`` for an
    ``nnx.State``), so that a writer can give its output the input's structure.

    Example:
      >>> leaf_key_paths({"dense": {"kernel": {"value": 0}}, "b": [1, None]})
      {'dense.kernel': ('dense', 'kernel', 'value'), 'b.0': ('b', 0)}
    """
    import jax.tree_util as jtu

    def key(entry: Any) -> Any:
        for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
            if hasattr(entry, attr):
                return getattr(entry, attr)
        return str(entry)

    paths = {
        int(k): tuple(key(e) for e in path)
        for path, k in jtu.tree_flatten_with_path(placeholders)[0]
    }
    return {name: paths[k] for name, k in flat_leaf_names(placeholders).items()}


def nest_key_paths(items: Any) -> Any:
    """Build nested containers from ``(key_path, value)`` pairs, in their order.

    The inverse of :func:`leaf_key_paths`: dicts keyed by the path's parts, where a level
    whose keys are exactly the integers ``0..k-1`` (list indices) becomes a list.

    Example:
      >>> nest_key_paths([(("a", "w"), 1), (("b", 0), 2)])
      {'a': {'w': 1}, 'b': [2]}
    """
    root: dict[Any, Any] = {}
    for path, value in items:
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"key path {path!r} nests under an array")
        node[path[-1]] = value

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: listify(v) for k, v in node.items()}
        if out and all(type(k) is int for k in out) and sorted(out) == list(range(len(out))):
            return [out[i] for i in range(len(out))]
        return out

    return listify(root)
