"""Orbax checkpoint directories <-> pytrees, through ``orbax.checkpoint.StandardCheckpointer``.

``StandardCheckpointer`` is the pytree checkpointer that the orbax docs recommend for a
single pytree; it saves asynchronously, so :func:`save_orbax` waits before renaming the
temporary directory onto the target (:func:`mergetheory.io.atomic.atomic_write_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.tree_util as jtu

from .atomic import atomic_write_dir
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = ["load_orbax", "resolve_orbax_dir", "save_orbax"]

_ITEM_MARKER = "_METADATA"


def resolve_orbax_dir(path: PathLike, *, step: int | None = None) -> Path:
    """The item directory of an orbax checkpoint, a ``CheckpointManager`` root or step folder.

    * a directory holding ``_METADATA`` is a checkpoint item: returned as is;
    * a ``CheckpointManager`` root (numeric step folders ``0/``, ``1/``, ...): the folder of
      ``step`` (default: the latest), then as below;
    * a step folder holding one item folder (``default/``, ``state/``, ...): that item.

    Raises:
      CheckpointError: no such step (listing those present), several items in a step
        folder, or a directory that is none of the above.
    """
    path = Path(path).absolute()
    require_exists(path, kind="orbax checkpoint directory", is_dir=True)
    if (path / _ITEM_MARKER).is_file():
        if step is not None:
            raise CheckpointError(f"{path} is a single orbax checkpoint: --step {step} is not used")
        return path
    steps = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if steps:
        chosen = steps[-1] if step is None else step
        if chosen not in steps:
            raise CheckpointError(
                f"orbax CheckpointManager {path} has no step {chosen} (steps: {steps})"
            )
        path = path / str(chosen)
    elif step is not None:
        raise CheckpointError(f"{path} is not an orbax CheckpointManager root: no step folders")
    items = sorted(p for p in path.iterdir() if p.is_dir() and (p / _ITEM_MARKER).is_file())
    if len(items) == 1:
        return items[0]
    if len(items) > 1:
        names = ", ".join(p.name for p in items)
        raise CheckpointError(f"orbax step folder {path} holds several items ({names}): pass one")
    raise CheckpointError(
        f"{path}: a directory but not an orbax checkpoint (no {_ITEM_MARKER} file, no step "
        "folders, no item folder)"
    )


def save_orbax(path: PathLike, tree: Any, *, overwrite: bool = False) -> Path:
    """Save a pytree of arrays as an orbax checkpoint directory, atomically.

    Orbax writes into a temporary sibling directory which is renamed onto ``path`` once the
    (asynchronous) save has finished.

    Args:
      path: target directory (must not exist unless ``overwrite``).
      tree: pytree of arrays (e.g. flax params as a pure dict).
      overwrite: replace an existing checkpoint.

    Returns:
      The absolute path written.

    Example:
      >>> save_orbax("ckpt/base", {"w": np.zeros(3)})
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint already exists (pass overwrite=True): {path}")

    def write(tmp: Path) -> None:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, tree)
            ckptr.wait_until_finished()

    atomic_write_dir(path, write)
    return path


def load_orbax(
    path: PathLike, *, abstract_tree: Any = None, check_finite: bool = True, step: int | None = None
) -> Any:
    """Restore a pytree saved by :func:`save_orbax` (or any orbax StandardCheckpointer dir).

    A ``CheckpointManager`` root or step folder is read too (:func:`resolve_orbax_dir`).

    Args:
      path: checkpoint directory (item, manager root or step folder).
      step: the manager step to read (default: the latest).
      abstract_tree: optional pytree of ``jax.ShapeDtypeStruct`` (or arrays) fixing the
        structure, shapes and dtypes of the result (orbax's recommended way to restore).
      check_finite: raise on NaN / Inf.

    Returns:
      The restored pytree (``jax.Array`` leaves).

    Raises:
      CheckpointError: missing / corrupt directory, or non-finite values.
    """
    import orbax.checkpoint as ocp

    path = resolve_orbax_dir(path, step=step)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            if abstract_tree is None:
                tree = ckptr.restore(path)
            else:
                target = jtu.tree_map(ocp.utils.to_shape_dtype_struct, abstract_tree)
                tree = ckptr.restore(path, target)
    except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, ...)
        raise CheckpointError(
            f"corrupt or unreadable orbax checkpoint {path}: {type(e).__name__}: {e}"
        ) from e
    if check_finite:
        check_finite_checkpoint(tree, path)
    return tree
