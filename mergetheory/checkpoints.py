r"""Checkpoints <-> pytrees: orbax, flax msgpack, safetensors and PEFT LoRA adapters, validated.

Everything that reads a file turns every failure into a :class:`CheckpointError` naming the
problem *and the file*: a missing file or directory, a corrupt / truncated file (the
library's own exception is chained as ``__cause__``), a tree whose structure, shapes or
dtypes differ from the base model's, or NaN / Inf values. Every write is atomic: the data
go to a temporary sibling (``.<name>.tmp-<random>``) that is renamed onto the target only
once complete, so a crash never leaves a half-written checkpoint under the real name.

Formats:

* **orbax** (a directory): :func:`save_orbax` / :func:`load_orbax`, through
  ``orbax.checkpoint.StandardCheckpointer`` (the pytree checkpointer that the orbax docs
  recommend for a single pytree; it saves asynchronously, so we wait before renaming).
* **flax msgpack** (a ``.msgpack`` file): :func:`save_msgpack` / :func:`load_msgpack`,
  through ``flax.serialization.to_bytes`` / ``msgpack_restore``.
* **safetensors** (a ``.safetensors`` file of a flat ``{name: array}`` dict):
  :func:`save_safetensors` / :func:`load_safetensors`; nested pytrees go through
  :func:`flatten_tree` / :func:`unflatten_tree` with ``.``-joined names.
* **PEFT LoRA adapters** (a directory holding ``adapter_model.safetensors`` and
  ``adapter_config.json``): :func:`load_peft_adapter` returns the per-module factors
  :class:`mergetheory.lora.LoraFactors` ``(B [d_out, r], A [r, d_in], s)`` with PEFT's
  scaling :math:`s = \alpha / r` (rsLoRA: :math:`s = \alpha / \sqrt{r}`), so that the dense
  update of a module is :math:`\Delta W = s\, B A`; :func:`stack_peft_adapters` stacks
  ``T`` adapters into the ``[T, ...]`` factored expert set that
  :func:`mergetheory.lora.lora_gram_matrix` takes. :func:`save_peft_adapter` writes the
  same layout (used by the tests to build fake adapters).

Task vectors: :func:`task_vectors_from_checkpoints` loads a base model and ``T`` experts
(paths in any of the formats above, or in-memory pytrees) and returns
:math:`\tau_t = \theta_t - \theta_0` stacked as ``[T, ...]``, after a fail-fast *lineage
check*: every expert must have exactly the base's tree structure, leaf shapes and dtypes;
the error names the first mismatching leaf path and the expert's file.

Reference: Hu et al., "LoRA" (``hu2022lora``); Kalajdzievski, "rsLoRA" (``kalajdzievski2023rslora``)
in ``paper/refs.bib``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._types import TaskVectors, is_lora_factors
from .lora import LoraFactors
from .tree import TaskVectorError, leaf_paths

__all__ = [
    "CheckpointError",
    "PeftAdapter",
    "flatten_tree",
    "load_checkpoint",
    "load_msgpack",
    "load_orbax",
    "load_peft_adapter",
    "load_safetensors",
    "peft_dense_update",
    "save_msgpack",
    "save_orbax",
    "save_peft_adapter",
    "save_safetensors",
    "stack_peft_adapters",
    "task_vectors_from_checkpoints",
    "unflatten_tree",
    "validate_lineage",
]

PathLike = str | os.PathLike

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


class CheckpointError(TaskVectorError):
    """A checkpoint could not be read, written, or does not match its base model.

    Subclass of :class:`mergetheory.tree.TaskVectorError` (hence of ``ValueError``), so code
    that guards the task-vector pipeline catches malformed checkpoints too. The message
    always names the file.
    """


# --------------------------------------------------------------------------------------
# helpers: paths, atomic writes, value checks
# --------------------------------------------------------------------------------------


def _require_exists(path: Path, *, kind: str, is_dir: bool | None = None) -> None:
    if not path.exists():
        raise CheckpointError(f"{kind} not found: {path}")
    if is_dir is True and not path.is_dir():
        raise CheckpointError(f"{kind} must be a directory, got a file: {path}")
    if is_dir is False and path.is_dir():
        raise CheckpointError(f"{kind} must be a file, got a directory: {path}")


def _tmp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write_dir(path: Path, write_fn: Callable[[Path], None], *, overwrite: bool) -> None:
    """Run ``write_fn(tmp_dir)`` then rename ``tmp_dir`` onto ``path``.

    If ``path`` exists and ``overwrite`` is True, the old directory is first moved aside
    (another atomic rename) and deleted only after the new one is in place.
    """
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint already exists (pass overwrite=True): {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        write_fn(tmp)
        old = None
        if path.exists():
            old = _tmp_sibling(path)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_finite_tree(tree: Any, source: PathLike | str) -> None:
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if not jnp.issubdtype(arr.dtype, jnp.inexact):
            continue
        if not np.issubdtype(arr.dtype, np.inexact):  # ml_dtypes (bfloat16, float8, ...)
            arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            p = jtu.keystr(tuple(path)) or "<root>"
            raise CheckpointError(
                f"{source}: leaf {p} holds {int(np.isnan(arr).sum())} NaN and "
                f"{int(np.isinf(arr).sum())} Inf value(s)"
            )


def _to_numpy_tree(tree: Any) -> Any:
    return jtu.tree_map(np.asarray, tree)


# --------------------------------------------------------------------------------------
# flat <-> nested names
# --------------------------------------------------------------------------------------


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_tree(tree: Any, *, sep: str = ".") -> dict[str, np.ndarray]:
    """Flatten a nested pytree to ``{"a.b.c": array}`` (the safetensors layout).

    Args:
      tree: nested dicts / lists / tuples of arrays.
      sep: the separator joining key-path parts.

    Returns:
      A flat dict of NumPy arrays, in flatten order.

    Raises:
      CheckpointError: if a key contains ``sep`` (the flattening would not invert) or two
        leaves get the same name.
    """
    out: dict[str, np.ndarray] = {}
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        parts = [_key_name(k) for k in path]
        for p in parts:
            if sep in p or p == "":
                raise CheckpointError(
                    f"cannot flatten key {p!r}: it is empty or contains the separator {sep!r}"
                )
        name = sep.join(parts) if parts else "<root>"
        if name in out:
            raise CheckpointError(f"two leaves flatten to the same name {name!r}")
        out[name] = np.asarray(leaf)
    return out


def unflatten_tree(flat: Mapping[str, Any], *, sep: str = ".") -> dict[str, Any]:
    """Invert :func:`flatten_tree` into nested dicts (keys stay strings).

    Raises:
      CheckpointError: if one name is a prefix of another (``"a"`` and ``"a.b"``).
    """
    out: dict[str, Any] = {}
    for name in sorted(flat):
        node = out
        parts = name.split(sep)
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise CheckpointError(f"name {name!r} nests under the array {p!r}")
            node = nxt
        if parts[-1] in node:
            raise CheckpointError(f"name {name!r} is both an array and a group")
        node[parts[-1]] = flat[name]
    return out


# --------------------------------------------------------------------------------------
# orbax
# --------------------------------------------------------------------------------------


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
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()

    def write(tmp: Path) -> None:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, tree)
            ckptr.wait_until_finished()

    _atomic_write_dir(path, write, overwrite=overwrite)
    return path


def load_orbax(path: PathLike, *, abstract_tree: Any = None, check_finite: bool = True) -> Any:
    """Restore a pytree saved by :func:`save_orbax` (or any orbax StandardCheckpointer dir).

    Args:
      path: checkpoint directory.
      abstract_tree: optional pytree of ``jax.ShapeDtypeStruct`` (or arrays) fixing the
        structure, shapes and dtypes of the result (orbax's recommended way to restore).
      check_finite: raise on NaN / Inf.

    Returns:
      The restored pytree (``jax.Array`` leaves).

    Raises:
      CheckpointError: missing / corrupt directory, or non-finite values.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    _require_exists(path, kind="orbax checkpoint directory", is_dir=True)
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
        _check_finite_tree(tree, path)
    return tree


# --------------------------------------------------------------------------------------
# flax msgpack
# --------------------------------------------------------------------------------------


def save_msgpack(path: PathLike, tree: Any) -> Path:
    """Save a pytree with ``flax.serialization.to_bytes`` (msgpack), atomically."""
    from flax import serialization

    path = Path(path).absolute()
    _atomic_write_bytes(path, serialization.to_bytes(_to_numpy_tree(tree)))
    return path


def load_msgpack(path: PathLike, *, check_finite: bool = True) -> Any:
    """Load a msgpack checkpoint as nested dicts of NumPy arrays (``msgpack_restore``).

    Raises:
      CheckpointError: missing / truncated / corrupt file, or non-finite values.
    """
    from flax import serialization

    path = Path(path).absolute()
    _require_exists(path, kind="msgpack checkpoint", is_dir=False)
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"corrupt msgpack checkpoint {path}: the file is empty")
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:
        raise CheckpointError(
            f"corrupt or truncated msgpack checkpoint {path}: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(tree, dict):
        raise CheckpointError(
            f"msgpack checkpoint {path} holds a {type(tree).__name__}, not a pytree of arrays"
        )
    if check_finite:
        _check_finite_tree(tree, path)
    return tree


# --------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------


def save_safetensors(
    path: PathLike, tensors: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a flat ``{name: array}`` dict as a safetensors file, atomically.

    Args:
      path: target file.
      tensors: flat mapping of names to arrays (use :func:`flatten_tree` for nested trees).
      metadata: optional string-to-string header metadata.
    """
    from safetensors.numpy import save

    path = Path(path).absolute()
    arrays = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise CheckpointError(f"safetensors names must be strings, got {k!r} for {path}")
        arrays[k] = np.ascontiguousarray(np.asarray(v))
    _atomic_write_bytes(path, save(arrays, metadata=dict(metadata) if metadata else None))
    return path


def load_safetensors(path: PathLike, *, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Read a safetensors file into a flat ``{name: np.ndarray}`` dict.

    Raises:
      CheckpointError: missing / truncated / corrupt file, or non-finite values.
    """
    from safetensors.numpy import load

    path = Path(path).absolute()
    _require_exists(path, kind="safetensors file", is_dir=False)
    try:
        flat = load(path.read_bytes())
    except Exception as e:  # safetensors_rust.SafetensorError and friends
        raise CheckpointError(
            f"corrupt or truncated safetensors file {path}: {type(e).__name__}: {e}"
        ) from e
    if check_finite:
        _check_finite_tree(flat, path)
    return flat


# --------------------------------------------------------------------------------------
# any format
# --------------------------------------------------------------------------------------


def load_checkpoint(source: Any, *, check_finite: bool = True) -> Any:
    """Load a checkpoint of any supported format, chosen from the path.

    * a directory -> orbax;
    * ``*.msgpack`` -> flax msgpack;
    * ``*.safetensors`` -> safetensors, unflattened on ``"."`` into nested dicts;
    * anything that is not a path (a pytree already in memory) is returned as is (after
      the finiteness check).

    Raises:
      CheckpointError: missing file, unknown extension, corrupt file, non-finite values.
    """
    if not isinstance(source, str | os.PathLike):
        if check_finite:
            _check_finite_tree(source, "<in-memory pytree>")
        return source
    path = Path(source).absolute()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return load_orbax(path, check_finite=check_finite)
    if path.suffix == ".msgpack":
        return load_msgpack(path, check_finite=check_finite)
    if path.suffix == ".safetensors":
        return unflatten_tree(load_safetensors(path, check_finite=check_finite))
    raise CheckpointError(
        f"unknown checkpoint format for {path}: expected an orbax directory, "
        "a .msgpack or a .safetensors file"
    )


# --------------------------------------------------------------------------------------
# lineage check and task vectors
# --------------------------------------------------------------------------------------


def _describe(source: Any, index: int | None = None) -> str:
    if isinstance(source, str | os.PathLike):
        return str(Path(source).absolute())
    return "<in-memory pytree>" if index is None else f"<in-memory expert {index}>"


def validate_lineage(base: Any, expert: Any, *, expert_name: str = "expert") -> None:
    """Check that ``expert`` is a fine-tune of ``base``: same structure, shapes and dtypes.

    Args:
      base: the base model's pytree.
      expert: an expert's pytree.
      expert_name: what to call the expert (its file) in error messages.

    Raises:
      CheckpointError: naming the first mismatching leaf path and ``expert_name``.
    """
    pb, pe = leaf_paths(base), leaf_paths(expert)
    if jtu.tree_structure(base) != jtu.tree_structure(expert):
        set_b, set_e = set(pb), set(pe)
        missing = [p for p in pb if p not in set_e]
        extra = [p for p in pe if p not in set_b]
        if missing:
            what = f"leaf {missing[0]} of the base is missing"
        elif extra:
            what = f"leaf {extra[0]} is not in the base"
        else:
            what = "the tree structures differ (same leaf names, different containers)"
        raise CheckpointError(f"lineage check failed for {expert_name}: {what}")
    for p, a, b in zip(pb, jtu.tree_leaves(base), jtu.tree_leaves(expert), strict=True):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(
                f"lineage check failed for {expert_name}: leaf {p} has shape {np.shape(b)} "
                f"but the base has {np.shape(a)}"
            )
        da, db = np.asarray(a).dtype, np.asarray(b).dtype
        if da != db:
            raise CheckpointError(
                f"lineage check failed for {expert_name}: leaf {p} has dtype {db} "
                f"but the base has {da}"
            )


def task_vectors_from_checkpoints(
    base: Any, experts: Sequence[Any], *, check_finite: bool = True
) -> TaskVectors:
    r"""Task vectors :math:`\tau_t = \theta_t - \theta_0` of ``T`` experts, stacked ``[T, ...]``.

    Each of ``base`` and ``experts`` is a path (orbax directory, ``.msgpack`` or
    ``.safetensors``; see :func:`load_checkpoint`) or a pytree already in memory. Every
    expert goes through :func:`validate_lineage` against the base before any subtraction,
    so a checkpoint from another model fails fast, naming its file and the first
    mismatching leaf.

    Args:
      base: the base model :math:`\theta_0`.
      experts: the ``T`` fine-tuned models :math:`\theta_t`.
      check_finite: reject NaN / Inf in any checkpoint.

    Returns:
      A task-vector set: the base's pytree with every leaf ``[T, ...]`` (``jax.Array``, the
      base's dtypes).

    Raises:
      CheckpointError: empty expert list, unreadable file, lineage mismatch, non-finite
        values.

    Example:
      >>> tv = task_vectors_from_checkpoints("ckpt/base", ["ckpt/expert_00", "ckpt/expert_01"])
    """
    if len(experts) == 0:
        raise CheckpointError("task_vectors_from_checkpoints: the list of experts is empty")
    theta0 = load_checkpoint(base, check_finite=check_finite)
    if not jtu.tree_leaves(theta0):
        raise CheckpointError(f"base checkpoint {_describe(base)} holds no arrays")
    taus = []
    for t, src in enumerate(experts):
        theta = load_checkpoint(src, check_finite=check_finite)
        validate_lineage(theta0, theta, expert_name=f"expert {t} ({_describe(src, t)})")
        # NumPy on the host: no per-leaf XLA compilation for a one-off subtraction
        taus.append(jtu.tree_map(lambda a, b: np.asarray(b) - np.asarray(a), theta0, theta))
    return jtu.tree_map(lambda *xs: jnp.asarray(np.stack(xs)), *taus)


# --------------------------------------------------------------------------------------
# PEFT LoRA adapters
# --------------------------------------------------------------------------------------


class PeftAdapter(NamedTuple):
    """A PEFT LoRA adapter read from disk.

    Attributes:
      factors: nested dict (module path split on ``"."``) of
        :class:`mergetheory.lora.LoraFactors` ``(B [d_out, r], A [r, d_in], scaling)``
        with a Python-float ``scaling``; the dense update of a module is ``scaling * B @ A``.
      config: the parsed ``adapter_config.json``.
      path: the adapter directory.
    """

    factors: dict[str, Any]
    config: dict[str, Any]
    path: Path


def _pattern_lookup(module: str, pattern: Mapping[str, Any], default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern``: the key matching the module's name end."""
    for key, val in pattern.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return val
    return default


def _peft_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return float(alpha) / (math.sqrt(r) if use_rslora else float(r))


def _load_peft_config(path: Path) -> dict[str, Any]:
    cfg_path = path / PEFT_CONFIG_NAME
    _require_exists(cfg_path, kind="PEFT adapter config", is_dir=False)
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt PEFT adapter config {cfg_path}: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"PEFT adapter config {cfg_path} is not a JSON object")
    for field in ("r", "lora_alpha"):
        if field not in cfg:
            raise CheckpointError(f"PEFT adapter config {cfg_path} has no {field!r} field")
    if not isinstance(cfg["r"], int) or cfg["r"] < 1:
        raise CheckpointError(f"PEFT adapter config {cfg_path}: r must be a positive int")
    return cfg


def load_peft_adapter(path: PathLike, *, check_finite: bool = True) -> PeftAdapter:
    r"""Read a PEFT LoRA adapter directory into per-module factors with PEFT's scaling.

    The directory holds ``adapter_model.safetensors`` with keys
    ``base_model.model.<module>.lora_A.weight`` ``[r, d_in]`` and
    ``base_model.model.<module>.lora_B.weight`` ``[d_out, r]`` (an adapter-name infix such
    as ``lora_A.default.weight`` is accepted), and ``adapter_config.json`` with ``r``,
    ``lora_alpha``, ``use_rslora`` (and optionally ``rank_pattern`` / ``alpha_pattern``).
    The scaling of a module of rank :math:`r` is

    .. math::  s = \alpha / r \quad\text{(LoRA)}, \qquad s = \alpha / \sqrt{r}
               \quad\text{(rsLoRA)},

    and its dense update is :math:`\Delta W = s\,B A \in \mathbb{R}^{d_{out} \times d_{in}}`.

    Args:
      path: the adapter directory.
      check_finite: reject NaN / Inf factors.

    Returns:
      :class:`PeftAdapter` whose ``factors`` nest the module path on ``"."``, e.g.
      ``factors["model"]["layers"]["0"]["self_attn"]["q_proj"]``.

    Raises:
      CheckpointError: missing files, corrupt files, keys that are not LoRA factors, a
        module with only one factor, or ranks that disagree with the config.
    """
    path = Path(path).absolute()
    _require_exists(path, kind="PEFT adapter directory", is_dir=True)
    cfg = _load_peft_config(path)
    weights = path / PEFT_WEIGHTS_NAME
    flat = load_safetensors(weights, check_finite=check_finite)
    if not flat:
        raise CheckpointError(f"PEFT adapter {weights} holds no tensors")
    use_rslora = bool(cfg.get("use_rslora", False))
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in flat.items():
        name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
        m = _PEFT_KEY.match(name)
        if m is None:
            raise CheckpointError(
                f"PEFT adapter {weights}: key {key!r} is not a LoRA factor "
                "(expected '<module>.lora_A.weight' or '<module>.lora_B.weight')"
            )
        if arr.ndim != 2:
            raise CheckpointError(
                f"PEFT adapter {weights}: {key!r} has shape {arr.shape}, expected a matrix"
            )
        parts.setdefault(m["module"], {})[m["which"]] = arr
    modules: dict[str, LoraFactors] = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise CheckpointError(f"PEFT adapter {weights}: module {module} has no lora_{missing}")
        a, b = ab["A"], ab["B"]
        r = int(_pattern_lookup(module, rank_pattern, cfg["r"]))
        alpha = float(_pattern_lookup(module, alpha_pattern, cfg["lora_alpha"]))
        if a.shape[0] != r or b.shape[1] != r:
            raise CheckpointError(
                f"PEFT adapter {weights}: module {module} has lora_A {a.shape} and lora_B "
                f"{b.shape}, but the config says r = {r}"
            )
        modules[module] = LoraFactors(b, a, _peft_scaling(r, alpha, use_rslora))
    nested = unflatten_tree(modules)
    return PeftAdapter(factors=nested, config=cfg, path=path)


def save_peft_adapter(
    path: PathLike,
    modules: Mapping[str, tuple[Any, Any]],
    *,
    r: int,
    lora_alpha: float,
    use_rslora: bool = False,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PEFT-layout LoRA adapter directory (safetensors + config), atomically.

    Args:
      path: the adapter directory to create.
      modules: ``{module path: (B [d_out, r], A [r, d_in])}``.
      r: the config's rank.
      lora_alpha: the config's alpha.
      use_rslora: the config's rsLoRA flag.
      extra_config: more config fields (``target_modules``, ``rank_pattern``, ...).

    Returns:
      The absolute directory path.
    """
    path = Path(path).absolute()
    tensors = {}
    targets = set()
    for module, (b, a) in modules.items():
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = np.asarray(a)
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = np.asarray(b)
        targets.add(module.rsplit(".", 1)[-1])
    cfg = {
        "peft_type": "LORA",
        "r": int(r),
        "lora_alpha": lora_alpha,
        "use_rslora": bool(use_rslora),
        "target_modules": sorted(targets),
    }
    cfg.update(extra_config or {})

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_safetensors(tmp / PEFT_WEIGHTS_NAME, tensors)
        (tmp / PEFT_CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True))

    _atomic_write_dir(path, write, overwrite=True)
    return path


def peft_dense_update(adapter: PeftAdapter | Mapping[str, Any]) -> dict[str, Any]:
    r"""Dense per-module updates :math:`\Delta W = s\,B A` ``[d_out, d_in]`` of one adapter.

    Args:
      adapter: a :class:`PeftAdapter` or its ``factors`` tree (unstacked, ``B [d, r]``).

    Returns:
      The same nested dict with every :class:`~mergetheory.lora.LoraFactors` replaced by
      its dense update (NumPy, float64 for float inputs up to float64).
    """
    factors = adapter.factors if isinstance(adapter, PeftAdapter) else adapter

    def one(f: LoraFactors) -> np.ndarray:
        b = np.asarray(f.B)
        a = np.asarray(f.A)
        return np.asarray(f.scaling, dtype=np.result_type(b, a)) * (b @ a)

    return jtu.tree_map(one, factors, is_leaf=is_lora_factors)


def stack_peft_adapters(adapters: Sequence[PeftAdapter | PathLike]) -> dict[str, Any]:
    r"""Stack ``T`` adapters of the same modules into a factored expert set.

    Ranks may differ between adapters: factors are zero-padded to the largest rank of each
    module, which leaves every :math:`s\,B A` unchanged.

    Args:
      adapters: :class:`PeftAdapter` objects or adapter directories.

    Returns:
      Nested dict of :class:`~mergetheory.lora.LoraFactors` ``(B [T, d, r], A [T, r, k],
      scaling [T])``, the input of :func:`mergetheory.lora.lora_gram_matrix` and
      :func:`mergetheory.lora.densify`.

    Raises:
      CheckpointError: no adapters, or adapters whose modules / shapes differ (naming the
        module and the adapter directory).
    """
    if len(adapters) == 0:
        raise CheckpointError("stack_peft_adapters: the list of adapters is empty")
    loaded = [a if isinstance(a, PeftAdapter) else load_peft_adapter(a) for a in adapters]
    ref = loaded[0]
    ref_flat = jtu.tree_flatten_with_path(ref.factors, is_leaf=is_lora_factors)[0]
    ref_names = [jtu.keystr(tuple(p)) for p, _ in ref_flat]
    per_module: list[list[LoraFactors]] = [[f] for _, f in ref_flat]
    for ad in loaded[1:]:
        flat = jtu.tree_flatten_with_path(ad.factors, is_leaf=is_lora_factors)[0]
        names = [jtu.keystr(tuple(p)) for p, _ in flat]
        if names != ref_names:
            diff = sorted(set(names) ^ set(ref_names))
            raise CheckpointError(
                f"PEFT adapter {ad.path} adapts different modules than {ref.path} "
                f"(first difference: {diff[0] if diff else 'order'})"
            )
        for i, (_, f) in enumerate(flat):
            f0 = per_module[i][0]
            if f.B.shape[0] != f0.B.shape[0] or f.A.shape[1] != f0.A.shape[1]:
                raise CheckpointError(
                    f"PEFT adapter {ad.path}: module {ref_names[i]} is "
                    f"{f.B.shape[0]}x{f.A.shape[1]} but {f0.B.shape[0]}x{f0.A.shape[1]} "
                    f"in {ref.path}"
                )
            per_module[i].append(f)

    def stack(fs: list[LoraFactors]) -> LoraFactors:
        r = max(f.A.shape[0] for f in fs)
        bs = [np.pad(np.asarray(f.B), ((0, 0), (0, r - f.B.shape[1]))) for f in fs]
        as_ = [np.pad(np.asarray(f.A), ((0, r - f.A.shape[0]), (0, 0))) for f in fs]
        dtype = np.result_type(*bs, *as_)
        scaling = np.asarray([f.scaling for f in fs], dtype=dtype)
        return LoraFactors(
            jnp.asarray(np.stack(bs).astype(dtype)),
            jnp.asarray(np.stack(as_).astype(dtype)),
            jnp.asarray(scaling),
        )

    treedef = jtu.tree_structure(ref.factors, is_leaf=is_lora_factors)
    return jtu.tree_unflatten(treedef, [stack(fs) for fs in per_module])
