"""mergetheory: the theory of model merging, in numbers you can check.

Layers (imports flow one way): :mod:`.tree` (pytree maths) <- :mod:`.tasks` (samplers) <-
:mod:`.merge` (operators, ``MERGE_OPERATORS``) <- :mod:`.geometry` (sets that own their
support functions) <- :mod:`.width` (one Monte Carlo engine: Gaussian width, statistical
dimension) <- :mod:`.theory` / :mod:`.mergeability` / :mod:`.analysis`. :mod:`.io` and
:mod:`.models` feed real task vectors into the same pipeline.

This namespace holds the names a researcher uses day to day; everything else lives in its
subpackage (``mergetheory.geometry``, ``mergetheory.width``, ``mergetheory.merge``,
``mergetheory.io``, ...), which are importable as attributes too. Names are imported on
first use (PEP 562), so ``import mergetheory`` (and the ``mergetheory`` command's
``--help``) does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis diagnostics geometry io linalg lora merge mergeability models stats tasks "
    "theory tree verdict width"
).split()

_EXPORTS: dict[str, str] = {
    "tasks": (
        "sample_task_vectors GaussianSpec CorrelatedSpec SparseSpec HeavyTailedSpec "
        "SignConflictSpec LoRASpec"
    ),
    "lora": "LoraFactors LoraShape lora_gram_matrix sample_lora_factors densify",
    "tree": "gram_matrix tree_stack tree_unstack validate_task_vectors TaskVectorError",
    "merge": "MERGE_OPERATORS MergeOperator register_operator",
    "geometry": (
        "make_set ConvexHull ConvexHullWithOrigin Span PolyhedralCone Zonotope operator_image"
    ),
    "width": (
        "gaussian_width statistical_dimension nested_width WidthEstimate NestedWidthEstimate "
        "run_monte_carlo sharded_gaussian_width"
    ),
    "geometry.closed_forms": "expected_max_normal",
    "diagnostics": "interference_diagnostics",
    "io": (
        "load_checkpoint task_vectors_from_checkpoints load_peft_adapter stack_peft_adapters "
        "save_results load_results"
    ),
    "verdict": "Verdict",
}
"""Re-exported names (space-separated) by the submodule that defines them."""

_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names.split()}

__all__ = sorted([*_SUBMODULES, *_ORIGIN])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _ORIGIN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
