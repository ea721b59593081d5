r"""The per-tensor streaming merge behind ``mergetheory merge`` (memory bounded by tensors).

For each tensor name the ``n`` experts' copies of that one tensor are read (positioned
reads of safetensors files, :class:`~mergetheory.io.pool.DenseExpert`), stacked into one
preallocated ``[n, ...]`` array of task vectors :math:`\tau_t = \theta_t - \theta_0`, merged
by the operator, added to :math:`\theta_0` and handed to the writer; then the next tensor.
Peak memory is about ``n + 2`` copies of the largest tensor plus the operator's
temporaries on it, whatever the number of tensors. For operators that are elementwise
over coordinates (:data:`ROW_BLOCK_OPERATORS`: the weighted sums) a large tensor is further
cut into blocks of rows, so the stack stays under ``block_bytes``.

A merge is streamed only where it equals the whole-tree merge bit for bit
(:func:`is_streamable`): the registry's ``per_tensor`` claim of the operator
(:class:`mergetheory.merge.MergeOperator`, checked by the conformance suite), e.g. TIES and
magnitude pruning with ``trim="tensor"``, KnOTS with ``trim_scope="tensor"``, and the
DARE operators, each tensor given the key it has in the whole tree (``fold_in(key, i)``
for the ``i``-th name in sorted order, as a per-leaf key,
:func:`mergetheory.merge.leaf_key_list`). Global trims and the heavy-tailed RHT (scaled
by each expert's whole-tree norm) load the stacked tree instead.

Example:
  >>> experts = [open_expert(p) for p in ["e0.safetensors", "e1.safetensors"]]
  >>> for name, merged in merged_tensors(experts[0].names, experts, None, merge_fn):
  ...     writer.write(name, merged)

Reference: ``docs/streaming.md`` (memory and time measured against mergekit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .common import CliError

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "ROW_BLOCK_OPERATORS",
    "STREAMED_OPERATORS",
    "block_options",
    "blocked_ties",
    "is_streamable",
    "merged_tensors",
    "row_blocks",
]

STREAMED_OPERATORS: dict[str, Mapping[str, Any]] = {
    "average": {},
    "base_knowledge_weighted": {},
    "breadcrumbs": {},
    "dare_linear": {},
    "dare_ties": {},
    "emr": {},
    "iso_c": {},
    "iso_cts": {},
    "knots": {"trim_scope": "tensor"},
    "knots_dare_ties": {"trim_scope": "tensor"},
    "magnitude_prune": {"trim": "tensor"},
    "model_stock": {},
    "rht": {},
    "task_arithmetic": {},
    "ties": {"trim": "tensor"},
    "tsv_m": {},
}
"""The built-in operators' ``per_tensor`` claims (:class:`mergetheory.merge.MergeOperator`),
kept JAX-free for ``--help`` (``tests/cli/test_cli_main.py`` checks them against the
registry); the others need the whole tree."""

ROW_BLOCK_OPERATORS = ("average", "task_arithmetic")
"""Operators elementwise over coordinates: a tensor may be merged in blocks of rows."""

DEFAULT_BLOCK_BYTES = 64 * 2**20
"""Largest stack ``[n, rows, ...]`` of a row-blocked merge (bytes)."""


def is_streamable(op_name: str, hparams: Mapping[str, Any]) -> bool:
    """Whether ``op_name`` with ``hparams`` may be merged tensor by tensor (its registry
    ``per_tensor`` claim holds for these hyperparameters; plugins included)."""
    import inspect

    from ..merge import get_operator

    op = get_operator(op_name)
    if op.per_tensor is None:
        return False
    params = inspect.signature(op.fn).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
    return all(hparams.get(k, defaults.get(k)) == v for k, v in op.per_tensor.items())


def row_blocks(shape: Sequence[int], num: int, itemsize: int, block_bytes: int | None):
    """``(start, stop)`` row ranges of a tensor so that ``num`` stacked copies of one block
    take at most ``block_bytes`` (one block, ``None``, when it fits or rows are 1-D)."""
    from ..io.stack import row_ranges  # here: importing ``io`` imports jax

    if block_bytes is None or len(shape) < 2:
        return [None]
    max_entries = block_bytes // (num * itemsize)
    if math.prod(shape) <= max_entries:
        return [None]
    return row_ranges(shape, max_entries)


def _finite(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a.astype(np.float32) if a.dtype.itemsize < 4 else a)


def _checked(a: np.ndarray, label: str, name: str) -> np.ndarray:
    ok = _finite(a)
    if not np.all(ok):
        raise CliError(f"{label}: key {name!r} has {int(ok.size - ok.sum())} NaN/Inf value(s)")
    return a


def _task_vector(
    name: str, ex: Any, base: Any, work: np.dtype, label: str, rows: tuple[int, int] | None
) -> np.ndarray:
    """One task's task vector, rows ``rows`` (in place when the read array is a fresh copy)."""
    tau = _checked(ex.get(name, rows), label, name).astype(work, copy=False)
    if base is None:
        return tau
    theta0 = base.get(name, rows).astype(work, copy=False)
    return np.subtract(tau, theta0, out=tau if getattr(ex, "lazy", False) else None)


def _task_blocks(
    name: str, ex: Any, base: Any, work: np.dtype, label: str, blocks: list
) -> Iterator[np.ndarray]:
    """One task's task vector, block of rows after block of rows (read as consumed)."""
    for rows in blocks:
        yield _task_vector(name, ex, base, work, label, rows)


