"""Where ``mergetheory merge`` writes: the output's format and a writer of one tensor at a time.

The format is the one ``--out``'s suffix names (``.npz``, ``.safetensors``, ``.msgpack``);
a name without one of these suffixes takes the inputs' format: an orbax checkpoint for
orbax inputs and, for the per-tensor merges of model folders, ``--config`` and
``--per-tensor``, a Hugging Face model folder otherwise (a msgpack or npz file needs its
suffix). Every writer takes the merged tensors one at a time in its :attr:`order`
(:class:`~mergetheory.io.common.TensorWriter`) and appears atomically:

* ``.safetensors``: :class:`~mergetheory.io.safetensors.SafetensorsWriter`;
* model folder: :class:`ModelFolderWriter` (``model.safetensors`` or shards with an index);
* ``.npz``: :class:`~mergetheory.io.npz.NpzWriter`;
* ``.msgpack``: :class:`~mergetheory.io.msgpack.MsgpackWriter` (readable by
  ``flax.serialization.msgpack_restore``);
* orbax: :class:`~mergetheory.io.orbax.OrbaxWriter` (groups of tensors, orbax's partial
  save).

Written in the inputs' own format, the output keeps their tree (``key_paths``: Flax
``value`` wrappers and key order included); in another format it takes the flat names.

Example:
  >>> fmt = output_format("merged.msgpack", "msgpack", folders=True)
  >>> writer = open_writer(fmt, "merged.msgpack", {"w": ((2,), np.float32)})
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .common import CliError

__all__ = [
    "OUT_SUFFIXES",
    "ModelFolderWriter",
    "check_out",
    "open_writer",
    "output_format",
    "shard_names",
    "write_all",
]

OUT_SUFFIXES = (".npz", ".safetensors", ".msgpack")
"""Output formats of ``--out`` chosen by suffix."""


def output_format(out: str, input_fmt: str | None, *, folders: bool) -> str:
    """``"npz"``, ``"safetensors"``, ``"msgpack"``, ``"orbax"`` or ``"hf"`` (a model folder).

    Args:
      out: ``--out``.
      input_fmt: the inputs' format (``DenseExpert.fmt``; ``None`` if unknown).
      folders: a per-tensor merge of model folders / ``--config`` / ``--per-tensor``,
        whose suffixless output is a model folder unless the inputs are orbax.

    Raises:
      CliError: a name without a known suffix where no folder format applies.
    """
    suffix = Path(out).suffix
    if suffix in OUT_SUFFIXES:
        return suffix[1:]
    if input_fmt == "orbax":
        return "orbax"
    if folders:
        return "hf"
    if Path(out).is_dir():
        raise CliError(f"--out {out}: is a directory, expected a file name")
    raise CliError(
        f"--out {out}: unknown output format {suffix or '(no suffix)'!r}; "
        f"use one of {', '.join(OUT_SUFFIXES)} (or a folder name, for orbax inputs)"
    )


def check_out(out: str, fmt: str) -> Path:
    """``--out`` checked before any merge: a file format is not a directory, an orbax
    output is a new folder, a model folder is not a file, and the place is writable."""
    path = Path(out)
    if fmt == "orbax" and path.exists():
        raise CliError(f"--out {out}: exists; an orbax output must be a new folder")
    if fmt == "hf" and path.exists() and not path.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    if fmt not in ("orbax", "hf") and path.is_dir():
        raise CliError(f"--out {out}: is a directory, expected a file name")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: cannot write in {parent}")
    if path.is_file() and not os.access(path, os.W_OK):
        raise CliError(f"--out {out}: the existing file is not writable")
    return path


def shard_names(spec: Mapping[str, tuple[Any, Any]], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of tensor names of at most ``max_bytes`` each (a larger tensor
    alone), in ``spec``'s order: the shards of a model folder."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, dtype) in spec.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


class ModelFolderWriter:
    """A Hugging Face model folder written tensor by tensor: ``model.safetensors``, or
    shards ``model-0000k-of-0000m.safetensors`` above ``max_shard_size`` bytes with
    ``model.safetensors.index.json``; ``config.json`` copied from ``config_from``. The
    folder appears atomically (an existing one is replaced).

    Attributes:
      path: the folder.  order: the names in writing order (``spec``'s).
      files: the shard file names.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        spec: Mapping[str, tuple[Any, Any]],
        *,
        max_shard_size: int,
        config_from: Path | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.spec = dict(spec)
        self.order = list(spec)
        self.shards = shard_names(spec, max_shard_size)
        num = len(self.shards)
        self.files = (
            ["model.safetensors"]
            if num == 1
            else [f"model-{k + 1:05d}-of-{num:05d}.safetensors" for k in range(num)]
        )
        self._config = config_from
        self._shard = self._left = 0
        self._writer: Any = None

    def __enter__(self) -> ModelFolderWriter:
        from ..io.atomic import atomic_dir

        self._ctx = atomic_dir(self.path)
        self._tmp = self._ctx.__enter__()
        self._tmp.mkdir(parents=True)
        if self._config is not None and self._config.is_file():
            shutil.copyfile(self._config, self._tmp / "config.json")
        return self

    def write(self, name: str, array: Any) -> None:
        """Write the next declared tensor (in :attr:`order`), opening the next shard."""
        from ..io.safetensors import SafetensorsWriter

        if self._left == 0:
            self._close(None)
            part = self.shards[self._shard]
            path = self._tmp / self.files[self._shard]
            self._writer = SafetensorsWriter(path, {n: self.spec[n] for n in part}).__enter__()
            self._shard, self._left = self._shard + 1, len(part)
        self._writer.write(name, array)
        self._left -= 1

    def _close(self, exc: BaseException | None) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.__exit__(type(exc) if exc else None, exc, None)

    def __exit__(self, *exc: Any) -> None:
        try:
            self._close(exc[1])
            if exc[0] is None:
                if self._shard != len(self.shards) or self._left:
                    raise CliError(f"{self.path}: not every declared tensor was written")
                if len(self.shards) > 1:
                    pairs = zip(self.files, self.shards, strict=True)
                    weight_map = {n: f for f, part in pairs for n in part}
                    total = sum(
                        int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
                        for s, d in self.spec.values()
                    )
                    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
                    text = json.dumps(index, indent=1)
                    (self._tmp / "model.safetensors.index.json").write_text(text)
        except BaseException as err:
            self._ctx.__exit__(type(err), err, None)
            raise
        self._ctx.__exit__(*exc)


def open_writer(
    fmt: str,
    out: str | os.PathLike,
    spec: Mapping[str, tuple[Any, Any]],
    key_paths: Mapping[str, tuple] | None = None,
    *,
    scalars: Mapping[str, str] | None = None,
    max_shard_size: int = 5 * 2**30,
    config_from: Path | None = None,
) -> Any:
    """The writer of ``fmt`` (:func:`output_format`) for ``spec`` ``{name: (shape, dtype)}``.

    ``key_paths`` place the names in a nested format's tree (msgpack, orbax, npz member
    names); ``scalars`` the 0-d tensors an input held as Python numbers / NumPy scalars,
    written so by msgpack and orbax (:class:`~mergetheory.io.common.TensorWriter`);
    model-folder options: ``max_shard_size``, ``config_from`` (a ``config.json``).
    """
    from ..io.msgpack import MsgpackWriter
    from ..io.npz import NpzWriter
    from ..io.orbax import OrbaxWriter
    from ..io.safetensors import SafetensorsWriter

    if fmt == "hf":
        return ModelFolderWriter(out, spec, max_shard_size=max_shard_size, config_from=config_from)
    if fmt == "safetensors":
        return SafetensorsWriter(out, spec)
    if fmt == "npz":
        return NpzWriter(out, spec, key_paths)
    return {"msgpack": MsgpackWriter, "orbax": OrbaxWriter}[fmt](out, spec, key_paths, scalars)


def write_all(writer: Any, tensors: Any, out: str) -> None:
    """Write ``(name, array)`` pairs with ``writer`` (in its order, one at a time; the
    previous array is dropped before the next is made); an OS error names ``--out``."""
    try:
        with writer:
            for name, arr in tensors:
                writer.write(name, arr)
                del arr  # not held while the next tensor is merged
    except OSError as exc:
        raise CliError(f"--out {out}: {exc.strerror or exc}") from None
