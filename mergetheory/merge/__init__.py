r"""Merge operators and the one registry table ``MERGE_OPERATORS``.

Every operator is a pure function ``fn(task_vectors, key, *, weights=None, **hparams)``
mapping a pytree of ``[T, ...]`` leaves to the same pytree without the task axis.
Deterministic operators ignore ``key`` (so every operator vmaps over keys the same way);
continuous hyperparameters (``density``, ``scale``, ``temperature``) are traced, so a sweep
is a ``vmap``; shape-determining options are static. Inputs are validated at the eager
entry (structure, shapes and dtypes always; NaN / Inf and value ranges when concrete), and
the work runs in a jitted core; operators whose maths is per tensor run a jitted per-leaf
kernel over the leaves (:func:`.leafwise.map_leaves`), compiled once per distinct leaf
shape.

:class:`MergeOperator` records the properties each operator claims;
``tests/merge/test_registry.py`` checks every claim for every entry. Adding an operator is
one function plus one line here (zoo operators go below the marker at the end); code
outside the library calls :func:`register_operator` or publishes an entry point in the
group ``mergetheory.operators`` (:mod:`.plugins`), and :mod:`mergetheory.testing` checks
any operator's claims.

Modules: :mod:`.linear` (average, Task Arithmetic, base-knowledge weighting),
:mod:`.ties` (TIES, magnitude pruning), :mod:`.dare` (DARE-linear, DARE-TIES),
:mod:`.rht` (the code-level RHT of arXiv 2505.21226), :mod:`.heavy_tailed` (its
parametric heavy-tailed form, a hypothesis), :mod:`.lora` (factor-wise vs
product-wise LoRA merging), :mod:`.tsv` and :mod:`.iso` (SVD-based, helpers in
:mod:`.svd`), :mod:`.breadcrumbs`, :mod:`.emr`, :mod:`.model_stock`, :mod:`.knots`.
Building blocks: :mod:`.primitives` (trim, DARE drop, sign election, disjoint
aggregation), :mod:`.topk` (exact top-k threshold), :mod:`.dare_mask` (DARE masks) and
:mod:`.kernels` (the XLA:CPU kernels beside their plain reference versions) and
:mod:`.leafwise` (per-leaf kernels over a pytree).
"""

from __future__ import annotations

