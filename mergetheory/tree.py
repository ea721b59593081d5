r"""Pytree maths for task-vector sets.

Convention: a *task-vector set* is a pytree whose every leaf has a leading task axis
``[T, ...]`` (``tau_t = theta_t - theta_0``); a *merged update* is the same pytree without
that axis. Everything here is a small pure function; nothing is jitted on import.

Validation (:func:`validate_task_vectors`, :func:`check_same_structure`) raises
:class:`TaskVectorError` naming the offending leaf path. Value checks (NaN/Inf) run only
on concrete arrays, i.e. at public entry points outside ``jit``.

Performance note (docs/width_engine.md): XLA:CPU reduces badly over a short leading axis,
so reductions over the task axis go through :func:`sum_tasks`, which unrolls the sum over
``T`` (a static Python int) into ``x[0] + x[1] + ...``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._types import Gram, Merged, TaskVectors, is_lora_factors

__all__ = [
    "TaskVectorError",
    "accumulation_dtype",
    "check_dense",
    "check_finite",
    "check_finite_via",
    "check_same_structure",
    "check_unstacked",
    "gram_2d",
    "gram_matrix",
    "leaf_paths",
    "num_tasks",
    "ravel_tasks",
    "sum_tasks",
    "tree_add",
    "tree_norm",
    "tree_scale",
    "tree_stack",
    "tree_sub",
    "tree_unstack",
    "tree_vdot",
    "tree_weighted_sum",
    "tree_zeros_like",
    "validate_task_vectors",
]

_UNROLL_MAX = 64  # beyond this many tasks, a tree reduction is cheaper to compile


class TaskVectorError(ValueError):
    """Raised for malformed task vectors: structure, shapes, dtypes or non-finite values."""


# --------------------------------------------------------------------------------------
# paths and validation
# --------------------------------------------------------------------------------------


def _path_str(path: Sequence[Any]) -> str:
    s = jtu.keystr(tuple(path))
    return s if s else "<root>"


def leaf_paths(tree: Any) -> list[str]:
    """Readable key paths (``"['layer']['w']"``) of the leaves of ``tree``, in flatten order."""
    return [_path_str(p) for p, _ in jtu.tree_flatten_with_path(tree)[0]]


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


@jax.jit
def _nonfinite_counts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.isnan(x).sum(), jnp.isinf(x).sum()


def _count_on_device(leaf: Any) -> bool:
    """Count NaN / Inf where ``leaf`` lives: global, sharded or accelerator arrays."""
    if not isinstance(leaf, jax.Array):
        return False
    devices = leaf.devices()
    return (
        not leaf.is_fully_addressable
        or len(devices) > 1
        or any(d.platform != "cpu" for d in devices)
    )


_JIT_FINITE_MIN = 1 << 16  # jax leaves of at least this many entries: one jitted pass


@jax.jit
def _zero_if_finite(x: jax.Array) -> jax.Array:
    """``sum(x * 0)``: 0 when every entry of ``x`` is finite, NaN otherwise (one fused pass)."""
    return jnp.sum(x * jnp.zeros((), x.dtype))


def _screens(leaves: Sequence[Any]) -> dict[int, jax.Array]:
    """Start the jitted ``sum(x * 0)`` screen of every large single-device JAX leaf."""
    return {
        i: _zero_if_finite(leaf)
        for i, leaf in enumerate(leaves)
        if isinstance(leaf, jax.Array)
        and _is_concrete(leaf)
        and not _count_on_device(leaf)
        and jnp.issubdtype(leaf.dtype, jnp.inexact)
        and leaf.size >= _JIT_FINITE_MIN
    }


def _leaf_nonfinite(leaf: Any, screen: jax.Array | None) -> tuple[int, int]:
    """``(NaN count, Inf count)`` of a leaf; ``(0, 0)`` for tracers and integer leaves."""
    if not _is_concrete(leaf):
        return 0, 0
    if _count_on_device(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return 0, 0
        num_nan, num_inf = (int(c) for c in _nonfinite_counts(leaf))
        return num_nan, num_inf
    if screen is not None and bool(np.isfinite(np.asarray(screen))):
        return 0, 0
    arr = np.asarray(leaf)
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        return 0, 0
    if not np.issubdtype(arr.dtype, np.inexact):  # ml_dtypes (bfloat16, float8, ...)
        arr = arr.astype(np.float32)
    if np.all(np.isfinite(arr)):
        return 0, 0
    return int(np.isnan(arr).sum()), int(np.isinf(arr).sum())


def check_finite(tree: Any, *, name: str = "tree") -> None:
    """Raise :class:`TaskVectorError` if any concrete leaf holds NaN or Inf.

    Tracers (inside ``jit``) are skipped: value checks belong at eager entry points.
    A :class:`jax.Array` sharded over several devices, spanning devices of other processes
    (``jax.distributed``) or living on an accelerator is checked where it lives: one jitted
    reduction returns the NaN and Inf counts as replicated scalars, and only those two
    numbers are fetched (a global array cannot be fetched to one host, and an accelerator
    array would be copied whole). Other large JAX leaves are screened by one jitted
    reduction each (no host copy, no temporary); NumPy leaves, small leaves and any leaf
    that fails the screen are checked in NumPy, which also counts the bad values.
    """
    flat = jtu.tree_flatten_with_path(tree)[0]
    screened = _screens([leaf for _, leaf in flat])
    for i, (path, leaf) in enumerate(flat):
        num_nan, num_inf = _leaf_nonfinite(leaf, screened.get(i))
        if num_nan or num_inf:
            raise TaskVectorError(
                f"{name}{_path_str(path)}: {num_nan} NaN and {num_inf} Inf value(s) "
                f"in a leaf of shape {np.shape(leaf)}"
            )


def check_finite_via(result: Any, tree: Any, *, name: str = "tree") -> None:
    """:func:`check_finite` of ``tree``, screened through ``result``, a function of it.

    For a ``result`` that holds a NaN or Inf wherever ``tree`` does (a merge whose output
    entries propagate every non-finite input entry), this raises exactly what
    ``check_finite(tree, name=name)`` raises, but screens ``result`` instead of ``tree``
    (``T`` times fewer entries for a merged update of a ``[T, ...]`` task-vector set).
    Only when ``result`` fails the screen is ``tree`` checked, for the message; a
    non-finite ``result`` of finite inputs (an overflow) raises nothing. Tracers are
    skipped.

    Example:
      >>> tv = {"w": jnp.ones((2, 3))}
      >>> check_finite_via({"w": tv["w"].sum(0)}, tv, name="task_vectors")
    """
    leaves = jtu.tree_leaves(result)
    screened = _screens(leaves)
    if any(_leaf_nonfinite(leaf, screened.get(i)) != (0, 0) for i, leaf in enumerate(leaves)):
        check_finite(tree, name=name)


def check_same_structure(a: Any, b: Any, *, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise :class:`TaskVectorError` unless ``a`` and ``b`` have the same tree structure.

    The message names the first key path present in one tree but not the other.
    """
    sa, sb = jtu.tree_structure(a), jtu.tree_structure(b)
    if sa == sb:
        return
    pa, pb = set(leaf_paths(a)), set(leaf_paths(b))
    only_a = sorted(pa - pb)
    only_b = sorted(pb - pa)
    detail = []
    if only_a:
        detail.append(f"only in {names[0]}: {', '.join(only_a[:3])}")
    if only_b:
        detail.append(f"only in {names[1]}: {', '.join(only_b[:3])}")
    if not detail:
        detail.append(f"{sa} vs {sb}")
    raise TaskVectorError(f"mismatched pytree structure ({'; '.join(detail)})")


