r"""A pool of experts on disk, read one tensor at a time, and the streaming Gram pass.

:func:`open_expert` opens any supported expert without reading its weights:

* a Hugging Face model folder (``config.json`` + ``model.safetensors``, or shards listed
  in ``model.safetensors.index.json``'s ``weight_map``) or a ``.safetensors`` file: a
  :class:`DenseExpert` over lazy :class:`~mergetheory.io.safetensors.SafetensorsReader`
  files, read lazily tensor by tensor;
* a PEFT adapter folder (``adapter_config.json``): a :class:`LoraExpert` (factors stay
  factored; adapters are small and are read whole);
* an orbax checkpoint (item, ``CheckpointManager`` root or step folder): a
  :class:`DenseExpert` over an :class:`~mergetheory.io.orbax.OrbaxReader` (one leaf
  restored at a time, orbax partial restore);
* a flax ``.msgpack`` file: a :class:`DenseExpert` over a
  :class:`~mergetheory.io.msgpack.MsgpackReader` (the file indexed once, one array's bytes
  read at a time);
* an ``.npz`` archive: a :class:`DenseExpert` over an
  :class:`~mergetheory.io.npz.NpzReader` (one member read at a time);
* anything else :func:`~mergetheory.io.checkpoints.load_checkpoint` reads (npy, an npz
  under another suffix): loaded whole, then served tensor by tensor.

:class:`TaskVectorTensors` serves the pool's task vectors one stacked tensor at a time;
:func:`stream_pool_statistics` makes one pass over them, holding the ``n`` experts' (and
the base's) copy of ONE tensor at a time, and accumulates the Gram matrix
:math:`G = \sum_{\text{tensors}} X X^\top` of the task vectors, the opposite-sign counts
:math:`C_{ij} = \#\{k : \tau_{ik}\tau_{jk} < 0\}` (from :math:`S = \mathrm{sign}(X)`:
:math:`C = (|S||S|^\top - S S^\top)/2`) and the number of coordinates; LoRA pools get
their Gram from the factors (:func:`mergetheory.lora.lora_gram_matrix`) and their sign
counts from one module's dense updates at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import jax.tree_util as jtu
import numpy as np

from .._types import is_lora_factors
from .checkpoints import load_checkpoint
from .common import CheckpointError, PathLike, require_exists
from .flat import flatten_tree
from .msgpack import MsgpackReader
from .npz import NpzReader
from .orbax import OrbaxReader
from .peft import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, load_peft_adapter, stack_peft_adapters
from .safetensors import SafetensorsReader
from .stack import TensorStack, block_bounds

__all__ = [
    "EXPERT_FORMATS",
    "HF_INDEX_NAME",
    "HF_WEIGHTS_NAME",
    "DenseExpert",
    "LoraExpert",
    "PoolStatistics",
    "TaskVectorTensors",
    "TensorReader",
    "check_same_tensors",
    "file_fingerprint",
    "open_expert",
    "stream_pool_statistics",
]

HF_WEIGHTS_NAME = "model.safetensors"
HF_INDEX_NAME = "model.safetensors.index.json"


def file_fingerprint(path: PathLike, chunk: int = 1 << 20) -> str:
    """``sha256`` of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class TensorReader(Protocol):
    """What a lazy checkpoint reader offers (:class:`~mergetheory.io.safetensors.SafetensorsReader`,
    :class:`~mergetheory.io.orbax.OrbaxReader`, :class:`~mergetheory.io.msgpack.MsgpackReader`,
    :class:`~mergetheory.io.npz.NpzReader`)."""

    path: Path
    names: list[str]

    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> np.dtype: ...
    def get(self, name: str) -> np.ndarray: ...


