r"""Gaussian width and statistical dimension by Monte Carlo.

* :mod:`.estimators`: :func:`gaussian_width`, :func:`statistical_dimension`,
  :func:`nested_width` (and :func:`prepare_width` / :func:`run_width`, their two halves);
* :mod:`.engine`: the one Monte Carlo engine, :func:`run_monte_carlo` (one device, a
  mesh, or in blocks with a progress callback) and :func:`paired_paths` (common random
  numbers);
* :mod:`.sampler`: :func:`width_sampler`, one chunk of replicates from a chunk key;
* :mod:`.moments`: streamed :class:`SampleMoments`;
* :mod:`.sharding`: the Gram pass and the Monte Carlo pass across devices.
"""

from .engine import MonteCarloConfig as MonteCarloConfig
from .engine import paired_paths as paired_paths
from .engine import run_monte_carlo as run_monte_carlo
from .estimators import NestedWidthEstimate as NestedWidthEstimate
from .estimators import WidthConfig as WidthConfig
from .estimators import WidthEstimate as WidthEstimate
from .estimators import gaussian_width as gaussian_width
from .estimators import nested_width as nested_width
from .estimators import prepare_width as prepare_width
from .estimators import run_width as run_width
from .estimators import statistical_dimension as statistical_dimension
from .estimators import summarize_samples as summarize_samples
from .moments import SampleMoments as SampleMoments
from .moments import stream_moments as stream_moments
from .sampler import width_sampler as width_sampler
from .sharding import DEFAULT_AXIS as DEFAULT_AXIS
from .sharding import MonteCarloEstimate as MonteCarloEstimate
from .sharding import make_mesh as make_mesh
from .sharding import shard_task_vectors as shard_task_vectors
from .sharding import sharded_gaussian_width as sharded_gaussian_width
from .sharding import sharded_gram_matrix as sharded_gram_matrix
from .sharding import sharded_monte_carlo as sharded_monte_carlo