def validate_task_vectors(
    task_vectors: TaskVectors,
    *,
    name: str = "task_vectors",
    finite: bool = True,
) -> int:
    """Check a task-vector set and return its number of tasks ``T``.

    Checks that there is at least one leaf, no node is a
    :class:`~mergetheory.lora.LoraFactors` (:func:`check_dense`; LoRA-aware functions
    split factors off first), every leaf is a floating array with a leading task axis,
    all leading axes agree, and (for concrete arrays, if ``finite``) that no
    value is NaN or Inf. Errors name the offending leaf path.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      name: what to call the tree in error messages.
      finite: also check values for NaN / Inf.

    Returns:
      ``T``, the size of the shared leading axis.

    Raises:
      TaskVectorError: also for a list / tuple of two or more dicts of identical structure
        and leaf shapes: unstacked experts, not one ``[T, ...]`` pytree (stack them with
        :func:`tree_stack`; a list of per-layer dicts of equal shapes must be a dict).
    """
    check_unstacked(task_vectors, name=name)
    check_dense(task_vectors, name=name)
    flat = jtu.tree_flatten_with_path(task_vectors)[0]
    if not flat:
        raise TaskVectorError(f"{name}: the pytree has no array leaves")
    num = None
    first_path = None
    for path, leaf in flat:
        p = _path_str(path)
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            raise TaskVectorError(f"{name}{p}: leaf is {type(leaf).__name__}, not an array")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TaskVectorError(
                f"{name}{p}: dtype {dtype} is not floating (task vectors must be real floats)"
            )
        if len(shape) == 0:
            raise TaskVectorError(f"{name}{p}: scalar leaf has no leading task axis [T, ...]")
        if num is None:
            num, first_path = shape[0], p
        elif shape[0] != num:
            raise TaskVectorError(
                f"{name}{p}: task axis has length {shape[0]} but {name}{first_path} has {num}"
            )
    if num == 0:
        raise TaskVectorError(f"{name}: the task axis is empty (T = 0)")
    if finite:
        check_finite(task_vectors, name=name)
    return int(num)


