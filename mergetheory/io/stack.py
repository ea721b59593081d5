r"""One tensor of every expert of a pool, as float64 task vectors, in memory or by row blocks.

:class:`TensorStack` is what :class:`mergetheory.io.pool.TaskVectorTensors` yields for each
tensor name: the ``[n, ...]`` task vectors :math:`\theta_t - \theta_0` of that tensor.
A tensor of at most :data:`GRAM_BLOCK` entries is held whole (float64 ``[n, ...]``). A
larger one is never held for all experts at once: :meth:`TensorStack.row` reads one
expert's copy whole (an operator that ranks the whole tensor needs it) and
:meth:`TensorStack.block` reads a block of rows of every expert (the Gram and sign counts
are sums over coordinates). Every sum over a tensor's coordinates is taken over the same
row blocks (:meth:`TensorStack.bounds`), whether the tensor was held or read, so the
numbers do not depend on the input format.

:class:`RowSpill` keeps ``n`` float64 rows in an unlinked temporary file and serves column
blocks of them (positioned reads), e.g. the maps of an operator applied to each expert's
copy of a large tensor, whose Gram is then summed over the same blocks.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .common import CheckpointError

__all__ = ["GRAM_BLOCK", "RowSpill", "TensorStack", "block_bounds", "row_ranges"]

GRAM_BLOCK = 1 << 22
"""Entries per expert above which a tensor is summed over row blocks of at most this many
entries (float64: 32 MiB an expert and block), and not held for all experts at once."""


def row_ranges(shape: Sequence[int], max_entries: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of a tensor's rows (its first axis), each block holding at
    most ``max_entries`` entries (one row at least); one range for a tensor that fits.

    The one splitter behind :func:`block_bounds` (the Gram's row blocks) and the streamed
    merge's row blocks (``mergetheory.cli.merge_stream.row_blocks``).

    Example:
      >>> row_ranges((10, 7), 24)
      [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    rows = shape[0] if len(shape) else 1
    row = math.prod(shape[1:])
    if rows * row <= max_entries:
        return [(0, rows)]
    step = max(1, max_entries // max(row, 1))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def block_bounds(shape: Sequence[int], block: int | None = None) -> list[tuple[int, int]]:
    """Row-aligned ``(lo, hi)`` ranges of a tensor's flattened entries, each at most
    ``block`` (default :data:`GRAM_BLOCK`) entries (one row at least); one range for a
    tensor of at most ``block`` entries (:func:`row_ranges` in entries)."""
    block = GRAM_BLOCK if block is None else block
    row = math.prod(shape[1:])
    return [(lo * row, hi * row) for lo, hi in row_ranges(shape, block)]


class TensorStack:
    r"""The float64 task vectors ``[n, ...]`` of one tensor of a pool.

    Either held (``array``) or read on demand from the experts (``experts``, ``base``,
    ``name``: readers with ``get(name, rows)``), see the module docstring.

    Attributes:
      name: the tensor name.
      shape: ``(n, *tensor_shape)``.
      size: entries per expert.
      held: the whole stack is in memory (:attr:`array`).

    Raises:
      CheckpointError: (when reading) NaN / Inf in the task vectors, naming the tensor.
    """

    def __init__(
        self,
        name: str,
        array: np.ndarray | None = None,
        *,
        experts: Sequence[Any] = (),
        base: Any = None,
        shape: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.array = array
        self._experts, self._base = list(experts), base
        tshape = tuple(array.shape[1:]) if array is not None else tuple(shape)
        n = array.shape[0] if array is not None else len(self._experts)
        self.shape = (n, *tshape)
        self.size = math.prod(tshape)
        self._row = math.prod(tshape[1:]) if tshape else 1

    @property
    def held(self) -> bool:
        """The stack is in memory."""
        return self.array is not None

    def bounds(self) -> list[tuple[int, int]]:
        """The row blocks every sum over this tensor's coordinates is taken over."""
        return block_bounds(self.shape[1:])

    def _finite(self, x: np.ndarray) -> np.ndarray:
        if not np.isfinite(x).all():
            raise CheckpointError(f"tensor {self.name!r}: NaN / Inf in the pool's task vectors")
        return x

    def _base_rows(self, lo: int, hi: int) -> np.ndarray | float:
        if self._base is None:
            return 0.0
        return self._base.get(self.name, (lo // self._row, hi // self._row)).reshape(-1)

    def row(self, i: int) -> np.ndarray:
        """Expert ``i``'s task vector of this tensor (float64, the tensor's shape)."""
        if self.held:
            return self.array[i]
        raw = self._experts[i].get(self.name).reshape(-1)
        out = np.empty(self.size)
        for lo, hi in self.bounds():  # the base read by blocks
            np.subtract(raw[lo:hi], self._base_rows(lo, hi), out=out[lo:hi], dtype=np.float64)
        del raw
        return self._finite(out).reshape(self.shape[1:])

    def block(self, lo: int, hi: int) -> np.ndarray:
        """Entries ``lo:hi`` (row-aligned, :meth:`bounds`) of every expert: ``[n, hi - lo]``."""
        n = self.shape[0]
        if self.held:
            flat = self.array.reshape(n, -1)
            return flat if (lo, hi) == (0, self.size) else np.ascontiguousarray(flat[:, lo:hi])
        out = np.empty((n, hi - lo))
        theta0 = self._base_rows(lo, hi)
        rows = (lo // self._row, hi // self._row)
        for i, e in enumerate(self._experts):
            np.subtract(e.get(self.name, rows).reshape(-1), theta0, out=out[i], dtype=np.float64)
        return self._finite(out)

    def blocks(self) -> Iterator[np.ndarray]:
        """:meth:`block` over :meth:`bounds`."""
        for lo, hi in self.bounds():
            yield self.block(lo, hi)


class RowSpill:
    """``n`` float64 rows of ``size`` entries in an unlinked temporary file.

    Write the rows in order (:meth:`write`), then read column blocks (:meth:`block`).
    The file has no name on disk, so nothing is left behind by a killed process.
    Use as a context manager (closes the file).

    Args:
      num_rows: ``n``.
      size: entries per row.
      folder: where the file goes (default: the system's temporary folder).
    """

    def __init__(self, num_rows: int, size: int, folder: str | None = None) -> None:
        self._f = tempfile.TemporaryFile(dir=folder)
        self._n, self._size, self._written = num_rows, size, 0

    def __enter__(self) -> RowSpill:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close (and so delete) the file."""
        self._f.close()

    def write(self, row: np.ndarray) -> None:
        """Append the next row (``size`` entries, converted to float64)."""
        row = np.ascontiguousarray(row, np.float64).reshape(-1)
        if row.size != self._size or self._written >= self._n:
            raise ValueError(f"row {self._written}: {row.size} entries, expected {self._size}")
        os.pwrite(self._f.fileno(), memoryview(row).cast("B"), self._written * self._size * 8)
        self._written += 1

    def block(self, lo: int, hi: int) -> np.ndarray:
        """Columns ``lo:hi`` of every row: ``[n, hi - lo]`` float64."""
        out = np.empty((self._n, hi - lo))
        fd = self._f.fileno()
        for i in range(self._n):
            view = memoryview(out[i]).cast("B")
            got = os.preadv(fd, [view], (i * self._size + lo) * 8)
            if got != view.nbytes:
                raise OSError(f"short read of spilled row {i}: {got} of {view.nbytes} bytes")
        return out