def blocked_ties(op_name: str, hparams: Mapping[str, Any]):
    """``(statistic, merge_block)`` for :func:`merged_tensors` merging TIES in blocks of
    rows, or ``None`` where that would not equal :func:`mergetheory.merge.ties` bit for bit.

    The statistic is each task's trim threshold (the ``k``-th largest magnitude of its
    whole tensor, :func:`mergetheory.merge.topk.blockwise_thresholds` over its blocks); each
    block is then merged by :func:`mergetheory.merge.ties.ties_merge_thresholded`,
    elementwise given the thresholds when ``zero_sign="positive"`` and ``trim="tensor"``.
    """
    if op_name != "ties":
        return None
    import functools
    import inspect
    import math

    import jax
    import jax.numpy as jnp

    from ..merge.ties import ties, ties_kept, ties_merge_thresholded
    from ..merge.topk import blockwise_thresholds

    params = inspect.signature(ties).parameters.values()
    hparams = {**{p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}, **hparams}
    if hparams["trim"] != "tensor" or hparams["zero_sign"] != "positive":
        return None

    static = {
        "weights_before_election": bool(hparams["weights_before_election"]),
        "election": hparams["election"],
        "aggregate": hparams["aggregate"],
        "zero_sign": hparams["zero_sign"],
    }
    kernel = jax.jit(functools.partial(ties_merge_thresholded, **static))

    def statistic(shape: tuple[int, ...], dtype: np.dtype, tasks: list) -> Any:
        num = math.prod(shape)
        k = ties_kept(hparams["density"], num, hparams["keep_rule"])
        return blockwise_thresholds(tasks, num, k, dtype)

    def merge_block(x: np.ndarray, thresholds: Any) -> Any:
        return kernel(
            jnp.asarray(x),
            thresholds,
            weights=hparams.get("weights"),
            scale=jnp.asarray(hparams["scale"]),
        )

    return statistic, merge_block


def block_options(op_name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The ``block_bytes`` / ``blocked`` arguments of :func:`merged_tensors` for an operator:
    row blocks for the elementwise ones and for TIES (:func:`blocked_ties`), else none."""
    ties = blocked_ties(op_name, hparams)
    rows = op_name in ROW_BLOCK_OPERATORS or ties is not None
    # looked up at call time, so that tests can shrink the blocks
    return {"block_bytes": DEFAULT_BLOCK_BYTES if rows else None, "blocked": ties}


def merged_tensors(
    names: Sequence[str],
    experts: Sequence[Any],
    base: Any | None,
    merge: Callable[[str, np.ndarray], Any],
    *,
    out_dtypes: Mapping[str, np.dtype],
    labels: Sequence[str],
    wide: bool = False,
    block_bytes: int | None = None,
    what: str = "the output",
    blocked: tuple[Callable[..., Any], Callable[[np.ndarray, Any], Any]] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    r"""Yield ``(name, merged tensor)`` for each name, reading one tensor at a time.

    Args:
      names: tensor names, in output order.
      experts: :class:`~mergetheory.io.pool.DenseExpert` s (``get(name, rows)``).
      base: the base model (``None``: the experts are task vectors already).
      merge: ``merge(name, x)`` -> the merged task vector of the stack ``x`` ``[n, ...]``.
      out_dtypes: each tensor's output dtype.
      labels: the experts' paths as the user gave them (error messages).
      wide: stack and add the base in float64 (else in the inputs' dtype).
      block_bytes: merge in blocks of rows of at most this many stacked bytes (only for
        operators elementwise over coordinates, :data:`ROW_BLOCK_OPERATORS`).
      what: the output's name in the non-finite error.
      blocked: ``(statistic, merge_block)`` to merge a tensor in blocks of rows although
        the operator needs whole tensors: ``statistic(shape, dtype, tasks)`` of the tasks'
        whole task vectors, ``tasks[t]`` yielding task ``t``'s row blocks one at a time
        (read from disk as they are consumed), then ``merge_block(x_block, stats)`` (e.g.
        TIES given each task's trim threshold, :func:`blocked_ties`).

    Raises:
      CliError: a NaN / Inf in an input tensor (naming the file and tensor) or in a merged
        tensor.
    """
    n = len(experts)
    for name in names:
        shape, dtype = tuple(experts[0].shape(name)), np.dtype(experts[0].dtype(name))
        work = np.dtype(np.float64) if wide else dtype
        out = None
        blocks = row_blocks(shape, n, work.itemsize, block_bytes)
        stats = None
        if blocked is not None and len(blocks) > 1:  # one block of one task at a time
            tasks = [
                _task_blocks(name, ex, base, work, labels[i], blocks)
                for i, ex in enumerate(experts)
            ]
            stats = blocked[0](shape, work, tasks)
            del tasks
        for rows in blocks:
            theta0 = None if base is None else base.get(name, rows).astype(work, copy=False)
            x = None
            for i, ex in enumerate(experts):
                xi = _checked(ex.get(name, rows), labels[i], name)
                if x is None:
                    x = np.empty((n, *xi.shape), work)
                x[i] = xi
                if theta0 is not None:
                    x[i] -= theta0
                del xi
            tau = np.asarray(merge(name, x) if stats is None else blocked[1](x, stats))
            del x
            if wide:
                tau = tau.astype(np.float64, copy=False)
            res = tau if theta0 is None else theta0 + tau
            del tau, theta0
            ok = _finite(res)
            if not np.all(ok):
                raise CliError(
                    f"the merged output has {int(ok.size - ok.sum())} NaN/Inf value(s) in "
                    f"{name!r} (overflow: are the hyperparameters too large?); {what} not written"
                )
            if rows is None:
                out = res.astype(out_dtypes[name], copy=False)
            else:
                if out is None:
                    out = np.empty(shape, out_dtypes[name])
                out[rows[0] : rows[1]] = res
            del res, ok
        yield name, out
