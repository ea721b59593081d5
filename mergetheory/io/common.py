"""What every checkpoint format shares: the error type, path checks, the finiteness check.

Everything that reads a file turns every failure into a :class:`CheckpointError` naming the
problem *and the file*: a missing file or directory, a corrupt / truncated file (the
library's own exception is chained as ``__cause__``), a tree whose structure, shapes or
dtypes differ from the base model's, or NaN / Inf values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..tree import TaskVectorError, check_finite

__all__ = ["CheckpointError", "PathLike", "check_finite_checkpoint", "require_exists"]

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
