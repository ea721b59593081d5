"""mergetheory: the theory of model merging, in numbers you can check.

Layers (imports flow one way): :mod:`.tree` (pytree maths) <- :mod:`.tasks` (samplers) <-
:mod:`.merge` (operators, ``MERGE_OPERATORS``) <- :mod:`.sets` <- :mod:`.width` (Gaussian
width, statistical dimension) <- :mod:`.theory` / :mod:`.mergeability`. :mod:`.io`
and :mod:`.models` feed real task vectors into the same pipeline. Submodules stay importable
(``mergetheory.theory``, ``mergetheory.models``); the most used names are re-exported here,
imported on first use (PEP 562), so that ``import mergetheory`` (and the ``mergetheory``
command's ``--help``) does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("merge", "theory")

_EXPORTS: dict[str, str] = {
    "_types": "is_lora_factors",
    "closed_forms": (
        "circular_cone_statdim circular_cone_statdim_approx circular_cone_width expected_chi "
        "expected_max_normal expected_max_normal_with_zero finite_set_width_bound "
        "kinematic_a_eta l1_ball_width l2_ball_width linf_ball_width orthant_statdim "
        "orthant_width subspace_statdim subspace_width zonotope_width"
    ),
    "diagnostics": (
        "DiagnosticsOutput KinshipOutput SignConflictOutput cosine_matrix "
        "interference_diagnostics mean_off_diagonal model_kinship sign_conflict "
        "singular_interference"
    ),
    "io": (
        "CheckpointError PeftAdapter flatten_tree load_checkpoint load_msgpack load_orbax "
        "load_peft_adapter load_safetensors peft_dense_update save_msgpack save_orbax "
        "save_peft_adapter save_safetensors stack_peft_adapters task_vectors_from_checkpoints "
        "unflatten_tree validate_lineage"
    ),
    "lora": (
        "LoraFactors LoraShape densify gemma2_2b_lora_shapes lora_dense_size lora_gram_matrix "
        "lora_num_tasks sample_lora_factors split_factors validate_mixed_task_vectors"
    ),
    "merge": "MERGE_OPERATORS MergeOperator",
    "mergeability": (
        "BinomialNullTest MergeabilityEstimate ModerationTest base_margin binomial_null_test "
        "moderation_test sample_partners"
    ),
    "stats": (
        "CorrelationEstimate bootstrap_correlation hypothesis_verdict pearson_correlation "
        "rankdata spearman_correlation"
    ),
    "sets": (
        "SET_KINDS CircularCone ConvexHull ConvexHullWithOrigin Ellipsoid GeneratedSet L1Ball "
        "L2Ball LinfBall NonnegativeOrthant PointSet PolyhedralCone ReferenceSet Span "
        "Zonotope cone_projection_sq_norm default_rank_rtol make_set nnls_gram operator_image "
        "psd_cholesky span_pivot_mask validate_gram"
    ),
    "sharding": (
        "DEFAULT_AXIS MonteCarloEstimate make_mesh shard_task_vectors sharded_gaussian_width "
        "sharded_gram_matrix sharded_monte_carlo"
    ),
    "tasks": (
        "CorrelatedSpec GaussianSpec HeavyTailedSpec LoRASpec SignConflictSpec SparseSpec "
        "TaskSpec expected_sign_agreement expected_sign_conflict expected_support_overlap "
        "sample_task_vectors shape_tree"
    ),
    "tree": (
        "TaskVectorError accumulation_dtype check_dense check_finite check_same_structure "
        "gram_2d gram_matrix leaf_paths num_tasks ravel_tasks sum_tasks tree_add tree_norm "
        "tree_scale tree_stack tree_sub tree_unstack tree_vdot tree_weighted_sum "
        "tree_zeros_like validate_task_vectors"
    ),
    "width": (
        "NestedWidthEstimate SampleMoments WidthEstimate gaussian_width nested_width "
        "statistical_dimension stream_moments summarize_samples width_sampler"
    ),
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