from ._common import leaf_key_list as leaf_key_list
from ._registry import MergeOperator as MergeOperator
from .breadcrumbs import breadcrumbs as breadcrumbs
from .breadcrumbs import breadcrumbs_mask as breadcrumbs_mask
from .dare import dare_linear as dare_linear
from .dare import dare_linear_array as dare_linear_array
from .dare import dare_ties as dare_ties
from .dare import dare_ties_array as dare_ties_array
from .dare_mask import dare_keep_mask as dare_keep_mask
from .dare_mask import dare_keep_mask_rows as dare_keep_mask_rows
from .dare_mask import dare_keep_masks as dare_keep_masks
from .emr import EMROutput as EMROutput
from .emr import emr as emr
from .emr import emr_merge as emr_merge
from .emr import emr_task_update as emr_task_update
from .heavy_tailed import heavy_tailed_reparameterize as heavy_tailed_reparameterize
from .heavy_tailed import rht_heavy_tailed as rht_heavy_tailed
from .iso import iso_c as iso_c
from .iso import iso_cts as iso_cts
from .iso import iso_cts_factors as iso_cts_factors
from .knots import knots as knots
from .knots import knots_coordinates as knots_coordinates
from .knots import knots_dare_ties as knots_dare_ties
from .linear import average as average
from .linear import base_knowledge_weighted as base_knowledge_weighted
from .linear import base_knowledge_weights as base_knowledge_weights
from .linear import task_arithmetic as task_arithmetic
from .lora import lora_delta as lora_delta
from .lora import lora_deltawise as lora_deltawise
from .lora import lora_factorwise as lora_factorwise
from .model_stock import model_stock as model_stock
from .model_stock import model_stock_ratio as model_stock_ratio
from .model_stock import pairwise_cosine as pairwise_cosine
from .primitives import AGGREGATES as AGGREGATES
from .primitives import ELECTIONS as ELECTIONS
from .primitives import ZERO_SIGNS as ZERO_SIGNS
from .primitives import dare_drop_parts as dare_drop_parts
from .primitives import dare_rescale as dare_rescale
from .primitives import disjoint_aggregate as disjoint_aggregate
from .primitives import disjoint_merge as disjoint_merge
from .primitives import elect_and_merge as elect_and_merge
from .primitives import elect_sign as elect_sign
from .primitives import election_score as election_score
from .primitives import majority_sign as majority_sign
from .primitives import prune_by_threshold as prune_by_threshold
from .primitives import sign_of_score as sign_of_score
from .primitives import task_parts as task_parts
from .primitives import trim_parts as trim_parts
from .primitives import trim_top_k as trim_top_k
from .rht import rht as rht
from .rht import rht_array as rht_array
from .rht import rht_merge_thresholded as rht_merge_thresholded
from .svd import TSVFactors as TSVFactors
from .svd import polar_factor as polar_factor
from .ties import magnitude_prune as magnitude_prune
from .ties import magnitude_prune_array as magnitude_prune_array
from .ties import ties as ties
from .ties import ties_array as ties_array
from .ties import ties_kept as ties_kept
from .ties import ties_merge_thresholded as ties_merge_thresholded
from .topk import MAGNITUDE_FLOOR as MAGNITUDE_FLOOR
from .topk import magnitude_threshold as magnitude_threshold
from .topk import num_kept as num_kept
from .topk import topk_mask as topk_mask
from .tsv import tsv_c as tsv_c
from .tsv import tsv_m as tsv_m
from .tsv import tsv_m_factors as tsv_m_factors
from .tsv import tsv_m_from_triplets as tsv_m_from_triplets
from .tsv import tsv_m_triplets as tsv_m_triplets

_TIES_STATIC = (
    "trim",
    "keep_rule",
    "weights_before_election",
    "election",
    "aggregate",
    "zero_sign",
)

