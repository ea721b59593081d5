r"""Any checkpoint format, the lineage check, and task vectors from checkpoints.

:func:`load_checkpoint` picks the format from the path (an orbax directory, a ``.msgpack``
or a ``.safetensors`` file). :func:`task_vectors_from_checkpoints` loads a base model and
``T`` experts (paths in any of these formats, or in-memory pytrees) and returns
:math:`\tau_t = \theta_t - \theta_0` stacked as ``[T, ...]``, after a fail-fast *lineage
check*: every expert must have exactly the base's tree structure, leaf shapes and dtypes;
the error names the first mismatching leaf path and the expert's file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import TaskVectors
from ..tree import leaf_paths
from .common import CheckpointError, check_finite_checkpoint
from .flat import strip_variable_wrappers, unflatten_tree
from .msgpack import load_msgpack
from .npz import load_npy, load_npz
from .orbax import load_orbax
from .safetensors import load_safetensors

__all__ = [
    "CHECKPOINT_FORMATS",
    "check_floating",
    "load_checkpoint",
    "task_vectors_from_checkpoints",
    "validate_lineage",
]


CHECKPOINT_FORMATS = ("npz", "npy", "safetensors", "msgpack", "orbax")
"""The formats :func:`load_checkpoint` reads (``fmt=`` forces one, whatever the path)."""


def check_floating(tree: Any, source: str) -> None:
    """Refuse a checkpoint with a non-floating leaf (integer weights are not widened).

    ``uint8`` 200 - 100 would be 100 but 100 - 200 wraps to 156: task vectors need floats.

    Raises:
      CheckpointError: naming ``source`` and the first integer / bool leaf.
    """
    for p, leaf in zip(leaf_paths(tree), jtu.tree_leaves(tree), strict=True):
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise CheckpointError(
                f"{source}: leaf {p} has dtype {dtype}; checkpoints must hold floating "
                "weights (integer leaves are refused, not widened: cast them to float first)"
            )


def load_checkpoint(
    source: Any, *, check_finite: bool = True, step: int | None = None, fmt: str | None = None
) -> Any:
    """Load a checkpoint of any supported format, chosen from the path (or forced: ``fmt``).

    * a directory -> orbax (an item, a ``CheckpointManager`` root or step folder; ``step``
      picks the manager step, default the latest);
    * ``*.msgpack`` -> flax msgpack;
    * ``*.safetensors`` -> safetensors, unflattened on ``"."`` into nested dicts;
    * ``*.npz`` -> named arrays, unflattened on ``"."``;
    * ``*.npy`` only with ``fmt="npy"``: one array, named ``"array"``;
    * anything that is not a path (a pytree already in memory) is returned as is (after
      the finiteness check).

    ``fmt`` (one of :data:`CHECKPOINT_FORMATS`) reads the path in that format whatever its
    suffix (an orbax checkpoint must be a directory, the others files).

    Flax variable wrappers (``{"value": array}`` of a saved ``nnx.State``) are removed
    (:func:`~mergetheory.io.flat.strip_variable_wrappers`), so an orbax ``nnx.State`` and
    a msgpack pure dict of one model load alike.

    Raises:
      CheckpointError: missing file, unknown extension or ``fmt``, a file where a directory
        is needed (or the reverse), corrupt file, non-finite values.
    """
    if not isinstance(source, str | os.PathLike):
        if check_finite:
            check_finite_checkpoint(source, "<in-memory pytree>")
        return source
    path = Path(source).absolute()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if fmt is None:
        fmt = _detect(path)
    elif fmt not in CHECKPOINT_FORMATS:
        raise CheckpointError(
            f"{path}: unknown format {fmt!r}; expected one of {', '.join(CHECKPOINT_FORMATS)}"
        )
    if (fmt == "orbax") != path.is_dir():
        want = "a directory" if fmt == "orbax" else "a file"
        raise CheckpointError(f"{path}: format {fmt} expects {want}")
    if fmt == "orbax":
        return strip_variable_wrappers(load_orbax(path, check_finite=check_finite, step=step))
    if fmt == "msgpack":
        return strip_variable_wrappers(load_msgpack(path, check_finite=check_finite))
    load = {"safetensors": load_safetensors, "npz": load_npz, "npy": load_npy}[fmt]
    return strip_variable_wrappers(unflatten_tree(load(path, check_finite=check_finite)))


def _detect(path: Path) -> str:
    if path.is_dir():
        return "orbax"
    if path.suffix in (".msgpack", ".safetensors", ".npz"):
        return path.suffix[1:]
    if path.suffix == ".npy":
        raise CheckpointError(
            f"{path}: a single .npy array is not a checkpoint of named arrays "
            "(use .npz, .safetensors, .msgpack or an orbax directory, or force the npy "
            "format: --format npy reads it as one array)"
        )
    raise CheckpointError(
        f"unknown checkpoint format for {path}: expected an orbax directory, "
        "a .msgpack, .safetensors or .npz file (or force one with --format)"
    )


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
      CheckpointError: empty expert list, unreadable file, lineage mismatch, integer
        (non-floating) leaves, non-finite values.

    Example:
      >>> tv = task_vectors_from_checkpoints("ckpt/base", ["ckpt/expert_00", "ckpt/expert_01"])
    """
    if len(experts) == 0:
        raise CheckpointError("task_vectors_from_checkpoints: the list of experts is empty")
    theta0 = load_checkpoint(base, check_finite=check_finite)
    if not jtu.tree_leaves(theta0):
        raise CheckpointError(f"base checkpoint {_describe(base)} holds no arrays")
    check_floating(theta0, f"base checkpoint {_describe(base)}")
    taus = []
    for t, src in enumerate(experts):
        theta = load_checkpoint(src, check_finite=check_finite)
        validate_lineage(theta0, theta, expert_name=f"expert {t} ({_describe(src, t)})")
        check_floating(theta, f"expert {t} ({_describe(src, t)})")
        # NumPy on the host: no per-leaf XLA compilation for a one-off subtraction
        taus.append(jtu.tree_map(lambda a, b: np.asarray(b) - np.asarray(a), theta0, theta))
    return jtu.tree_map(lambda *xs: jnp.asarray(np.stack(xs)), *taus)
