"""Orbax checkpoint directories <-> pytrees, through ``orbax.checkpoint.StandardCheckpointer``.

``StandardCheckpointer`` is the pytree checkpointer that the orbax docs recommend for a
single pytree; it saves asynchronously, so :func:`save_orbax` waits before renaming the
temporary directory onto the target (:func:`mergetheory.io.atomic.atomic_write_dir`).
:class:`OrbaxReader` reads a checkpoint one array at a time (partial restore of one leaf),
for the streaming pool readers of :mod:`mergetheory.io.pool`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.tree_util as jtu
import numpy as np

from .atomic import atomic_write_dir
from .common import CheckpointError, PathLike, check_finite_checkpoint, require_exists

__all__ = ["OrbaxReader", "load_orbax", "resolve_orbax_dir", "save_orbax"]

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


class OrbaxReader:
    """An orbax checkpoint read one array at a time (orbax partial restore).

    The checkpoint's metadata gives every leaf's name, shape and dtype without reading
    data; :meth:`get` restores ONE leaf as a NumPy array with
    ``ocp.args.PyTreeRestore(item, restore_args, partial_restore=True)``, where ``item``
    and ``restore_args`` hold that leaf alone (``None`` everywhere else), so only its
    bytes are read. Names are those of :func:`~mergetheory.io.checkpoints.load_checkpoint`
    (``.``-joined, ``nnx.State`` ``value`` wrappers removed:
    :func:`~mergetheory.io.flat.flat_leaf_names`).

    Args:
      path: an orbax checkpoint item, ``CheckpointManager`` root or step folder
        (:func:`resolve_orbax_dir`).
      step: the manager step (default the latest).

    Attributes:
      path: the item directory.  names: the flat tensor names.

    Raises:
      CheckpointError: a directory that is not an orbax checkpoint, unreadable metadata or
        data (naming the directory).

    Example:
      >>> r = OrbaxReader("ckpt/expert_00")
      >>> {n: r.shape(n) for n in r.names}
    """

    def __init__(self, path: PathLike, *, step: int | None = None) -> None:
        import orbax.checkpoint as ocp

        from .flat import flat_leaf_names

        self.path = resolve_orbax_dir(path, step=step)
        self._ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        try:
            tree = self._ckptr.metadata(self.path).item_metadata.tree
            leaves, self._treedef = jtu.tree_flatten(tree)
            numbered = jtu.tree_unflatten(self._treedef, list(range(len(leaves))))
            self._leaf = flat_leaf_names(numbered)
        except CheckpointError:
            raise
        except Exception as e:  # orbax raises many types
            self._corrupt(e)
        self._meta = leaves
        self.names = list(self._leaf)

    def _corrupt(self, e: Exception):
        raise CheckpointError(
            f"corrupt or unreadable orbax checkpoint {self.path}: {type(e).__name__}: {e}"
        ) from e

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of leaf ``name`` (from the metadata; a leaf without one, a string, is read)."""
        shape = getattr(self._meta[self._leaf[name]], "shape", None)
        return tuple(shape) if shape is not None else self.get(name).shape

    def dtype(self, name: str) -> np.dtype:
        """NumPy dtype of leaf ``name`` (from the metadata; a leaf without one is read)."""
        dtype = getattr(self._meta[self._leaf[name]], "dtype", None)
        return np.dtype(dtype) if dtype is not None else self.get(name).dtype

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Leaf ``name`` as a NumPy array (only its data is read), or its rows
        ``start:stop`` (the whole leaf is read, then sliced)."""
        import orbax.checkpoint as ocp

        if rows is not None:
            return self.get(name)[rows[0] : rows[1]]

        if name not in self._leaf:
            raise CheckpointError(f"orbax checkpoint {self.path} has no array {name!r}")
        k = self._leaf[name]
        one = [None] * len(self._meta)
        args = list(one)
        one[k] = self._meta[k]
        array = getattr(self._meta[k], "dtype", None) is not None
        args[k] = ocp.RestoreArgs(restore_type=np.ndarray) if array else ocp.RestoreArgs()
        try:
            out = self._ckptr.restore(
                self.path,
                args=ocp.args.PyTreeRestore(
                    item=jtu.tree_unflatten(self._treedef, one),
                    restore_args=jtu.tree_unflatten(self._treedef, args),
                    partial_restore=True,
                ),
            )
        except Exception as e:  # orbax raises many types
            self._corrupt(e)
        (leaf,) = [x for x in jtu.tree_leaves(out) if x is not None]
        return np.asarray(leaf)
