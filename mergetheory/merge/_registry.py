"""The merge-operator record type.

Every operator is a pure function ``fn(task_vectors, key, *, **hparams) -> merged``.
A :class:`MergeOperator` records that function together with the properties it *claims*;
``tests/merge/test_registry.py`` parametrizes over ``MERGE_OPERATORS`` and checks every claim,
so adding an operator is one function plus one registry line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple


class MergeOperator(NamedTuple):
    """An entry of the merge-operator registry.

    Attributes:
      fn: ``fn(task_vectors, key, **hparams) -> merged``.
      linear: ``fn(a X + b Y) == a fn(X) + b fn(Y)`` for fixed hyperparameters.
      stochastic: output depends on ``key``.
      permutation_invariant: permuting the task axis (and ``weights``, if given) leaves
        the output unchanged (in distribution, for stochastic operators: tested with a
        fixed key only when not stochastic).
      identity_at_one: with ``T = 1`` and ``identity_hparams`` the output equals the input.
      scale_equivariant: ``fn(a X) == a fn(X)`` for ``a > 0``.
      needs: names of extra *required* keyword arguments (per-task data such as
        ``base_accuracy``) or ``"base"`` when the base model is needed.
      default_hparams: hyperparameters used by the table-driven tests and the CLI.
      identity_hparams: overrides of ``default_hparams`` under which ``T = 1`` is the
        identity (e.g. ``density=1.0``).
      continuous_hparams: names of hyperparameters that may be traced (vmapped over).
      static_argnames: names of shape-determining (Python int / str / bool) hyperparameters.
      has_weights: the operator accepts a ``weights`` ``[T]`` argument.
      description: one line for ``mergetheory merge --help`` and the docs.
    """

    fn: Callable[..., Any]
    linear: bool = False
    stochastic: bool = False
    permutation_invariant: bool = True
    identity_at_one: bool = True
    scale_equivariant: bool = True
    needs: tuple[str, ...] = ()
    default_hparams: Mapping[str, Any] = {}
    identity_hparams: Mapping[str, Any] = {}
    continuous_hparams: tuple[str, ...] = ()
    static_argnames: tuple[str, ...] = ()
    has_weights: bool = True
    description: str = ""
