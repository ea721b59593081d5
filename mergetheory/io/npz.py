"""NumPy ``.npz`` archives of named arrays (task vectors, merged outputs), read safely.

The file's magic bytes are checked before ``np.load(..., allow_pickle=False)``, so a file
that is not a zip archive (or a single ``.npy`` array) gets an error saying what it is,
not NumPy's advice to enable pickle loading.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .common import (
    CheckpointError,
    PathLike,
    TensorWriter,
    check_finite_checkpoint,
    require_exists,
)

__all__ = ["NPY_ARRAY_NAME", "NpzReader", "NpzWriter", "load_npy", "load_npz", "save_npz"]

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_NPY_MAGIC = b"\x93NUMPY"

NPY_ARRAY_NAME = "array"
"""The name of the one array of a ``.npy`` expert read with ``--format npy``."""


def load_npy(path: PathLike, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Read a single ``.npy`` array as ``{NPY_ARRAY_NAME: array}`` (one expert, one tensor).

    Raises:
      CheckpointError: missing file, a directory, not an ``.npy`` file, object arrays,
        non-finite values.
    """
    path = Path(path).absolute()
    require_exists(path, kind=".npy file", is_dir=False)
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(_NPY_MAGIC):
        raise CheckpointError(f"{path}: cannot read as .npy (no NUMPY header)")
    try:
        flat = {NPY_ARRAY_NAME: np.asarray(np.load(path, allow_pickle=False))}
    except ValueError as e:
        if "pickle" in str(e):
            raise CheckpointError(f"{path}: holds an object (pickled) array; refused") from None
        raise CheckpointError(f"{path}: cannot read as .npy (corrupt: {e})") from e
    if check_finite:
        check_finite_checkpoint(flat, path)
    return flat