MERGE_OPERATORS: dict[str, MergeOperator] = {
    "average": MergeOperator(
        fn=average,
        per_tensor={},
        linear=True,
        description="weight averaging: sum_t w_t tau_t / sum_t w_t",
    ),
    "task_arithmetic": MergeOperator(
        fn=task_arithmetic,
        per_tensor={},
        linear=True,
        default_hparams={"scale": 1.0},
        identity_hparams={"scale": 1.0},
        continuous_hparams=("scale",),
        description="Task Arithmetic: lambda * sum_t w_t tau_t (Ilharco et al. 2023)",
    ),
    "ties": MergeOperator(
        fn=ties,
        per_tensor={"trim": "tensor"},
        default_hparams={"density": 0.2, "scale": 1.0},
        identity_hparams={"density": 1.0, "scale": 1.0},
        continuous_hparams=("density", "scale"),
        static_argnames=_TIES_STATIC,
        description="TIES: top-k trim, sign election by mass, disjoint mean (Yadav et al. 2023)",
    ),
    "magnitude_prune": MergeOperator(
        fn=magnitude_prune,
        per_tensor={"trim": "tensor"},
        default_hparams={"density": 0.2, "scale": 1.0},
        identity_hparams={"density": 1.0, "scale": 1.0},
        continuous_hparams=("density", "scale"),
        static_argnames=("trim", "keep_rule"),
        description="top-k magnitude pruning then a weighted sum (PEFT magnitude_prune)",
    ),
    "dare_linear": MergeOperator(
        fn=dare_linear,
        linear=True,
        stochastic=True,
        per_tensor={},
        default_hparams={"density": 0.5, "scale": 1.0},
        identity_hparams={"density": 1.0, "scale": 1.0},
        continuous_hparams=("density", "scale"),
        description="DARE: Bernoulli(density) keep, rescale 1/density, weighted sum",
    ),
    "dare_ties": MergeOperator(
        fn=dare_ties,
        stochastic=True,
        per_tensor={},
        default_hparams={"density": 0.5, "scale": 1.0},
        identity_hparams={"density": 1.0, "scale": 1.0},
        continuous_hparams=("density", "scale"),
        static_argnames=_TIES_STATIC[2:],
        description="DARE then TIES sign election and disjoint mean (PEFT dare_ties)",
    ),
    "rht": MergeOperator(
        fn=rht,
        per_tensor={},
        default_hparams={"density": 0.7},
        identity_hparams={"density": 1.0},
        continuous_hparams=("density",),
        description="code-level RHT of arXiv 2505.21226: top-k / density, unweighted "
        "election, weighted sum over agreeing count",
    ),
    "rht_heavy_tailed": MergeOperator(
        fn=rht_heavy_tailed,
        stochastic=True,
        default_hparams={"nu": 3.0, "scale": 1.0},
        identity_hparams={"nu": float("inf"), "scale": 1.0},
        continuous_hparams=("nu", "scale"),
        description="parametric heavy-tailed RHT (hypothesis): Student-t(nu) scale mixing "
        "of each expert at its norm, then the weighted average",
    ),
    "base_knowledge_weighted": MergeOperator(
        fn=base_knowledge_weighted,
        per_tensor={},
        linear=True,
        needs=("base_accuracy",),
        default_hparams={"temperature": 0.1, "scale": 1.0},
        identity_hparams={"scale": 1.0},
        continuous_hparams=("temperature", "scale"),
        description="linear merge weighted by softmax((1 - base_accuracy) / temperature) "
        "(reconstruction of Rahamim et al. 2026)",
    ),
    # --- zoo operators (issue 5) ---
    "breadcrumbs": MergeOperator(
        fn=breadcrumbs,
        per_tensor={},
        default_hparams={"beta": 0.15, "gamma": 0.006, "scale": 0.2},
        identity_hparams={"beta": 1.0, "gamma": 0.0, "scale": 1.0},
        continuous_hparams=("beta", "gamma", "scale"),
        static_argnames=("scope",),
        description="Model Breadcrumbs: per row drop the top-gamma fraction by magnitude, keep "
        "the next beta, weighted sum times scale (Davari & Belilovsky 2024)",
    ),
    "emr": MergeOperator(
        fn=emr,
        per_tensor={},
        has_weights=False,
        static_argnames=("sign_rule",),
        description="EMR-Merging's unified task vector tau_uni = sgn(sum) * max agreeing "
        "|tau_t| ONLY; the per-task masks and rescalers are emr_merge (Huang et al. 2024)",
    ),
    "tsv_m": MergeOperator(
        fn=tsv_m,
        per_tensor={},
        default_hparams={"alpha": 1.0},
        continuous_hparams=("alpha",),
        static_argnames=("sv_reduction",),
        description="TSV-M: per 2-D leaf top floor(r/T) singular triplets per task, polar-"
        "orthogonalized U and V; other leaves mean (Gargiulo et al. 2025)",
    ),
    "iso_c": MergeOperator(
        fn=iso_c,
        per_tensor={},
        identity_at_one=False,
        default_hparams={"alpha": 1.0},
        continuous_hparams=("alpha",),
        description="Iso-C: per 2-D leaf SVD of sum_t tau_t with a flat spectrum "
        "mean(sigma) U V^T; other leaves mean (Marczak et al. 2025)",
    ),
    "iso_cts": MergeOperator(
        fn=iso_cts,
        per_tensor={},
        identity_at_one=False,
        default_hparams={"alpha": 1.0},
        continuous_hparams=("alpha",),
        static_argnames=("common_space_fraction",),
        description="Iso-CTS: common (0.8 r) plus per-task residual subspaces, polar-"
        "orthogonalized, flat spectrum; other leaves mean (Marczak et al. 2025)",
    ),
    "model_stock": MergeOperator(
        fn=model_stock,
        per_tensor={},
        has_weights=False,
        static_argnames=("cosine_average", "granularity"),
        description="Model Stock: t * mean_t tau_t, t = k cos / (1 + (k - 1) cos) with the "
        "mean pairwise cosine per tensor (Jang et al. 2024)",
    ),
    "knots": MergeOperator(
        fn=knots,
        per_tensor={"trim_scope": "tensor"},
        has_weights=False,
        default_hparams={"density": 0.2, "scale": 1.0},
        identity_hparams={"density": 1.0},
        continuous_hparams=("density", "scale"),
        static_argnames=("trim_scope",),
        description="KnOTS-TIES: shared SVD basis of [Delta_1|...|Delta_T] per 2-D leaf, "
        "official TIES on the coordinates diag(s) V_t^T (Stoica et al. 2025)",
    ),
    "knots_dare_ties": MergeOperator(
        fn=knots_dare_ties,
        stochastic=True,
        per_tensor={"trim_scope": "tensor"},
        has_weights=False,
        default_hparams={"density": 0.9, "trim_density": 1.0, "scale": 1.0},
        identity_hparams={"density": 1.0},
        continuous_hparams=("density", "scale"),
        static_argnames=("trim_scope",),
        description="KnOTS-DARE-TIES: DARE (keep prob. density) on the KnOTS coordinates, "
        "then TIES (Stoica et al. 2025)",
    ),
}

