"""Analysis of a pool of real experts: the bridge from width to merged performance.

* :mod:`.bridge` -- performance curves over nested random subsets, paired second
  differences, Holm-corrected concavity tests, :math:`n^\\star` of a performance curve under
  the same definitions as the width curve, equal-norm rescaling;
* :mod:`.hessian` -- Hessian spectrum by stochastic Lanczos quadrature (Hessian-vector
  products, never the Hessian), the statistical dimension of the quadratic loss sublevel
  set and the kinematic :math:`n^\\star` it implies (reconstructions).
"""

from .bridge import N_STAR_DEFINITIONS as N_STAR_DEFINITIONS
from .bridge import ConcavityTest as ConcavityTest
from .bridge import NStarComparison as NStarComparison
from .bridge import PairedDifference as PairedDifference
from .bridge import compare_n_star as compare_n_star
from .bridge import concavity_test as concavity_test
from .bridge import holm as holm
from .bridge import n_star as n_star
from .bridge import nested_subsets as nested_subsets
from .bridge import normalized_performance as normalized_performance
from .bridge import paired_curve as paired_curve
from .bridge import paired_difference as paired_difference
from .bridge import rescale_to_norm as rescale_to_norm
from .bridge import subset_task_vectors as subset_task_vectors
from .bridge import width_paths as width_paths
from .bridge_verdicts import effect_sign_verdict as effect_sign_verdict
from .bridge_verdicts import forecast_verdict as forecast_verdict
from .bridge_verdicts import interval_verdict as interval_verdict
from .bridge_verdicts import nstar_agreement_verdict as nstar_agreement_verdict
from .bridge_verdicts import performance_concavity_verdict as performance_concavity_verdict
from .hessian import SpectrumEstimate as SpectrumEstimate
from .hessian import TraceEstimate as TraceEstimate
from .hessian import hessian_spectrum as hessian_spectrum
from .hessian import hvp_matvec as hvp_matvec
from .hessian import lanczos as lanczos
from .hessian import slq as slq
from .hessian import spectral_density as spectral_density
from .hessian import sublevel_statistical_dimension as sublevel_statistical_dimension
from .hessian import trace_estimate as trace_estimate

__all__ = [
    "N_STAR_DEFINITIONS",
    "ConcavityTest",
    "NStarComparison",
    "PairedDifference",
    "SpectrumEstimate",
    "TraceEstimate",
    "compare_n_star",
    "concavity_test",
    "effect_sign_verdict",
    "forecast_verdict",
    "hessian_spectrum",
    "holm",
    "hvp_matvec",
    "interval_verdict",
    "lanczos",
    "n_star",
    "nested_subsets",
    "normalized_performance",
    "nstar_agreement_verdict",
    "paired_curve",
    "paired_difference",
    "performance_concavity_verdict",
    "rescale_to_norm",
    "slq",
    "spectral_density",
    "sublevel_statistical_dimension",
    "subset_task_vectors",
    "trace_estimate",
    "width_paths",
]
