"""Safetensors files <-> flat ``{name: array}`` dicts, read lazily one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and the
raw little-endian bytes. It is parsed here directly (not through ``safetensors.numpy``,
whose NumPy framework has no bfloat16, the usual dtype of real adapters): bfloat16 and
float8 map to ``ml_dtypes`` types. :class:`SafetensorsReader` reads the header once and
each tensor's bytes on :meth:`~SafetensorsReader.get` (a positioned read, not a memory map
whose pages would stay resident), so reading a model costs about
its largest tensor in memory; :class:`SafetensorsWriter` writes tensor by tensor into an
atomic temporary. Nested pytrees go through :func:`mergetheory.io.flat.flatten_tree` /
:func:`~mergetheory.io.flat.unflatten_tree` with ``.``-joined names.

Reference: the safetensors format specification (``safetensors`` package documentation).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from .atomic import atomic_write
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = [
    "SAFETENSORS_DTYPES",
    "SafetensorsReader",
    "SafetensorsWriter",
    "load_safetensors",
    "save_safetensors",
]

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
"""Safetensors dtype codes -> NumPy dtypes (bfloat16 / float8 from ``ml_dtypes``)."""

_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsReader:
    """A safetensors file read lazily: names, shapes and dtypes, one tensor at a time.

    Args:
      path: the ``.safetensors`` file.

    Attributes:
      path: the absolute path.
      metadata: the header's ``__metadata__`` (string -> string).

    Raises:
      CheckpointError: missing file, or a header that is truncated / corrupt / points
        outside the file (naming the file).

    Example:
      >>> r = SafetensorsReader("model.safetensors")
      >>> {n: r.shape(n) for n in r.names}
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path).absolute()
        require_exists(self.path, kind="safetensors file", is_dir=False)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                self._corrupt("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                self._corrupt(f"header length {n} exceeds the file size {size}")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._corrupt(f"header is not JSON ({e})")
        if not isinstance(header, dict):
            self._corrupt("header is not a JSON object")
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self._start = 8 + n
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
                shape = tuple(int(s) for s in shape)
            except (KeyError, TypeError, ValueError):
                self._corrupt(f"tensor {name!r} has a malformed header entry")
            if code not in SAFETENSORS_DTYPES:
                self._corrupt(f"tensor {name!r} has unsupported dtype {code!r}")
            dtype = SAFETENSORS_DTYPES[code]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != nbytes or begin < 0 or self._start + end > size:
                self._corrupt(f"tensor {name!r} is truncated or its offsets are wrong")
            self._entries[name] = (dtype, shape, int(begin), int(end))

    def _corrupt(self, why: str) -> None:
        raise CheckpointError(f"corrupt or truncated safetensors file {self.path}: {why}")

    @property
    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (read from the header only)."""
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        """NumPy dtype of tensor ``name`` (read from the header only)."""
        return self._entries[name][0]

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Tensor ``name`` as a fresh in-memory array (only its bytes are read).

        Args:
          name: the tensor.
          rows: ``(start, stop)`` to read only ``x[start:stop]`` (first axis; its bytes are
            contiguous), e.g. a block of a large embedding.
        """
        if name not in self._entries:
            raise CheckpointError(f"safetensors file {self.path} has no tensor {name!r}")
        dtype, shape, begin, _ = self._entries[name]
        if rows is not None:
            start, stop = rows
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            shape, begin = (stop - start, *shape[1:]), begin + start * row
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.zeros(shape, dtype)
        # a positioned read, not a memory map: mapped pages would stay in the RSS
        arr = np.fromfile(
            self.path, dtype=dtype.newbyteorder("<"), count=count, offset=self._start + begin
        )
        return arr.astype(dtype, copy=False).reshape(shape)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._entries:
            yield name, self.get(name)


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor (names, shapes, dtypes declared first).

    The header needs every tensor's dtype and shape up front; the data then streams in the
    declared order, so memory holds one tensor at a time. The file appears atomically on
    :meth:`close` (``with`` block), and not at all on an exception.

    Example:
      >>> spec = {"w": ((2, 3), np.float32)}
      >>> with SafetensorsWriter("out.safetensors", spec) as w:
      ...     w.write("w", np.ones((2, 3), np.float32))
    """

    def __init__(
        self,
        path: PathLike,
        spec: Mapping[str, tuple[tuple[int, ...], Any]],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        self._order: list[tuple[str, tuple[int, ...], np.dtype]] = []
        for name, (shape, dtype) in spec.items():
            if not isinstance(name, str):
                raise CheckpointError(f"safetensors names must be strings, got {name!r}")
            dtype = np.dtype(dtype)
            if dtype not in _CODES:
                raise CheckpointError(f"{self.path}: dtype {dtype} of {name!r} has no code")
            shape = tuple(int(s) for s in shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {
                "dtype": _CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            self._order.append((name, shape, dtype))
        self.order = [name for name, _, _ in self._order]  # the writing order
        self.spec = {name: (shape, dtype) for name, shape, dtype in self._order}
        raw = json.dumps(header, separators=(",", ":")).encode()
        self._header = raw + b" " * (-len(raw) % 8)
        self._next = 0
        self._ctx = None
        self._file: IO[bytes] | None = None

    def __enter__(self) -> SafetensorsWriter:
        self._ctx = atomic_write(self.path)
        self._file = self._ctx.__enter__()
        self._file.write(struct.pack("<Q", len(self._header)) + self._header)
        return self

    def write(self, name: str, array: Any) -> None:
        """Write the next declared tensor (in the order of ``spec``)."""
        want, shape, dtype = self._order[self._next]
        arr = np.asarray(array)
        if name != want or arr.shape != shape or arr.dtype != dtype:
            raise CheckpointError(
                f"{self.path}: expected tensor {want!r} {shape} {dtype} next, "
                f"got {name!r} {arr.shape} {arr.dtype}"
            )
        self._file.write(np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).tobytes())
        self._next += 1

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self._next != len(self._order):
            missing = self._order[self._next][0]
            err = CheckpointError(f"{self.path}: tensor {missing!r} was declared, not written")
            self._ctx.__exit__(CheckpointError, err, None)
            raise err
        self._ctx.__exit__(*exc)


def save_safetensors(
    path: PathLike, tensors: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a flat ``{name: array}`` dict as a safetensors file, atomically.

    Any dtype of :data:`SAFETENSORS_DTYPES` is kept, bfloat16 included.

    Args:
      path: target file.
      tensors: flat mapping of names to arrays (use
        :func:`~mergetheory.io.flat.flatten_tree` for nested trees).
      metadata: optional string-to-string header metadata.

    Example:
      >>> save_safetensors("model.safetensors", {"dense.kernel": np.ones((2, 3))})
    """
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    spec = {k: (a.shape, a.dtype) for k, a in arrays.items()}
    with SafetensorsWriter(path, spec, metadata=metadata) as w:
        for k, a in arrays.items():
            w.write(k, a)
    return Path(path).absolute()


def load_safetensors(path: PathLike, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Read a safetensors file into a flat ``{name: np.ndarray}`` dict (bfloat16 kept).

    Raises:
      CheckpointError: missing / truncated / corrupt file, or non-finite values.
    """
    reader = SafetensorsReader(path)
    flat = dict(reader)
    if check_finite:
        check_finite_checkpoint(flat, reader.path)
    return flat