def check_unstacked(task_vectors: Any, *, name: str = "task_vectors") -> None:
    """Raise if ``task_vectors`` looks like a list of unstacked expert pytrees.

    A list / tuple of ``>= 2`` dicts with one tree structure and the same leaf shapes is
    what ``[expert_0, expert_1, ...]`` looks like; read as a pytree its leaves' first axis
    would be taken for the task axis and the result would be garbage.

    Raises:
      TaskVectorError: naming the stacking convention and :func:`tree_stack`.
    """
    if not isinstance(task_vectors, list | tuple) or len(task_vectors) < 2:
        return
    if not all(isinstance(t, Mapping) for t in task_vectors):
        return
    ref = task_vectors[0]
    ref_shapes = [jnp.shape(x) for x in jtu.tree_leaves(ref)]
    for t in task_vectors[1:]:
        if jtu.tree_structure(t) != jtu.tree_structure(ref):
            return
        if [jnp.shape(x) for x in jtu.tree_leaves(t)] != ref_shapes:
            return
    raise TaskVectorError(
        f"{name} is a {type(task_vectors).__name__} of {len(task_vectors)} pytrees with the "
        "same structure and shapes, i.e. unstacked experts: operators take ONE pytree whose "
        "every leaf is stacked [T, ...] (use mergetheory.tree.tree_stack(experts))"
    )


def check_dense(task_vectors: TaskVectors, *, name: str = "task_vectors") -> None:
    """Raise if any node of ``task_vectors`` is a :class:`~mergetheory.lora.LoraFactors`.

    A ``LoraFactors`` node is a pytree (``B``, ``A``, ``scaling``) whose leaves may all
    carry the task axis, so code that treats leaves as dense coordinates would silently
    compute with the factors instead of the updates ``s B A``. Functions with that
    meaning (inner products, Gram matrices) call this first.

    Raises:
      TaskVectorError: naming the path of the first factored node.
    """
    for path, node in jtu.tree_flatten_with_path(task_vectors, is_leaf=is_lora_factors)[0]:
        if is_lora_factors(node):
            raise TaskVectorError(
                f"{name}{_path_str(path)} is LoraFactors, not a dense task vector: use "
                "lora.lora_gram_matrix (B A never formed) or sets.make_set / "
                "from_task_vectors, which accept factors, or lora.densify"
            )


