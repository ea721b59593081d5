"""NumPy ``.npz`` archives of named arrays (task vectors, merged outputs), read safely.

The file's magic bytes are checked before ``np.load(..., allow_pickle=False)``, so a file
that is not a zip archive (or a single ``.npy`` array) gets an error saying what it is,
not NumPy's advice to enable pickle loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = ["NPY_ARRAY_NAME", "load_npy", "load_npz", "save_npz"]

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


def save_npz(path: PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write named arrays as an uncompressed ``.npz``, atomically."""
    path = Path(path).absolute()
    with atomic_write(path) as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return path
