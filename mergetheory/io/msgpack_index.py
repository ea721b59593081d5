"""An index of a flax msgpack file: where each array's bytes are, without reading them.

``flax.serialization.msgpack_serialize`` writes a msgpack map whose arrays are msgpack
*ext* objects (code 1 for an ndarray, 3 for a NumPy scalar) holding a nested msgpack
array ``(shape, dtype name, raw C-order bytes)``; arrays above
``flax.serialization.MAX_CHUNK_SIZE`` bytes are split into 1-D chunks under a map
``{"__msgpack_chunked_array__": True, "shape": {"0": ...}, "chunks": {"0": ext, ...}}``.
The format has no index, so :func:`index_msgpack` walks the file once through a memory
map, decoding only the structure (maps, arrays, keys, the few bytes of each ext header)
and recording each array's byte ranges; the array data is never touched (its pages are
not read). Small non-array leaves (Python numbers, strings, complex numbers) are decoded.

Reference: the MessagePack specification (``msgpack`` package documentation) and
``flax.serialization`` (the ext codes and the chunked layout).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["MsgpackArray", "MsgpackFormatError", "index_msgpack"]

_NDARRAY, _COMPLEX, _NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


class MsgpackFormatError(ValueError):
    """The bytes are not a (complete) msgpack document of the flax layout."""


class MsgpackArray(NamedTuple):
    """Where one array's bytes are: ``segments`` of ``(offset, nbytes)``, in order;
    ``scalar``: stored as a NumPy scalar (ext code 3), not an ndarray."""

    dtype: np.dtype
    shape: tuple[int, ...]
    segments: tuple[tuple[int, int], ...]
    scalar: bool = False


class _Bin(NamedTuple):  # a msgpack bin whose bytes are not copied
    offset: int
    size: int


def _dtype(name: str) -> np.dtype:
    import ml_dtypes

    special = getattr(ml_dtypes, name, None)  # bfloat16, float8_*: as flax (jnp.bfloat16)
    return np.dtype(special if special is not None else name)


class _Walker:
    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> int:
        start = self.pos
        self.pos += n
        if self.pos > len(self.buf):
            raise MsgpackFormatError(f"truncated: needs byte {self.pos} of {len(self.buf)}")
        return start

    def unpack(self, fmt: str) -> Any:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)[0]

    def raw(self, n: int) -> bytes:
        start = self.take(n)
        return bytes(self.buf[start : start + n])

    def value(self) -> Any:  # noqa: C901 (one branch per msgpack type byte)
        b = self.buf[self.take(1)]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F)
        if 0x90 <= b <= 0x9F:
            return [self.value() for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self.raw(b & 0x1F).decode()
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        sizes = {0xC4: "B", 0xC5: ">H", 0xC6: ">I"}
        if b in sizes:
            n = self.unpack(sizes[b])
            return _Bin(self.take(n), n)
        numbers = {0xCA: ">f", 0xCB: ">d", 0xCC: "B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}
        numbers.update({0xD0: "b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"})
        if b in numbers:
            return self.unpack(numbers[b])
        if b in (0xD9, 0xDA, 0xDB):
            return self.raw(self.unpack({0xD9: "B", 0xDA: ">H", 0xDB: ">I"}[b])).decode()
        if b in (0xDC, 0xDD):
            return [self.value() for _ in range(self.unpack(">H" if b == 0xDC else ">I"))]
        if b in (0xDE, 0xDF):
            return self.map(self.unpack(">H" if b == 0xDE else ">I"))
        if 0xD4 <= b <= 0xD8:
            return self.ext(1 << (b - 0xD4))
        if b in (0xC7, 0xC8, 0xC9):
            return self.ext(self.unpack({0xC7: "B", 0xC8: ">H", 0xC9: ">I"}[b]))
        raise MsgpackFormatError(f"byte 0x{b:02x} at offset {self.pos - 1} is not msgpack")

    def map(self, n: int) -> dict[Any, Any]:
        out = {}
        for _ in range(n):
            key = self.value()
            out[key] = self.value()
        return out

    def ext(self, n: int) -> Any:
        code = self.unpack("b")
        start = self.take(n)
        if code == _COMPLEX:
            inner = _Walker(memoryview(self.buf)[start : start + n])
            re, im = inner.value()
            return complex(re, im)
        if code not in (_NDARRAY, _NPSCALAR):
            raise MsgpackFormatError(f"unknown msgpack ext type {code} at offset {start}")
        inner = _Walker(memoryview(self.buf)[start : start + n])
        head = inner.value()
        if not (isinstance(head, list) and len(head) == 3 and isinstance(head[2], _Bin)):
            raise MsgpackFormatError(f"the array at offset {start} is not (shape, dtype, bytes)")
        shape, name, data = head
        if isinstance(name, _Bin):
            name = bytes(self.buf[start + name.offset : start + name.offset + name.size])
        dtype = _dtype(name.decode() if isinstance(name, bytes) else str(name))
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != data.size:
            raise MsgpackFormatError(f"the array at offset {start}: shape, dtype and size differ")
        return MsgpackArray(dtype, shape, ((start + data.offset, data.size),), code == _NPSCALAR)


def _unchunk(tree: Any) -> Any:
    """Chunked-array maps -> one :class:`MsgpackArray` (as ``flax.serialization``)."""
    if isinstance(tree, list):
        return [_unchunk(v) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if _CHUNKED not in tree:
        return {k: _unchunk(v) for k, v in tree.items()}
    try:
        shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
    except (KeyError, TypeError, ValueError) as e:
        raise MsgpackFormatError(f"a chunked array map is malformed ({e})") from e
    if not chunks or not all(isinstance(c, MsgpackArray) for c in chunks):
        raise MsgpackFormatError("a chunked array map holds no arrays")
    dtype = chunks[0].dtype
    segments = tuple(s for c in chunks for s in c.segments)
    if (
        any(c.dtype != dtype for c in chunks)
        or sum(n for _, n in segments) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ):
        raise MsgpackFormatError("a chunked array's chunks do not make its shape")
    return MsgpackArray(dtype, shape, segments)


def index_msgpack(path: Path) -> Any:
    """The tree of a flax msgpack file with every array replaced by a :class:`MsgpackArray`.

    Other leaves (numbers, strings, ``None``, complex) are decoded as
    ``flax.serialization.msgpack_restore`` decodes them; a ``bin`` leaf becomes ``bytes``.

    Raises:
      MsgpackFormatError: an empty, truncated or malformed file, or bytes after the
        document.

    Example:
      >>> index_msgpack(Path("expert.msgpack"))["dense"]["kernel"].shape
    """
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise MsgpackFormatError("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            walker = _Walker(buf)
            tree = walker.value()
            if walker.pos != len(buf):
                raise MsgpackFormatError(f"{len(buf) - walker.pos} extra bytes after the data")
            tree = _bin_leaves(tree, buf)
    return _unchunk(tree)


def _bin_leaves(tree: Any, buf: Any) -> Any:
    if isinstance(tree, _Bin):
        return bytes(buf[tree.offset : tree.offset + tree.size])
    if isinstance(tree, list):
        return [_bin_leaves(v, buf) for v in tree]
    if isinstance(tree, dict):
        return {k: _bin_leaves(v, buf) for k, v in tree.items()}
    return tree