def num_tasks(task_vectors: TaskVectors) -> int:
    """Return ``T`` (the leading axis of the first leaf); see :func:`validate_task_vectors`."""
    return int(jtu.tree_leaves(task_vectors)[0].shape[0])


# --------------------------------------------------------------------------------------
# stacking
# --------------------------------------------------------------------------------------


def tree_stack(trees: Sequence[Any]) -> TaskVectors:
    """Stack a list of same-structure pytrees into one ``[T, ...]`` task-vector set."""
    if len(trees) == 0:
        raise TaskVectorError("tree_stack: got an empty list of trees")
    for i, t in enumerate(trees[1:], start=1):
        check_same_structure(trees[0], t, names=("tree 0", f"tree {i}"))
        for p, a, b in zip(
            leaf_paths(trees[0]), jtu.tree_leaves(trees[0]), jtu.tree_leaves(t), strict=True
        ):
            if jnp.shape(a) != jnp.shape(b):
                raise TaskVectorError(
                    f"tree_stack: leaf {p} has shape {jnp.shape(b)} in tree {i} "
                    f"but {jnp.shape(a)} in tree 0"
                )
    return jtu.tree_map(lambda *xs: jnp.stack(xs), *trees)


def tree_unstack(task_vectors: TaskVectors) -> list[Merged]:
    """Inverse of :func:`tree_stack`: a list of ``T`` pytrees without the task axis."""
    num = num_tasks(task_vectors)
    return [jtu.tree_map(lambda x, i=i: x[i], task_vectors) for i in range(num)]


# --------------------------------------------------------------------------------------
# arithmetic
# --------------------------------------------------------------------------------------


def tree_add(a: Any, b: Any) -> Any:
    """Leafwise ``a + b``."""
    return jtu.tree_map(jnp.add, a, b)


def tree_sub(a: Any, b: Any) -> Any:
    """Leafwise ``a - b`` (e.g. ``tau = tree_sub(theta_ft, theta_0)``)."""
    return jtu.tree_map(jnp.subtract, a, b)


def tree_scale(a: Any, s: Any) -> Any:
    """Leafwise ``s * a`` for a scalar ``s``."""
    return jtu.tree_map(lambda x: (s * x).astype(x.dtype), a)


def tree_zeros_like(a: Any) -> Any:
    """Leafwise zeros."""
    return jtu.tree_map(jnp.zeros_like, a)