# the public registration API (after the table it extends)
from .plugins import BUILTIN_OPERATOR_NAMES as BUILTIN_OPERATOR_NAMES  # noqa: E402
from .plugins import PluginError as PluginError  # noqa: E402
from .plugins import get_operator as get_operator  # noqa: E402
from .plugins import load_plugins as load_plugins  # noqa: E402
from .plugins import operator_names as operator_names  # noqa: E402
from .plugins import register_operator as register_operator  # noqa: E402
from .plugins import unregister_operator as unregister_operator  # noqa: E402

__all__ = [
    "AGGREGATES",
    "BUILTIN_OPERATOR_NAMES",
    "PluginError",
    "get_operator",
    "load_plugins",
    "operator_names",
    "register_operator",
    "unregister_operator",
    "ELECTIONS",
    "EMROutput",
    "MAGNITUDE_FLOOR",
    "MERGE_OPERATORS",
    "MergeOperator",
    "TSVFactors",
    "ZERO_SIGNS",
    "average",
    "base_knowledge_weighted",
    "base_knowledge_weights",
    "breadcrumbs",
    "breadcrumbs_mask",
    "dare_drop_parts",
    "dare_keep_mask",
    "dare_keep_mask_rows",
    "dare_keep_masks",
    "leaf_key_list",
    "dare_linear",
    "dare_linear_array",
    "dare_rescale",
    "dare_ties",
    "dare_ties_array",
    "disjoint_aggregate",
    "disjoint_merge",
    "elect_and_merge",
    "elect_sign",
    "election_score",
    "emr",
    "emr_merge",
    "emr_task_update",
    "heavy_tailed_reparameterize",
    "iso_c",
    "iso_cts",
    "iso_cts_factors",
    "knots",
    "knots_coordinates",
    "knots_dare_ties",
    "lora_delta",
    "lora_deltawise",
    "lora_factorwise",
    "magnitude_prune",
    "magnitude_prune_array",
    "magnitude_threshold",
    "majority_sign",
    "model_stock",
    "model_stock_ratio",
    "num_kept",
    "pairwise_cosine",
    "polar_factor",
    "prune_by_threshold",
    "rht",
    "rht_array",
    "rht_merge_thresholded",
    "rht_heavy_tailed",
    "sign_of_score",
    "task_arithmetic",
    "task_parts",
    "ties",
    "ties_array",
    "ties_kept",
    "ties_merge_thresholded",
    "topk_mask",
    "trim_parts",
    "trim_top_k",
    "tsv_c",
    "tsv_m",
    "tsv_m_factors",
    "tsv_m_from_triplets",
    "tsv_m_triplets",
]