def load_npz(path: PathLike, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Read an ``.npz`` archive into a flat ``{name: np.ndarray}`` dict.

    Raises:
      CheckpointError: missing file, a directory, a single ``.npy`` array, a file that is
        not a zip archive, object (pickled) arrays, an empty archive, non-finite values.
    """
    path = Path(path).absolute()
    _check_npz_magic(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {k: np.asarray(data[k]) for k in data.files}
    except ValueError as e:  # object arrays: refused, never unpickled
        if "pickle" in str(e):
            raise CheckpointError(f"{path}: holds object (pickled) arrays; refused") from None
        raise CheckpointError(f"{path}: cannot read as .npz (corrupt: {e})") from e
    except Exception as e:  # zipfile.BadZipFile, OSError, ...
        raise CheckpointError(
            f"{path}: cannot read as .npz (corrupt: {type(e).__name__}: {e})"
        ) from e
    if not flat:
        raise CheckpointError(f"{path}: the .npz archive contains no arrays")
    if check_finite:
        check_finite_checkpoint(flat, path)
    return flat


def _check_npz_magic(path: Path) -> None:
    require_exists(path, kind=".npz file", is_dir=False)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(_NPY_MAGIC):
        raise CheckpointError(
            f"{path}: a single .npy array, not an .npz archive of named arrays "
            "(save with np.savez(path, name=array))"
        )
    if magic[:4] == _EMPTY_ZIP_MAGIC:
        raise CheckpointError(f"{path}: the .npz archive contains no arrays")
    if magic[:4] != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: cannot read as .npz (not a zip archive)")


def save_npz(path: PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write named arrays as an uncompressed ``.npz``, atomically."""
    path = Path(path).absolute()
    with atomic_write(path) as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


class NpzReader:
    """An ``.npz`` archive read one array at a time (for the streaming pool readers).

    Each member's ``.npy`` header is read when the archive is opened (names, shapes,
    dtypes; object arrays refused); :meth:`get` reads one member. Members stored without
    compression (``np.savez``) are read with a positioned read of their bytes, only the
    asked rows when ``rows`` is given; compressed ones (``np.savez_compressed``) are
    decompressed whole, then sliced. Names are those of
    :func:`~mergetheory.io.checkpoints.load_checkpoint` (Flax ``value`` wrappers removed).

    Raises:
      CheckpointError: missing file, a directory, a single ``.npy``, not a zip archive, a
        corrupt member, object arrays, an empty archive (naming the file).

    Example:
      >>> r = NpzReader("expert.npz")
      >>> {n: r.shape(n) for n in r.names}
    """

    def __init__(self, path: PathLike) -> None:
        from .flat import flat_leaf_names, leaf_key_paths, unflatten_tree

        self.path = Path(path).absolute()
        _check_npz_magic(self.path)
        fmt = np.lib.format
        self._members: dict[str, tuple[Any, ...]] = {}
        try:
            with zipfile.ZipFile(self.path) as zf:
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with zf.open(info) as f:
                        version = fmt.read_magic(f)
                        read = fmt.read_array_header_1_0 if version == (1, 0) else None
                        shape, fortran, dtype = (read or fmt.read_array_header_2_0)(f)
                        start = f.tell()
                    if dtype.hasobject:
                        raise CheckpointError(
                            f"{self.path}: holds object (pickled) arrays; refused"
                        )
                    offset = None
                    if info.compress_type == zipfile.ZIP_STORED and not fortran:
                        offset = self._data_offset(info) + start
                    key = info.filename[: -len(".npy")]
                    self._members[key] = (info.filename, tuple(shape), dtype, offset)
        except CheckpointError:
            raise
        except Exception as e:  # zipfile.BadZipFile, ValueError of a bad header, OSError
            raise CheckpointError(
                f"{self.path}: cannot read as .npz (corrupt: {type(e).__name__}: {e})"
            ) from e
        if not self._members:
            raise CheckpointError(f"{self.path}: the .npz archive contains no arrays")
        keys = list(self._members)
        numbered = unflatten_tree({k: i for i, k in enumerate(keys)})
        self._key = {n: keys[i] for n, i in flat_leaf_names(numbered).items()}
        self.key_paths = leaf_key_paths(numbered)
        self.names = list(self._key)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start (after its local file header)."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: member {info.filename!r} has a bad header")
        name_len, extra_len = np.frombuffer(head[26:30], "<u2")
        return info.header_offset + 30 + int(name_len) + int(extra_len)

    def _member(self, name: str) -> tuple[Any, ...]:
        if name not in self._key:
            raise CheckpointError(f".npz archive {self.path} has no array {name!r}")
        return self._members[self._key[name]]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of array ``name`` (from its header)."""
        return self._member(name)[1]

    def dtype(self, name: str) -> np.dtype:
        """NumPy dtype of array ``name`` (from its header)."""
        return self._member(name)[2]

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Array ``name`` as a fresh in-memory array, or its rows ``start:stop``."""
        member, shape, dtype, offset = self._member(name)
        if offset is None:  # compressed or Fortran order: the whole member, then the rows
            with zipfile.ZipFile(self.path) as zf, zf.open(member) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
            return arr if rows is None else arr[rows[0] : rows[1]].copy()
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if rows is not None:
            shape, offset = (
                (max(0, min(rows[1], shape[0]) - rows[0]), *shape[1:]),
                offset + rows[0] * row,
            )
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.zeros(shape, dtype)
        arr = np.fromfile(self.path, dtype=dtype, count=count, offset=offset)
        if arr.size != count:
            raise CheckpointError(f"{self.path}: array {name!r} is truncated")
        return arr.reshape(shape)


class NpzWriter(TensorWriter):
    """Write an ``.npz`` archive tensor by tensor (``np.savez``'s layout: one uncompressed
    ``NAME.npy`` member an array), atomically (:func:`~mergetheory.io.atomic.atomic_write`).

    The member names are the key paths joined by ``"."``.

    Example:
      >>> with NpzWriter("merged.npz", {"w": ((2, 3), np.float32)}) as w:
      ...     w.write("w", np.ones((2, 3), np.float32))
    """

    def __enter__(self) -> NpzWriter:
        self._ctx = atomic_write(self.path)
        self._zip = zipfile.ZipFile(self._ctx.__enter__(), "w", zipfile.ZIP_STORED, True)
        return self

    def write(self, name: str, array: Any) -> None:
        """Write the next declared tensor (in :attr:`order`)."""
        arr = self.check_next(name, array)
        member = ".".join(str(k) for k in self.key_paths[name]) + ".npy"
        with self._zip.open(member, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, arr, allow_pickle=False)

    def __exit__(self, *exc: Any) -> None:
        try:
            self._zip.close()
            if exc[0] is None:
                self.check_complete()
        except BaseException as err:
            self._ctx.__exit__(type(err), err, None)
            raise
        self._ctx.__exit__(*exc)
