r"""RHT / TIES / DARE (and plugin operators) on a pool on disk: coverage at equal norm budget.

The coverage comparison of :mod:`mergetheory.theory.rht` (hypothesis H-RHT, claim C5 of
arXiv 2505.21226) applied to a researcher's own experts. Each operator :math:`M` acts on
every expert alone, :math:`\tilde\tau_i = M(\{\tau_i\})` (``T = 1``): for ``rht`` that is
the released code's per-expert step (top-:math:`\rho` magnitudes divided by :math:`\rho`,
:func:`~mergetheory.theory.rht.rht_reparameterize`), for ``ties`` its trim step (magnitude
pruning), for ``dare_linear`` DARE's drop-and-rescale; any registered or plugin operator
works the same way. The *merged set* is the hull of the maps,
:math:`\mathrm{conv}\{\tilde\tau_i\}` (every weighted average of the mapped experts), and
its coverage :math:`c = w/R`, :math:`R = \max_i\|\tilde\tau_i\|`, is compared with that of
:math:`\mathrm{conv}\{\tau_i\}`. The log width gain splits exactly into a rescaling term
:math:`\log(R(\tilde T)/R(T))` and a geometric term, the gain left at equal norm budget
(:func:`~mergetheory.theory.rht.coverage_gain`, with paired standard errors).

Streaming: the operators run per tensor (per module for PEFT adapters, on its dense update
:math:`sBA`), as ``mergetheory merge`` applies them, over
:class:`~mergetheory.io.pool.TaskVectorTensors`; only the ``[n, n]`` Gram of each map is
kept (:class:`OperatorGrams`, fed by the same pass that accumulates the experts' Gram).
A width depends on a set only through its Gram, so
:func:`~mergetheory.theory.rht.coverage_gain` then runs on ``n``-dimensional factors
:math:`F F^\top = G` of the two Grams: the same estimator, the same decomposition and
verdict as on synthetic vectors.

Reference: Sources S1 C5 and S6 in ``paper/``; ``wang2025moreexperts``, ``yadav2023ties``,
``yu2024dare`` in ``paper/refs.bib``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..io.stack import TensorStack

__all__ = [
    "COVERAGE_OPERATORS",
    "OperatorGrams",
    "coverage_comparison",
    "gram_factor",
    "operator_hparams",
    "per_expert_grams",
]

COVERAGE_OPERATORS = ("rht", "ties", "dare_linear")
"""The operators every pool analysis compares (``analyze --operator`` adds more)."""


def gram_factor(gram: np.ndarray) -> np.ndarray:
    """``F`` ``[n, n]`` with ``F F^T = gram`` (eigendecomposition; negative round-off clipped)."""
    w, v = np.linalg.eigh(np.asarray(gram, np.float64))
    return v * np.sqrt(np.clip(w, 0.0, None))


def operator_hparams(name: str, density: float | None) -> tuple[Any, dict[str, Any]]:
    """The registry operator ``name`` and its hyperparameters for the comparison.

    The registry defaults, with ``density`` set when the operator takes one.

    Raises:
      ValueError: an unknown operator, or one that needs per-task data or the base (it
        cannot act on one expert alone).
    """
    from ..merge import get_operator

    try:
        op = get_operator(name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    if op.needs:
        raise ValueError(
            f"operator {name!r} needs {', '.join(op.needs)}: it cannot act on one expert alone"
        )
    hparams = dict(op.default_hparams)
    takes = inspect.signature(op.fn).parameters
    if density is not None and ("density" in hparams or "density" in takes):
        hparams["density"] = float(density)
    return op, hparams


class OperatorGrams:
    r"""Accumulates the ``[n, n]`` Gram of :math:`\tilde\tau_i = M(\{\tau_i\})` per operator.

    Feed it every tensor of the pool, ``update(t, name, x)`` with ``x`` the ``[n, ...]``
    task vectors of tensor number ``t``, e.g. as the ``visit`` callback of
    :func:`mergetheory.io.pool.stream_pool_statistics`, so that the coverage comparison
    shares the Gram pass's one read of the inputs.

    Args:
      operators: registered operator names.
      key: PRNG key; operator ``k`` on tensor ``t`` of expert ``i`` uses
        ``fold_in(fold_in(fold_in(key, k), t), i)``.
      num_experts: ``n``.
      density: passed to every operator that takes a ``density``.

    Attributes:
      grams: ``{name: gram}`` (float64), the sums so far.

    Raises:
      ValueError: (from ``update``) an operator fails on a tensor or gives NaN / Inf.

    Example:
      >>> acc = OperatorGrams(["ties"], jax.random.key(0), num_experts=3)
      >>> for t, (name, x) in enumerate(tensors):
      ...     acc.update(t, name, x)
    """

    def __init__(
        self, operators: Sequence[str], key: Any, *, num_experts: int, density: float | None = None
    ) -> None:
        self._ops = {name: operator_hparams(name, density) for name in operators}
        self._key, self._n = key, num_experts
        self.grams = {name: np.zeros((num_experts, num_experts)) for name in operators}

    def update(self, t: int, tname: str, x: TensorStack) -> None:
        """Add tensor number ``t`` (``x``: its ``[n, ...]`` task vectors, named ``tname``)
        to every Gram. The maps of a held tensor are kept in memory (``[n, size]``), those of
        a larger one in a :class:`~mergetheory.io.stack.RowSpill`, then summed over
        ``x.bounds()`` as the experts' Gram is."""
        if x.held:
            for k, name in enumerate(self._ops):
                y = np.empty((self._n, x.size))
                for i in range(self._n):
                    y[i] = self._map(k, name, t, i, tname, x.row(i)[None])
                self._add(name, tname, [y])
            return
        import jax.numpy as jnp

        from ..io.stack import RowSpill

        spills = [RowSpill(self._n, x.size) for _ in self._ops]
        try:
            for i in range(self._n):  # one expert's copy read at a time, every operator on it
                row = jnp.asarray(x.row(i)[None])  # the NumPy copy freed: one copy in memory
                for k, name in enumerate(self._ops):
                    spills[k].write(self._map(k, name, t, i, tname, row))
                del row
            for spill, name in zip(spills, self._ops, strict=True):
                self._add(name, tname, (spill.block(lo, hi) for lo, hi in x.bounds()))
        finally:
            for spill in spills:
                spill.close()

    def _map(self, k: int, name: str, t: int, i: int, tname: str, row: Any) -> np.ndarray:
        import jax.numpy as jnp
        import jax.random as jr

        op, hp = self._ops[name]
        key = jr.fold_in(jr.fold_in(jr.fold_in(self._key, k), t), i)
        try:
            out = op.fn({"t": jnp.asarray(row)}, key, **hp)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"operator {name!r} on tensor {tname}: {exc}") from None
        return np.asarray(out["t"], np.float64).reshape(-1)

    def _add(self, name: str, tname: str, blocks: Any) -> None:
        for y in blocks:
            if not np.all(np.isfinite(y)):
                raise ValueError(f"operator {name!r} on tensor {tname}: NaN / Inf output")
            self.grams[name] += y @ y.T