def tree_vdot(a: Any, b: Any) -> jax.Array:
    r"""Euclidean inner product of two pytrees.

    :math:`\langle a, b\rangle = \sum_\ell \mathrm{vdot}(a_\ell, b_\ell)` over the leaves.
    """
    parts = jtu.tree_leaves(jtu.tree_map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(parts[1:], parts[0])


def tree_norm(a: Any) -> jax.Array:
    r"""Euclidean norm :math:`\|a\|_2` of the whole pytree (all leaves concatenated)."""
    return jnp.sqrt(tree_vdot(a, a))


def sum_tasks(x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    r"""Sum a ``[T, ...]`` array over its task axis: :math:`\sum_t w_t x_t`.

    The sum is unrolled over ``T`` (``x[0] + x[1] + ...``), which XLA:CPU runs at memory
    bandwidth, unlike ``jnp.sum(x, axis=0)`` (docs/width_engine.md). For ``T`` above 64 it
    falls back to ``jnp.tensordot`` / ``jnp.sum``.

    Args:
      x: array ``[T, ...]``.
      weights: optional ``[T]`` weights (traced values are fine).

    Returns:
      Array ``[...]`` of ``x``'s dtype.
    """
    num = x.shape[0]
    if num > _UNROLL_MAX:
        if weights is None:
            return jnp.sum(x, axis=0)
        return jnp.tensordot(weights.astype(x.dtype), x, axes=1)
    if weights is None:
        acc = x[0]
        for t in range(1, num):
            acc = acc + x[t]
        return acc
    w = jnp.asarray(weights).astype(x.dtype)
    acc = w[0] * x[0]
    for t in range(1, num):
        acc = acc + w[t] * x[t]
    return acc


def tree_weighted_sum(task_vectors: TaskVectors, weights: jax.Array | None = None) -> Merged:
    r"""Merged update :math:`\sum_t w_t \tau_t` (plain sum when ``weights`` is None)."""
    return jtu.tree_map(lambda x: sum_tasks(x, weights), task_vectors)


# --------------------------------------------------------------------------------------
# flat views and the Gram matrix
# --------------------------------------------------------------------------------------


def ravel_tasks(task_vectors: TaskVectors) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """Flatten a task-vector set to ``[T, D]`` and return the inverse.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.

    Returns:
      ``(flat, unravel)`` where ``flat`` is ``[T, D]`` (leaves concatenated in flatten
      order, promoted to a common dtype) and ``unravel`` maps a ``[T, D]`` array (or a
      ``[D]`` row) back to the pytree with (without) the task axis.
    """
    check_dense(task_vectors, name="ravel_tasks: task_vectors")
    leaves, treedef = jtu.tree_flatten(task_vectors)
    num = leaves[0].shape[0]
    shapes = [leaf.shape[1:] for leaf in leaves]
    dtypes = [leaf.dtype for leaf in leaves]
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    flat = jnp.concatenate([leaf.reshape(num, -1) for leaf in leaves], axis=1)

    def unravel(arr: jax.Array) -> Any:
        lead = arr.shape[:-1]
        out = [
            arr[..., offsets[i] : offsets[i + 1]].reshape(lead + shapes[i]).astype(dtypes[i])
            for i in range(len(leaves))
        ]
        return jtu.tree_unflatten(treedef, out)

    return flat, unravel


def accumulation_dtype(*dtypes: Any) -> np.dtype:
    """The dtype sums of products of ``dtypes`` values are accumulated in: the widest
    of them, at least float32.

    float16 / bfloat16 task vectors would overflow (float16 tops out at 65504) and lose
    most digits in a Gram matrix; float32 and float64 are kept as they are.
    """
    widest = max((jnp.dtype(d) for d in dtypes), key=lambda d: jnp.finfo(d).bits)
    return widest if jnp.finfo(widest).bits >= 32 else jnp.dtype(jnp.float32)


def gram_matrix(task_vectors: TaskVectors, *, precision: Any = "highest") -> Gram:
    r"""Gram matrix :math:`G_{ij} = \langle \tau_i, \tau_j \rangle` of a task-vector set.

    Streamed leaf by leaf (no ``[T, D]`` concatenation): ``G = sum_l X_l X_l^T`` with
    ``X_l`` the leaf reshaped to ``[T, -1]`` (each product by :func:`gram_2d`, blocked
    over columns on CPU). Cost ``O(T^2 D)``, memory ``O(T^2)`` beyond
    the inputs.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      precision: matmul precision (``"highest"`` keeps float32 accuracy on accelerators).

    Returns:
      ``[T, T]`` symmetric positive semi-definite matrix, in the leaves' widest dtype,
      at least float32 (:func:`accumulation_dtype`).

    Raises:
      TaskVectorError: for :class:`~mergetheory.lora.LoraFactors` nodes (use
        :func:`mergetheory.lora.lora_gram_matrix`).
    """
    check_dense(task_vectors, name="gram_matrix: task_vectors")
    leaves = jtu.tree_leaves(task_vectors)
    num = leaves[0].shape[0]
    dtype = accumulation_dtype(*(leaf.dtype for leaf in leaves))
    acc = None
    for leaf in leaves:
        x = leaf.reshape(num, -1)
        g = gram_2d(x, precision=precision).astype(dtype)
        acc = g if acc is None else acc + g
    return 0.5 * (acc + acc.T)


_GRAM_BLOCK_BYTES = 1 << 20  # column block of the CPU Gram kernel: ~1 MiB, cache-resident
_GRAM_ROW_GROUP = 8  # rows per group of the CPU Gram kernel's upper-triangular blocks
_GRAM_MAX_GROUPED_ROWS = 64  # beyond: (T / 8)^2 / 2 small products per block; one matmul


def _on_cpu(x: Any) -> bool:
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return all(d.platform == "cpu" for d in x.devices())
    return jax.default_backend() == "cpu"


def gram_2d(x: jax.Array, *, precision: Any = "highest") -> jax.Array:
    r"""``x @ x.T`` for a wide ``[T, D]`` array, fast on XLA:CPU.

    XLA:CPU runs one ``x @ x.T`` with a short ``T`` and a long ``D`` far below memory
    bandwidth (measured 3-7x the CPU time of NumPy's BLAS on ``[8, 1e7]`` float32). On
    CPU the product is therefore accumulated over column blocks of about 1 MiB,
    :math:`G = \sum_b X_{:, b} X_{:, b}^\top`, with a ``lax.scan`` whose blocks stay in
    cache (4-5x faster than the single matmul). For ``8 < T <= 64`` the rows are also cut
    into groups of 8 and only the blocks on and above the diagonal are formed,
    :math:`G_{IJ} = X_I X_J^\top` for :math:`I \le J` (a SYRK): fewer multiply-adds and
    8-row products that XLA:CPU runs near its peak, 1.3-2x faster than one ``[T, T]``
    product per column block at ``T = 12..64``. The result runs at about the speed of
    NumPy's BLAS ``X @ X.T`` on the same data; against one NumPy ``X.sum(0)`` pass it
    takes about 1.0-1.4x at ``[4-8, 1e7]`` (memory-bound) and 2-3x at ``[16, 1e6]``,
    where the :math:`T^2 = 256` multiply-adds per column make the product FMA-bound
    (NumPy's BLAS takes 2.2x there too; ``benchmarks/width.py``). On other backends,
    and for narrow arrays, it is one matmul.

    Args:
      x: ``[T, D]`` array.
      precision: matmul precision.

    Returns:
      ``[T, T]`` (symmetric up to round-off; not symmetrised), accumulated in
      :func:`accumulation_dtype` of ``x``.
    """
    num, dim = x.shape
    block = _GRAM_BLOCK_BYTES // max(1, num * x.dtype.itemsize)
    block = max(1024, 1 << max(0, int(block).bit_length() - 1))  # a power of two
    num_blocks = dim // block
    dtype = accumulation_dtype(x.dtype)
    mm = functools.partial(jnp.matmul, precision=precision, preferred_element_type=dtype)
    if num_blocks < 2 or not _on_cpu(x):
        return mm(x, x.T)

    group = _GRAM_ROW_GROUP if _GRAM_ROW_GROUP < num <= _GRAM_MAX_GROUPED_ROWS else num
    bounds = [(lo, min(lo + group, num)) for lo in range(0, num, group)]
    pairs = [(i, j) for i in range(len(bounds)) for j in range(i, len(bounds))]

    def products(c: jax.Array) -> tuple[jax.Array, ...]:
        rows = [c[lo:hi] for lo, hi in bounds]
        return tuple(mm(rows[i], rows[j].T) for i, j in pairs)

    def body(acc: tuple[jax.Array, ...], i: jax.Array) -> tuple[tuple[jax.Array, ...], None]:
        c = jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=1)
        return tuple(a + p for a, p in zip(acc, products(c), strict=True)), None

    sizes = [hi - lo for lo, hi in bounds]
    init = tuple(jnp.zeros((sizes[i], sizes[j]), dtype) for i, j in pairs)
    acc, _ = jax.lax.scan(body, init, jnp.arange(num_blocks, dtype=jnp.int32))
    if num_blocks * block < dim:
        rest = products(x[:, num_blocks * block :])
        acc = tuple(a + p for a, p in zip(acc, rest, strict=True))
    blocks = dict(zip(pairs, acc, strict=True))
    if len(bounds) == 1:
        return blocks[0, 0]
    return jnp.block(
        [[blocks[i, j] if i <= j else blocks[j, i].T for j in range(len(bounds))]
         for i in range(len(bounds))]
    )  # fmt: skip