class DenseExpert:
    """A dense model (or task vector) served one named tensor at a time.

    Attributes:
      path: what was opened.
      files: the files holding the weights (for fingerprints).
      names: tensor names, sorted.
      fmt: the format it was read as (one of :data:`EXPERT_FORMATS`; ``None`` if unknown).
    """

    def __init__(
        self,
        path: Path,
        readers: dict[str, TensorReader] | None,
        arrays=None,
        *,
        fmt: str | None = None,
    ):
        self.path = path
        self.fmt = fmt
        self._readers = readers or {}
        self._arrays = arrays or {}
        self.names = sorted(self._readers or self._arrays)
        where = {r.path for r in self._readers.values()} or {path}
        files = {f for p in where for f in (p.rglob("*") if p.is_dir() else [p])}
        self.files = sorted(f for f in files if f.is_file())

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` without reading it (safetensors)."""
        return self._readers[name].shape(name) if self._readers else self._arrays[name].shape

    def dtype(self, name: str) -> np.dtype:
        """Dtype of tensor ``name``."""
        return self._readers[name].dtype(name) if self._readers else self._arrays[name].dtype

    def key_path(self, name: str) -> tuple:
        """Where tensor ``name`` sits in its file's own tree (the reader's ``key_paths``,
        Flax ``value`` wrappers kept; else the name split on ``"."``)."""
        paths = getattr(self._readers.get(name), "key_paths", None)
        return tuple(paths[name]) if paths else tuple(name.split("."))

    def scalar_kind(self, name: str) -> str | None:
        """``"python"`` / ``"numpy"`` when tensor ``name`` is held in its file as a Python
        number / NumPy scalar (the reader's ``scalar_kinds``), else ``None``."""
        return getattr(self._readers.get(name), "scalar_kinds", {}).get(name)

    @property
    def lazy(self) -> bool:
        """Tensors are read from safetensors files on :meth:`get` (not held in memory)."""
        return bool(self._readers)

    def get(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Tensor ``name``, or its rows ``start:stop`` (only those bytes are read from a
        safetensors file)."""
        if self._readers:
            return self._readers[name].get(name, rows)
        arr = self._arrays[name]
        return arr if rows is None else arr[rows[0] : rows[1]]


class LoraExpert(NamedTuple):
    """A PEFT adapter: factored, already a delta (no base needed)."""

    path: Path
    files: list[Path]


def _sharded(path: Path) -> dict[str, SafetensorsReader]:
    index = path / HF_INDEX_NAME
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e})") from e
    shards = {f: SafetensorsReader(path / f) for f in sorted(set(weight_map.values()))}
    readers = {}
    for name, shard in weight_map.items():
        if name not in shards[shard].names:
            raise CheckpointError(f"{index}: {name!r} is mapped to {shard}, which lacks it")
        readers[name] = shards[shard]
    return readers


EXPERT_FORMATS = ("npz", "npy", "safetensors", "hf", "peft", "orbax", "msgpack")
"""The formats :func:`open_expert` reads (``fmt=`` / ``--format`` forces one)."""


def open_expert(
    path: PathLike, *, step: int | None = None, fmt: str | None = None
) -> DenseExpert | LoraExpert:
    """Open one expert (or base) without reading its weights; the format from the path.

    Args:
      path: a file or folder.
      step: orbax ``CheckpointManager`` step (default the latest).
      fmt: one of :data:`EXPERT_FORMATS` to force the format (``"hf"``: a model folder,
        ``"peft"``: an adapter folder, ``"safetensors"``: a file of any suffix or a model
        folder, the rest as :func:`~mergetheory.io.checkpoints.load_checkpoint`);
        ``None`` detects it.

    Raises:
      CheckpointError: missing / corrupt files, an unknown ``fmt``, a path that is not of
        the forced format (naming the file).
    """
    path = Path(path).absolute()
    require_exists(path, kind="expert", is_dir=None)
    if fmt is not None and fmt not in EXPERT_FORMATS:
        raise CheckpointError(
            f"{path}: unknown format {fmt!r}; expected one of {', '.join(EXPERT_FORMATS)}"
        )
    folder = path.is_dir()
    if fmt == "hf" and not folder:
        raise CheckpointError(f"{path}: format hf expects a model folder")
    if fmt == "peft" or (fmt is None and folder and (path / PEFT_CONFIG_NAME).is_file()):
        if not (folder and (path / PEFT_CONFIG_NAME).is_file()):
            raise CheckpointError(f"{path}: format peft expects a folder with {PEFT_CONFIG_NAME}")
        return LoraExpert(path, [path / PEFT_CONFIG_NAME, path / PEFT_WEIGHTS_NAME])
    if fmt in (None, "hf", "safetensors"):
        if folder and (path / HF_INDEX_NAME).is_file():
            return DenseExpert(path, _sharded(path), fmt="hf")
        single = path / HF_WEIGHTS_NAME if folder else path
        if single.is_file() and (single.suffix == ".safetensors" or fmt is not None):
            reader = SafetensorsReader(single)
            kind = "hf" if folder else "safetensors"
            return DenseExpert(path, dict.fromkeys(reader.names, reader), fmt=kind)
        if fmt is not None:
            raise CheckpointError(
                f"{path}: format {fmt} expects a folder with {HF_WEIGHTS_NAME} or {HF_INDEX_NAME}"
            )
    if fmt in (None, "orbax") and folder:
        orbax = OrbaxReader(path, step=step)
        return DenseExpert(path, dict.fromkeys(orbax.names, orbax), fmt="orbax")
    if (fmt == "msgpack" or (fmt is None and path.suffix == ".msgpack")) and not folder:
        packed = MsgpackReader(path)
        return DenseExpert(path, dict.fromkeys(packed.names, packed), fmt="msgpack")
    if (fmt == "npz" or (fmt is None and path.suffix == ".npz")) and not folder:
        archive = NpzReader(path)
        return DenseExpert(path, dict.fromkeys(archive.names, archive), fmt="npz")
    arrays = flatten_tree(load_checkpoint(path, check_finite=False, step=step, fmt=fmt))
    return DenseExpert(path, None, arrays, fmt=fmt or "npz")


class PoolStatistics(NamedTuple):
    """What one streaming pass over a pool gives.

    Attributes:
      gram: ``[n, n]`` Gram matrix of the task vectors (float64).
      opposite: ``[n, n]`` counts of coordinates where two task vectors have opposite signs.
      num_params: ``D``, the number of coordinates.
      factored: the pool is LoRA adapters (Gram from the factors).
    """

    gram: np.ndarray
    opposite: np.ndarray
    num_params: int
    factored: bool


SIGN_BLOCK = 1 << 20
"""Columns per block of the sign counts (float32 signs: 4 MB per expert and block)."""


def _accumulate(x: TensorStack, gram: np.ndarray, opp: np.ndarray) -> None:
    for xb in x.blocks():  # one block for a tensor of at most GRAM_BLOCK entries
        gram += xb @ xb.T
        # counts of opposite signs, by column blocks of float32 signs: each block's products
        # are integers below 2**24, exact in float32, so the float64 sum is exact (any order)
        for lo in range(0, xb.shape[1], SIGN_BLOCK):
            s = np.sign(xb[:, lo : lo + SIGN_BLOCK]).astype(np.float32)
            a = np.abs(s)
            opp += (a @ a.T - s @ s.T).astype(np.float64) / 2


def check_same_tensors(ref: DenseExpert, ex: DenseExpert) -> None:
    """Raise unless ``ex`` has ``ref``'s tensor names and shapes, all floating."""
    if ex.names != ref.names:
        diff = sorted(set(ex.names) ^ set(ref.names))
        raise CheckpointError(f"{ex.path}: tensor {diff[0]!r} is not in both {ref.path} and it")
    for name in ref.names:
        if ex.shape(name) != ref.shape(name):
            raise CheckpointError(
                f"{ex.path}: tensor {name!r} has shape {ex.shape(name)}, "
                f"but {ref.path} has {ref.shape(name)}"
            )
        import jax.numpy as jnp

        if not jnp.issubdtype(ex.dtype(name), jnp.floating):
            raise CheckpointError(f"{ex.path}: tensor {name!r} has dtype {ex.dtype(name)}")


class TaskVectorTensors:
    r"""The pool's task vectors, one stacked tensor ``[n, ...]`` (float64) at a time.

    Iterating yields ``(name, x)``, ``x`` a :class:`~mergetheory.io.stack.TensorStack`:
    for dense experts :math:`\theta_t - \theta_0` of one tensor name, held as float64
    ``[n, ...]`` (the base's and one expert's copy of that tensor besides it in memory)
    when it has at most :data:`~mergetheory.io.stack.GRAM_BLOCK` entries, else read by
    row blocks of every expert or one expert whole at a time; for PEFT adapters one
    module's dense update :math:`s B A` per adapter, held (adapters are small: their
    factors are loaded whole and stacked, :attr:`factors`).

    Attributes:
      factored: the pool is PEFT adapters.
      factors: the stacked :class:`~mergetheory.lora.LoraFactors` (``None`` for dense pools).
      names: the tensor (dense) or module (PEFT) names, in iteration order.

    Raises:
      CheckpointError: an empty pool, mixed kinds, a base with PEFT adapters, names / shapes
        that differ, non-floating tensors; NaN / Inf (when iterating, naming the tensor).
    """

    def __init__(
        self, experts: Sequence[DenseExpert | LoraExpert], base: DenseExpert | None = None
    ):
        if len(experts) == 0:
            raise CheckpointError("the pool has no experts")
        lora = [isinstance(e, LoraExpert) for e in experts]
        if any(lora) and not all(lora):
            raise CheckpointError("the pool mixes PEFT adapters and dense models")
        self.experts, self.base, self.factored = list(experts), base, all(lora)
        self.factors = None
        if self.factored:
            if base is not None:
                raise CheckpointError(f"{base.path}: PEFT adapters are deltas; drop --base")
            self.factors = stack_peft_adapters([load_peft_adapter(e.path) for e in experts])
            flat = jtu.tree_flatten_with_path(self.factors, is_leaf=is_lora_factors)[0]
            self._modules = [(jtu.keystr(tuple(p)), f) for p, f in flat]
            self.names = [name for name, _ in self._modules]
            return
        ref = base if base is not None else experts[0]
        for ex in experts if base is None else [base, *experts]:
            check_same_tensors(ref, ex)
        self.names = list(ref.names)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, TensorStack]]:
        if self.factored:
            for name, f in self._modules:
                b, a = np.asarray(f.B, np.float64), np.asarray(f.A, np.float64)
                x = np.asarray(f.scaling, np.float64)[:, None, None] * (b @ a)
                yield name, TensorStack(name, x)
            return
        for name in self.names:
            shape = self.experts[0].shape(name)
            if len(block_bounds(shape)) > 1:  # large: read by row blocks / one expert at a time
                yield name, TensorStack(name, experts=self.experts, base=self.base, shape=shape)
                continue
            theta0 = self.base.get(name).astype(np.float64) if self.base is not None else 0.0
            x = np.empty((len(self.experts), *shape))
            for i, e in enumerate(self.experts):  # one expert's copy at a time
                np.subtract(e.get(name), theta0, out=x[i, ...], dtype=np.float64)
                if not np.isfinite(x[i]).all():
                    raise CheckpointError(f"tensor {name!r}: NaN / Inf in the pool's task vectors")
            yield name, TensorStack(name, x)


def stream_pool_statistics(
    experts: Sequence[DenseExpert | LoraExpert],
    base: DenseExpert | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    visit: Callable[[int, str, TensorStack], None] | None = None,
) -> PoolStatistics:
    r"""One pass over the pool: Gram, opposite-sign counts and ``D`` of :math:`\tau_t`.

    Dense experts are read one tensor name at a time (``n`` + 1 copies of one tensor in
    memory, :class:`TaskVectorTensors`); ``base`` is subtracted when given. LoRA adapters
    are deltas already; their Gram comes from the factors.

    Args:
      experts: from :func:`open_expert`, all dense or all LoRA.
      base: the base model (dense pools only).
      progress: ``fn(stage, done, total)`` called after each tensor / module.
      visit: ``fn(t, name, x)`` called with every tensor (module) ``t`` of the pass and
        its ``[n, ...]`` task vectors ``x`` (a :class:`~mergetheory.io.stack.TensorStack`),
        so that other per-tensor statistics share this pass (``analyze``'s coverage
        comparison does; a tensor above ``GRAM_BLOCK`` entries is read again, one expert
        at a time, by :meth:`~mergetheory.io.stack.TensorStack.row`).

    Raises:
      CheckpointError: mixed kinds, names / shapes that differ, non-floating tensors.
    """
    from ..lora import lora_gram_matrix

    tensors = TaskVectorTensors(experts, base)
    n = len(experts)
    gram = np.zeros((n, n))
    opp = np.zeros((n, n))
    stage = "modules" if tensors.factored else "tensors"
    size = 0
    for i, (name, x) in enumerate(tensors):
        # LoRA: sign counts only (the Gram comes from the factors below)
        _accumulate(x, np.zeros((n, n)) if tensors.factored else gram, opp)
        size += x.size
        if visit:
            visit(i, name, x)
        if progress:
            progress(stage, i + 1, len(tensors))
    if tensors.factored:
        # float64 accumulation (under x64) whatever the adapters' dtype (bf16 usually)
        wide = jtu.tree_map(lambda x: np.asarray(x, np.float64), tensors.factors)
        gram = np.asarray(lora_gram_matrix(wide), np.float64)
    return PoolStatistics(gram, opp, size, tensors.factored)