def per_expert_grams(
    tensors: Any,
    operators: Sequence[str],
    key: Any,
    *,
    density: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    r"""``[n, n]`` Gram of :math:`\tilde\tau_i = M(\{\tau_i\})` for each operator, in one pass.

    :class:`OperatorGrams` over its own pass of ``tensors`` (``analyze`` shares the Gram
    pass instead).

    Args:
      tensors: a :class:`~mergetheory.io.pool.TaskVectorTensors`.
      operators: registered operator names.
      key: PRNG key (as in :class:`OperatorGrams`).
      density: passed to every operator that takes a ``density``.
      progress: ``fn(stage, done, total)`` after each tensor.

    Returns:
      ``{name: gram}`` (float64).
    """
    acc = OperatorGrams(operators, key, num_experts=len(tensors.experts), density=density)
    for t, (tname, x) in enumerate(tensors):
        acc.update(t, tname, x)
        if progress:
            progress("coverage", t + 1, len(tensors))
    return acc.grams


def coverage_comparison(
    key: Any,
    gram: np.ndarray,
    grams: dict[str, np.ndarray],
    *,
    num_samples: int,
    kind: str = "hull",
    hparams: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    r"""Coverage of :math:`\mathrm{conv}\{\tau_i\}` against each operator's merged set.

    Every operator is measured with the same ``key`` (common random numbers across
    operators too), by :func:`mergetheory.theory.rht.coverage_gain` on factors of ``gram``
    and of ``grams[name]``.

    Args:
      key: PRNG key.
      gram: ``[n, n]`` Gram of the experts' task vectors.
      grams: ``{name: [n, n]}`` Grams of the per-expert maps (:func:`per_expert_grams`).
      num_samples: Gaussian samples.
      kind: ``"hull"`` or ``"hull0"``.
      hparams: the hyperparameters used, recorded per operator.

    Returns:
      ``{name: {field: value}}``, the fields of
      :class:`~mergetheory.theory.rht.CoverageEvidence` (``(mean, stderr)`` pairs as lists;
      ``width_equal_budget`` is :math:`w(\tilde T/s)`, the merged set shrunk to the
      experts' norm budget) plus ``hparams``.
    """
    import jax.numpy as jnp

    from ..theory.rht import coverage_gain

    f0 = jnp.asarray(gram_factor(gram))
    out = {}
    for name, g in grams.items():
        f1 = jnp.asarray(gram_factor(g))
        ev = coverage_gain(
            key, f0, lambda tv, k, f1=f1: f1, num_samples=num_samples, kind=kind
        )._asdict()
        ev["name"] = name
        del ev["param"]  # nan for a custom map: the hyperparameters are below
        ev["hparams"] = {k: v for k, v in (hparams or {}).get(name, {}).items() if _plain_scalar(v)}
        out[name] = ev
    return out


def _plain_scalar(v: Any) -> bool:
    return isinstance(v, bool | int | float | str) or v is None
