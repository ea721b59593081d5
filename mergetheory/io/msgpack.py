"""Flax msgpack files <-> pytrees (``flax.serialization.to_bytes`` / ``msgpack_restore``).

:func:`load_msgpack` reads a whole file through the library; :class:`MsgpackReader` reads
one array at a time, from the byte ranges found by
:func:`mergetheory.io.msgpack_index.index_msgpack` (for the streaming pool readers of
:mod:`mergetheory.io.pool`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.tree_util as jtu
import numpy as np

from .atomic import atomic_write_bytes
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = ["MsgpackReader", "load_msgpack", "save_msgpack"]


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


class MsgpackReader:
    """A flax msgpack file read one array at a time.

    The file is indexed once (:func:`~mergetheory.io.msgpack_index.index_msgpack`: a walk
    of its structure through a memory map, the array bytes untouched); :meth:`get` then
    reads one array's bytes with a positioned read (no mapping whose pages would stay in
    the RSS). Names are those of :func:`~mergetheory.io.checkpoints.load_checkpoint`
    (``.``-joined, Flax ``value`` wrappers removed), and :meth:`get` returns what
    ``flax.serialization.msgpack_restore`` gives for that leaf (chunked arrays joined).

    Raises:
      CheckpointError: missing, empty, truncated or malformed file, or one whose top
        level is not a map (naming the file).

    Example:
      >>> r = MsgpackReader("expert.msgpack")
      >>> {n: r.shape(n) for n in r.names}
    """

    def __init__(self, path: PathLike) -> None:
        from .flat import flat_leaf_names
        from .msgpack_index import MsgpackArray, MsgpackFormatError, index_msgpack

        self.path = Path(path).absolute()
        require_exists(self.path, kind="msgpack checkpoint", is_dir=False)
        try:
            tree = index_msgpack(self.path)
        except (MsgpackFormatError, UnicodeDecodeError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"corrupt or truncated msgpack checkpoint {self.path}: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(tree, dict):
            raise CheckpointError(
                f"msgpack checkpoint {self.path} holds a {type(tree).__name__}, "
                "not a pytree of arrays"
            )
        leaves, treedef = jtu.tree_flatten(tree, is_leaf=lambda x: isinstance(x, MsgpackArray))
        self._leaves = leaves
        self._leaf = flat_leaf_names(jtu.tree_unflatten(treedef, list(range(len(leaves)))))
        self.names = list(self._leaf)

    def _entry(self, name: str) -> Any:
        from .msgpack_index import MsgpackArray

        if name not in self._leaf:
            raise CheckpointError(f"msgpack checkpoint {self.path} has no array {name!r}")
        entry = self._leaves[self._leaf[name]]
        return entry if isinstance(entry, MsgpackArray) else np.asarray(entry)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of array ``name`` (from the index)."""
        return tuple(self._entry(name).shape)

    def dtype(self, name: str) -> np.dtype:
        """NumPy dtype of array ``name`` (from the index)."""
        return np.dtype(self._entry(name).dtype)

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Array ``name`` as a fresh in-memory array, or its rows ``start:stop``; only those
        bytes are read from the file."""
        entry = self._entry(name)
        if isinstance(entry, np.ndarray):
            return entry if rows is None else entry[rows[0] : rows[1]]
        item = entry.dtype.itemsize
        shape = tuple(entry.shape)
        if rows is not None:
            shape = (max(0, min(rows[1], shape[0]) - rows[0]), *shape[1:])
        row_bytes = item * int(np.prod(entry.shape[1:], dtype=np.int64))
        lo = 0 if rows is None else rows[0] * row_bytes  # byte range of the flat array
        out = np.empty(int(np.prod(shape, dtype=np.int64)), entry.dtype)
        buf = out.view(np.uint8)
        pos = 0  # start of the current segment in the flat array's bytes
        with open(self.path, "rb") as f:
            for offset, nbytes in entry.segments:
                a, b = max(lo, pos), min(lo + buf.size, pos + nbytes)
                if a < b:
                    f.seek(offset + a - pos)
                    if f.readinto(memoryview(buf[a - lo : b - lo])) != b - a:
                        raise CheckpointError(
                            f"truncated msgpack checkpoint {self.path} ({name!r})"
                        )
                pos += nbytes
        return out.reshape(shape)
