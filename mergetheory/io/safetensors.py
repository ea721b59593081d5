"""Safetensors files <-> flat ``{name: array}`` dicts.

Nested pytrees go through :func:`mergetheory.io.flat.flatten_tree` /
:func:`~mergetheory.io.flat.unflatten_tree` with ``.``-joined names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = ["load_safetensors", "save_safetensors"]


def save_safetensors(
    path: PathLike, tensors: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a flat ``{name: array}`` dict as a safetensors file, atomically.

    Args:
      path: target file.
      tensors: flat mapping of names to arrays (use
        :func:`~mergetheory.io.flat.flatten_tree` for nested trees).
      metadata: optional string-to-string header metadata.

    Example:
      >>> save_safetensors("model.safetensors", {"dense.kernel": np.ones((2, 3))})
    """
    from safetensors.numpy import save

    path = Path(path).absolute()
    arrays = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise CheckpointError(f"safetensors names must be strings, got {k!r} for {path}")
        arrays[k] = np.ascontiguousarray(np.asarray(v))
    atomic_write_bytes(path, save(arrays, metadata=dict(metadata) if metadata else None))
    return path


def load_safetensors(path: PathLike, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Read a safetensors file into a flat ``{name: np.ndarray}`` dict.

    Raises:
      CheckpointError: missing / truncated / corrupt file, or non-finite values.
    """
    from safetensors.numpy import load

    path = Path(path).absolute()
    require_exists(path, kind="safetensors file", is_dir=False)
    try:
        flat = load(path.read_bytes())
    except Exception as e:  # safetensors_rust.SafetensorError and friends
        raise CheckpointError(
            f"corrupt or truncated safetensors file {path}: {type(e).__name__}: {e}"
        ) from e
    if check_finite:
        check_finite_checkpoint(flat, path)
    return flat
