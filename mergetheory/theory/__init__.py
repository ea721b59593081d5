r"""Theory as testable hypotheses: one module per claim, each with its check and verdict.

Every module states a named hypothesis (precise statement, assumptions, "reconstruction"
where the source paper's statement is unknown), implements a numerical check returning
its evidence as a NamedTuple with uncertainties and a :class:`~mergetheory.verdict.Verdict`
(``"holds"``, ``"holds under stated assumptions"`` or ``"fails: ..."`` with the
counterexample), and is
run by ``experiments/<name>.py``, drawn by ``figures/fig_<name>.py`` and reported in
``paper/sections/<name>.md``.

* :mod:`~mergetheory.theory.threshold` -- H-threshold, the optimal number of experts
  :math:`n^\star` (claim C4 of arXiv 2505.21226, reconstruction), three definitions;
* :mod:`~mergetheory.theory.kinematic` -- H-kinematic, the Approximate Kinematic Formula
  (ALMT 2014) checked empirically on polyhedral cones;
* :mod:`~mergetheory.theory.scaling_law` -- H-scaling, the :math:`1/k` merging law
  (arXiv 2509.24244) on its exact quadratic model; its fits and the three-point forecast
  are in :mod:`~mergetheory.theory.scaling_fit`;
* :mod:`~mergetheory.theory.concavity` -- H-concavity, the marginal width of an extra
  expert (claim C3): strict concavity verdicts, counterexamples; its exact part, the
  per-path submodularity of the hull width and random-subset means, is in
  :mod:`~mergetheory.theory.subsets`;
* :mod:`~mergetheory.theory.saturation` -- H-bound / H-lower / H-saturation /
  H-correlated (claims C1, C2): sqrt(2 log n) and Sudakov-Fernique bounds, the
  effective-dimension cap, the exact sqrt(1 - rho) shrinkage;
* :mod:`~mergetheory.theory.rht` -- H-RHT (claim C5): coverage gain of per-expert
  reparameterizations split into rescaling and geometry.

This file is a plain re-export list: add one block per module.
"""

from .concavity import CONCAVITY_KINDS as CONCAVITY_KINDS
from .concavity import ConcavityDetails as ConcavityDetails
from .concavity import ConcavityEvidence as ConcavityEvidence
from .concavity import check_concavity as check_concavity
from .concavity import classify_concavity as classify_concavity
from .concavity import concavity_verdict as concavity_verdict
from .concavity import tiny_first_generators as tiny_first_generators
from .concavity import zonotope_width_closed_form as zonotope_width_closed_form
from .kinematic import IntersectionEstimate as IntersectionEstimate
from .kinematic import KinematicEvidence as KinematicEvidence
from .kinematic import StatDimEstimate as StatDimEstimate
from .kinematic import check_kinematic_formula as check_kinematic_formula
from .kinematic import cone_meets_subspace as cone_meets_subspace
from .kinematic import critical_subspace_dim as critical_subspace_dim
from .kinematic import haar_orthogonal as haar_orthogonal
from .kinematic import host_rng as host_rng
from .kinematic import intersection_probability as intersection_probability
from .kinematic import orthant_intersection_probability as orthant_intersection_probability
from .kinematic import statistical_dimension_nnls as statistical_dimension_nnls
from .rht import REPARAMETERIZATIONS as REPARAMETERIZATIONS
from .rht import CoverageEvidence as CoverageEvidence
from .rht import coverage_gain as coverage_gain
from .rht import dare_reparameterize as dare_reparameterize
from .rht import heavy_tailed_reparameterize as heavy_tailed_reparameterize
from .rht import magnitude_prune_reparameterize as magnitude_prune_reparameterize
from .rht import predicted_correlation as predicted_correlation
from .rht import predicted_geometry_gain as predicted_geometry_gain
from .rht import predicted_norm_ratio as predicted_norm_ratio
from .rht import rht_reparameterize as rht_reparameterize
from .rht import student_t_mixing_factor as student_t_mixing_factor
from .saturation import CorrelatedShrinkageEvidence as CorrelatedShrinkageEvidence
from .saturation import SaturationEvidence as SaturationEvidence
from .saturation import check_correlated_shrinkage as check_correlated_shrinkage
from .saturation import check_width_bounds as check_width_bounds
from .saturation import min_pairwise_distance as min_pairwise_distance
from .saturation import width_lower_bound as width_lower_bound
from .saturation import width_upper_bound as width_upper_bound
from .scaling_fit import ForecastOutput as ForecastOutput
from .scaling_fit import ScalingLawFit as ScalingLawFit
from .scaling_fit import fit_scaling_law as fit_scaling_law
from .scaling_fit import scaling_law_curve as scaling_law_curve
from .scaling_fit import three_point_forecast as three_point_forecast
from .scaling_law import MergeLossSimulation as MergeLossSimulation
from .scaling_law import QuadraticMergeProblem as QuadraticMergeProblem
from .scaling_law import ScalingLawEvidence as ScalingLawEvidence
from .scaling_law import check_scaling_law as check_scaling_law
from .scaling_law import expected_merge_loss as expected_merge_loss
from .scaling_law import expected_merge_loss_pool as expected_merge_loss_pool
from .scaling_law import finite_population_factor as finite_population_factor
from .scaling_law import limit_loss as limit_loss
from .scaling_law import merge_loss_variance as merge_loss_variance
from .scaling_law import pool_scaling_law_constants as pool_scaling_law_constants
from .scaling_law import quadratic_loss as quadratic_loss
from .scaling_law import random_quadratic_problem as random_quadratic_problem
from .scaling_law import scaling_law_constants as scaling_law_constants
from .scaling_law import simulate_merge_loss as simulate_merge_loss
from .subsets import SubmodularityEvidence as SubmodularityEvidence
from .subsets import check_submodularity as check_submodularity
from .subsets import generator_gram as generator_gram
from .subsets import subset_mean_width as subset_mean_width
from .subsets import subset_support as subset_support
from .threshold import KinematicThresholdOutput as KinematicThresholdOutput
from .threshold import ThresholdOutput as ThresholdOutput
from .threshold import WidthCurve as WidthCurve
from .threshold import threshold_gain_ratio as threshold_gain_ratio
from .threshold import threshold_gain_ratio_bootstrap as threshold_gain_ratio_bootstrap
from .threshold import threshold_kinematic as threshold_kinematic
from .threshold import threshold_utility as threshold_utility
from .threshold import width_curve as width_curve
