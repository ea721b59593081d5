"""Orbax checkpoint directories <-> pytrees, through ``orbax.checkpoint.StandardCheckpointer``.

``StandardCheckpointer`` is the pytree checkpointer that the orbax docs recommend for a
single pytree; it saves asynchronously, so :func:`save_orbax` waits before renaming the
temporary directory onto the target (:func:`mergetheory.io.atomic.atomic_write_dir`).
:class:`OrbaxReader` reads a checkpoint one array at a time (partial restore of one leaf;
a block of rows through tensorstore), for the streaming pool readers of
:mod:`mergetheory.io.pool`; :class:`OrbaxWriter` writes one in groups of tensors (orbax's
partial save), for the streaming merge.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax.tree_util as jtu
import numpy as np

from .atomic import atomic_dir, atomic_write_dir
from .common import (
    CheckpointError,
    PathLike,
    TensorWriter,
    as_scalar,
    check_finite_checkpoint,
    require_exists,
)

__all__ = [
    "ORBAX_BATCH_BYTES",
    "OrbaxReader",
    "OrbaxWriter",
    "load_orbax",
    "resolve_orbax_dir",
    "save_orbax",
]

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
    bytes are read. ``get(name, rows)`` reads rows ``start:stop`` through tensorstore (the
    leaf's read spec from ``ocp.type_handlers.get_json_tspec_read``, then a slice read):
    only the storage chunks that hold those rows are read and decoded (orbax's default is
    one chunk per device shard, so a leaf saved from one device is decoded whole, inside
    tensorstore, and only the rows are returned). Names are those of
    :func:`~mergetheory.io.checkpoints.load_checkpoint` (``.``-joined, ``nnx.State``
    ``value`` wrappers removed: :func:`~mergetheory.io.flat.flat_leaf_names`);
    :attr:`key_paths` give each name's place in the checkpoint's own tree.

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

        from .flat import flat_leaf_names, leaf_key_paths

        self.path = resolve_orbax_dir(path, step=step)
        self._ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        self._store: tuple[str, Any] | None = None  # the last leaf opened with tensorstore
        try:
            item = self._ckptr.metadata(self.path).item_metadata
            self._zarr3 = bool(getattr(item, "use_zarr3", False))
            leaves, self._treedef = jtu.tree_flatten(item.tree)
            numbered = jtu.tree_unflatten(self._treedef, list(range(len(leaves))))
            self._leaf = flat_leaf_names(numbered)
            self.key_paths = leaf_key_paths(numbered)
        except CheckpointError:
            raise
        except Exception as e:  # orbax raises many types
            self._corrupt(e)
        self._meta = leaves
        self.names = list(self._leaf)
        # leaves saved from Python numbers (orbax's ScalarMetadata), restored as such
        scalar = [type(m).__name__ == "ScalarMetadata" for m in leaves]
        self.scalar_kinds = {n: "python" for n, i in self._leaf.items() if scalar[i]}

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

    def _rows(self, name: str, k: int, rows: tuple[int, int]) -> np.ndarray:
        """Rows ``start:stop`` of leaf ``k`` by a tensorstore slice read."""
        import orbax.checkpoint as ocp
        import tensorstore as ts
        from etils import epath

        if self._store is None or self._store[0] != name:
            handlers = ocp.type_handlers
            ocdbt = bool(handlers.is_ocdbt_checkpoint(self.path))
            context = handlers.get_ts_context(use_ocdbt=ocdbt)
            info = handlers.ParamInfo(
                name=self._meta[k].name,
                parent_dir=epath.Path(self.path),
                is_ocdbt_checkpoint=ocdbt,
                use_zarr3=self._zarr3,
                ts_context=context,
            )
            spec = handlers.get_json_tspec_read(info, use_ocdbt=ocdbt)
            self._store = (name, ts.open(spec, open=True, context=context).result())
        out = self._store[1][rows[0] : rows[1]].read().result()
        return np.asarray(out).astype(self.dtype(name), copy=False)

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Leaf ``name`` as a NumPy array (only its data is read), or its rows
        ``start:stop`` (a tensorstore slice read of the chunks holding them)."""
        import orbax.checkpoint as ocp

        if name not in self._leaf:
            raise CheckpointError(f"orbax checkpoint {self.path} has no array {name!r}")
        k = self._leaf[name]
        if rows is not None and getattr(self._meta[k], "shape", None):
            try:
                return self._rows(name, k, rows)
            except Exception as e:  # tensorstore / orbax raise many types
                self._corrupt(e)
        if rows is not None:
            return self.get(name)[rows[0] : rows[1]].copy()
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


