"""Flax msgpack files <-> pytrees (``flax.serialization.to_bytes`` / ``msgpack_restore``).

:func:`load_msgpack` reads a whole file through the library; :class:`MsgpackReader` reads
one array at a time, from the byte ranges found by
:func:`mergetheory.io.msgpack_index.index_msgpack` (for the streaming pool readers of
:mod:`mergetheory.io.pool`).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO, Any

import jax.tree_util as jtu
import numpy as np

from .atomic import atomic_write, atomic_write_bytes
from .common import (
    CheckpointError,
    PathLike,
    TensorWriter,
    as_scalar,
    check_finite_checkpoint,
    require_exists,
    scalar_kind,
)

__all__ = ["MsgpackReader", "MsgpackWriter", "load_msgpack", "save_msgpack"]


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
    the RSS). :attr:`key_paths` give each name's place in the file's own tree. Names are
    those of :func:`~mergetheory.io.checkpoints.load_checkpoint`
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
        from .flat import flat_leaf_names, leaf_key_paths
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
        numbered = jtu.tree_unflatten(treedef, list(range(len(leaves))))
        self._leaf = flat_leaf_names(numbered)
        self.key_paths = leaf_key_paths(numbered)  # in the file's tree (wrappers kept)
        self.names = list(self._leaf)
        # leaves held as scalars (a Python number, a NumPy scalar), not arrays
        kinds = {
            n: "numpy" if getattr(e, "scalar", False) else scalar_kind(e)
            for n, e in ((n, leaves[i]) for n, i in self._leaf.items())
        }
        self.scalar_kinds = {n: k for n, k in kinds.items() if k is not None}

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


_CHUNKED = "__msgpack_chunked_array__"


def _packb(value: Any) -> bytes:
    import msgpack

    return msgpack.packb(value, use_bin_type=True)


def _ndarray_ext_header(shape: tuple[int, ...], dtype: np.dtype, code: int = 1) -> bytes:
    """The bytes before an array's raw data in flax's ndarray ext record (code 1; 3 for a
    NumPy scalar): ``ext32(code, msgpack [shape, dtype name, bin])``, the ``bin`` header
    last."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < 1 << 8:
        binh = b"\xc4" + struct.pack(">B", nbytes)
    elif nbytes < 1 << 16:
        binh = b"\xc5" + struct.pack(">H", nbytes)
    else:
        binh = b"\xc6" + struct.pack(">I", nbytes)
    inner = b"\x93" + _packb(list(shape)) + _packb(dtype.name) + binh
    return b"\xc9" + struct.pack(">Ib", len(inner) + nbytes, code) + inner


class MsgpackWriter(TensorWriter):
    """Write a flax msgpack file tensor by tensor, readable by
    ``flax.serialization.msgpack_restore`` (the layout of ``flax.serialization.to_bytes``).

    msgpack maps are prefixed by their number of entries, so the nested tree (from
    :attr:`key_paths`: an input's own structure, Flax ``value`` wrappers included) is known
    up front and the tensors are taken in its depth-first order (:attr:`order`): before
    each array the headers of the maps it opens and its key are written, then the array
    as flax's ndarray ext record, its bytes straight from the array. Arrays above
    ``flax.serialization.MAX_CHUNK_SIZE`` bytes are written in flax's chunked layout. The
    file appears atomically when the ``with`` block ends.

    Example:
      >>> with MsgpackWriter("m.msgpack", {"dense.w": ((2, 3), np.float32)}) as w:
      ...     w.write("dense.w", np.ones((2, 3), np.float32))
    """

    def __init__(
        self, path: PathLike, spec: Any, key_paths: Any = None, scalars: Any = None
    ) -> None:
        from .flat import nest_key_paths

        super().__init__(path, spec, key_paths, scalars)
        tree = nest_key_paths((self.key_paths[n], n) for n in self.spec)
        self._before: dict[str, bytes] = {}
        self.order = []
        self._walk(tree, b"")
        self._file: IO[bytes] | None = None

    def _walk(self, node: Any, pending: bytes) -> bytes:
        """Depth-first: each leaf's preceding bytes (map headers, keys) into ``_before``."""
        import msgpack

        if isinstance(node, list):  # flax stores sequences as maps keyed "0", "1", ...
            node = {str(i): v for i, v in enumerate(node)}
        if not isinstance(node, dict):
            self._before[node] = pending
            self.order.append(node)
            return b""
        head = msgpack.Packer().pack_map_header(len(node))
        pending += head
        for key, child in node.items():
            pending = self._walk(child, pending + _packb(str(key)))
        return pending

    def __enter__(self) -> MsgpackWriter:
        self._ctx = atomic_write(self.path)
        self._file = self._ctx.__enter__()
        if not self.order:
            self._file.write(_packb({}))
        return self

    def _array(self, arr: np.ndarray, code: int = 1) -> None:
        flat = np.ascontiguousarray(arr).reshape(-1)
        self._file.write(_ndarray_ext_header(arr.shape, arr.dtype, code))
        self._file.write(flat.view(np.uint8).data)

    def write(self, name: str, array: Any) -> None:
        """Write the next declared tensor (in :attr:`order`; a declared scalar as the
        input held it, :attr:`scalars`)."""
        from flax import serialization

        arr = self.check_next(name, array)
        self._file.write(self._before[name])
        kind = self.scalars.get(name)
        if kind == "python":
            self._file.write(_packb(as_scalar(arr, kind)))
            return
        if kind == "numpy":
            self._array(arr, code=3)  # flax's NumPy scalar record
            return
        if arr.nbytes <= serialization.MAX_CHUNK_SIZE:
            self._array(arr)
            return
        import msgpack

        step = max(1, int(serialization.MAX_CHUNK_SIZE / arr.dtype.itemsize))
        flat = np.ascontiguousarray(arr).reshape(-1)
        starts = range(0, flat.size, step)
        packer = msgpack.Packer()
        shape = {str(i): d for i, d in enumerate(arr.shape)}
        head = packer.pack_map_header(3) + _packb(_CHUNKED) + _packb(True)
        head += _packb("shape") + _packb(shape) + _packb("chunks")
        self._file.write(head + packer.pack_map_header(len(starts)))
        for i, lo in enumerate(starts):
            self._file.write(_packb(str(i)))
            self._array(flat[lo : lo + step])

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            try:
                self.check_complete()
            except CheckpointError as err:
                self._ctx.__exit__(CheckpointError, err, None)
                raise
        self._ctx.__exit__(*exc)
