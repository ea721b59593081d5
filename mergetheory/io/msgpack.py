"""Flax msgpack files <-> pytrees (``flax.serialization.to_bytes`` / ``msgpack_restore``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.tree_util as jtu
import numpy as np

from .atomic import atomic_write_bytes
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = ["load_msgpack", "save_msgpack"]


def save_msgpack(path: PathLike, tree: Any) -> Path:
    """Save a pytree with ``flax.serialization.to_bytes`` (msgpack), atomically.

    Example:
      >>> save_msgpack("ckpt/expert_00.msgpack", {"w": np.ones(3)})
    """
    from flax import serialization

    path = Path(path).absolute()
    atomic_write_bytes(path, serialization.to_bytes(jtu.tree_map(np.asarray, tree)))
    return path


def load_msgpack(path: PathLike, *, check_finite: bool = True) -> Any:
    """Load a msgpack checkpoint as nested dicts of NumPy arrays (``msgpack_restore``).

    Raises:
      CheckpointError: missing / truncated / corrupt file, or non-finite values.
    """
    from flax import serialization

    path = Path(path).absolute()
    require_exists(path, kind="msgpack checkpoint", is_dir=False)
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"corrupt msgpack checkpoint {path}: the file is empty")
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:
        raise CheckpointError(
            f"corrupt or truncated msgpack checkpoint {path}: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(tree, dict):
        raise CheckpointError(
            f"msgpack checkpoint {path} holds a {type(tree).__name__}, not a pytree of arrays"
        )
    if check_finite:
        check_finite_checkpoint(tree, path)
    return tree
