"""What every checkpoint format shares: the error type, path checks, the finiteness check.

Everything that reads a file turns every failure into a :class:`CheckpointError` naming the
problem *and the file*: a missing file or directory, a corrupt / truncated file (the
library's own exception is chained as ``__cause__``), a tree whose structure, shapes or
dtypes differ from the base model's, or NaN / Inf values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..tree import TaskVectorError, check_finite

__all__ = [
    "SCALAR_KINDS",
    "CheckpointError",
    "PathLike",
    "TensorWriter",
    "as_scalar",
    "check_finite_checkpoint",
    "require_exists",
    "scalar_kind",
]

PathLike = str | os.PathLike


class CheckpointError(TaskVectorError):
    """A checkpoint could not be read, written, or does not match its base model.

    Subclass of :class:`mergetheory.tree.TaskVectorError` (hence of ``ValueError``), so code
    that guards the task-vector pipeline catches malformed checkpoints too. The message
    always names the file.
    """


def require_exists(path: Path, *, kind: str, is_dir: bool | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``path`` exists (and is a directory / a file).

    Args:
      path: the path to check.
      kind: what to call it in the message (``"safetensors file"``).
      is_dir: ``True``: must be a directory; ``False``: must be a file; ``None``: either.
    """
    if not path.exists():
        raise CheckpointError(f"{kind} not found: {path}")
    if is_dir is True and not path.is_dir():
        raise CheckpointError(f"{kind} must be a directory, got a file: {path}")
    if is_dir is False and path.is_dir():
        raise CheckpointError(f"{kind} must be a file, got a directory: {path}")


def check_finite_checkpoint(tree: Any, source: PathLike | str) -> None:
    """:func:`mergetheory.tree.check_finite` as a :class:`CheckpointError` naming ``source``.

    The message reads ``<source>: leaf <path>: <k> NaN and <l> Inf value(s) ...``.
    """
    try:
        check_finite(tree, name=f"{source}: leaf ")
    except TaskVectorError as err:
        raise CheckpointError(str(err)) from None


class TensorWriter:
    """What the writers of a checkpoint tensor by tensor share (declared spec, order).

    A writer is built from every tensor's name, shape and dtype (``spec``) before any data
    exists; :attr:`order` is the order in which :meth:`check_next` then accepts the
    tensors (the spec's, unless the format needs another, e.g. a depth-first walk of a
    nested tree). ``key_paths`` place each name in a nested format's tree (default: the
    name split on ``"."``), so that an output keeps its input's structure.

    ``scalars`` names the 0-d tensors that the input held as scalars, not arrays:
    ``"python"`` (a Python number) or ``"numpy"`` (a NumPy scalar); the nested formats that
    can store them (msgpack, orbax) write them so (:func:`as_scalar`), the others as 0-d
    arrays.

    Attributes:
      path: the target (absolute).  spec: ``{name: (shape, dtype)}``.
      key_paths: ``{name: tuple of keys}``.  order: the names in writing order.
      scalars: ``{name: "python" | "numpy"}``.
    """

    def __init__(
        self,
        path: PathLike,
        spec: Mapping[str, tuple[Sequence[int], Any]],
        key_paths: Mapping[str, Sequence[Any]] | None = None,
        scalars: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.spec = {
            n: (tuple(int(s) for s in shape), np.dtype(d)) for n, (shape, d) in spec.items()
        }
        self.key_paths = {
            n: tuple(key_paths[n]) if key_paths is not None else tuple(n.split("."))
            for n in self.spec
        }
        self.order = list(self.spec)
        self.written = 0
        self.scalars = {n: k for n, k in (scalars or {}).items() if self.spec[n][0] == ()}

    def check_next(self, name: str, array: Any) -> np.ndarray:
        """``array`` as NumPy, if it is the next declared tensor (name, shape, dtype)."""
        if self.written >= len(self.order):
            raise CheckpointError(f"{self.path}: {name!r} was not declared (all written)")
        want = self.order[self.written]
        shape, dtype = self.spec[want]
        arr = np.asarray(array)
        if name != want or arr.shape != shape or arr.dtype != dtype:
            raise CheckpointError(
                f"{self.path}: expected tensor {want!r} {shape} {dtype} next, "
                f"got {name!r} {arr.shape} {arr.dtype}"
            )
        self.written += 1
        return arr

    def check_complete(self) -> None:
        """Raise unless every declared tensor was written."""
        if self.written != len(self.order):
            missing = self.order[self.written]
            raise CheckpointError(f"{self.path}: tensor {missing!r} was declared, not written")


SCALAR_KINDS = ("python", "numpy")
"""How a checkpoint may hold a 0-d leaf besides an array (:class:`TensorWriter`)."""


def as_scalar(arr: np.ndarray, kind: str | None) -> Any:
    """The 0-d ``arr`` as the input held it: a Python number (``"python"``), a NumPy
    scalar (``"numpy"``), else ``arr``."""
    if kind == "python":
        return arr.item()
    if kind == "numpy":
        return arr[()]
    return arr


def scalar_kind(value: Any) -> str | None:
    """``"python"`` for a Python int / float, ``"numpy"`` for a NumPy scalar, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "python"
    return "numpy" if isinstance(value, np.generic) else None