ORBAX_BATCH_BYTES = 1 << 30
"""Bytes of merged tensors an :class:`OrbaxWriter` holds before it saves them (a group)."""


def _partial_save() -> Any:
    """orbax's partial save (``orbax.checkpoint.experimental.v1.partial``), or ``None``
    in orbax versions without it."""
    try:
        from orbax.checkpoint.experimental.v1 import partial
    except ImportError:  # older orbax
        return None
    return partial if hasattr(partial, "finalize") else None


class OrbaxWriter(TensorWriter):
    """Write an orbax checkpoint tensor by tensor, held in groups of at most
    :data:`ORBAX_BATCH_BYTES` (``batch_bytes``).

    orbax has no writer of one array at a time; its partial save
    (``orbax.checkpoint.experimental.v1.partial.save``, then ``finalize``) adds a group of
    leaves to a checkpoint in progress, each call costing more than the last (it reads
    the earlier groups' metadata), so the tensors are saved in groups: memory holds one
    group, not the model. The finalized item folder is moved to ``path`` (the layout of
    ``StandardCheckpointer``: restored by it, :func:`load_orbax` and
    :class:`OrbaxReader`), atomically (:func:`~mergetheory.io.atomic.atomic_dir`; orbax's
    own temporaries live inside ours). Where orbax has no partial save (older versions),
    the tree is held whole and saved once with ``StandardCheckpointer``.

    The tree is built from :attr:`key_paths` (an input's own structure, ``nnx.State``
    ``value`` wrappers included); a tensor declared a Python scalar (:attr:`scalars`) is
    saved as a Python number, as the input held it.

    Example:
      >>> with OrbaxWriter("merged_ckpt", {"dense.w": ((2, 3), np.float32)}) as w:
      ...     w.write("dense.w", np.ones((2, 3), np.float32))
    """

    def __init__(
        self,
        path: PathLike,
        spec: Any,
        key_paths: Any = None,
        scalars: Any = None,
        *,
        batch_bytes: int | None = None,
    ) -> None:
        super().__init__(path, spec, key_paths, scalars)
        self._partial = _partial_save()
        self.batch_bytes = ORBAX_BATCH_BYTES if batch_bytes is None else batch_bytes
        self.groups = 0
        self._batch: list[tuple[tuple[Any, ...], np.ndarray]] = []
        self._held = 0

    def __enter__(self) -> OrbaxWriter:
        if self.path.exists():
            raise CheckpointError(f"checkpoint already exists: {self.path}")
        self._ctx = atomic_dir(self.path)
        self._tmp = self._ctx.__enter__()
        self._tmp.mkdir()
        self._staging = self._tmp / "staging"
        return self

    def write(self, name: str, array: Any) -> None:
        """Take the next declared tensor (in :attr:`order`); save the group when full."""
        arr = self.check_next(name, array)
        self._batch.append((self.key_paths[name], as_scalar(arr, self.scalars.get(name))))
        self._held += arr.nbytes
        if self._partial is not None and self._held >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        from .flat import nest_key_paths

        if self._batch:
            self._partial.save(self._staging, nest_key_paths(self._batch))
            self.groups += 1
        self._batch, self._held = [], 0

    def _finish(self) -> None:
        self.check_complete()
        if self._partial is None:
            import orbax.checkpoint as ocp

            from .flat import nest_key_paths

            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(self._staging, nest_key_paths(self._batch))
                ckptr.wait_until_finished()
            self.groups, item = 1, self._staging
        else:
            self._flush()
            self._partial.finalize(self._staging)
            item = resolve_orbax_dir(self._staging)  # the finalized tree's item folder
        for child in item.iterdir():  # the item's files become the checkpoint's
            os.replace(child, self._tmp / child.name)
        shutil.rmtree(self._staging)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            try:
                self._finish()
            except BaseException as err:
                self._ctx.__exit__(type(err), err, None)
                raise
        self._batch = []
        self._ctx.__exit__(*exc)
