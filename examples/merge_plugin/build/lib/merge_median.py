r"""A merge operator published as a plugin: the coordinate-wise median of the task vectors.

.. math:: \mathrm{merged}_p = \lambda\,\mathrm{median}_t\, \tau_{t,p}

Not linear; permutation invariant; scale equivariant (median(a x) = a median(x), a > 0);
the identity for one task at ``scale = 1``. Registered through the entry point
``my_median = "merge_median:MEDIAN"`` (group ``mergetheory.operators``).
"""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from mergetheory.merge import MergeOperator
from mergetheory.tree import validate_task_vectors


@jax.jit
def _median_core(task_vectors, scale):
    return jtu.tree_map(lambda x: jnp.asarray(scale, x.dtype) * jnp.median(x, axis=0), task_vectors)


def elementwise_median(task_vectors, key, *, scale=1.0):
    """Coordinate-wise median of ``task_vectors`` (leaves ``[T, ...]``), times ``scale``."""
    del key  # deterministic
    validate_task_vectors(task_vectors)  # structure, shapes, dtypes, NaN / Inf: one-line errors
    return _median_core(task_vectors, scale)


MEDIAN = MergeOperator(
    fn=elementwise_median,
    linear=False,
    stochastic=False,
    permutation_invariant=True,
    identity_at_one=True,
    scale_equivariant=True,
    default_hparams={"scale": 1.0},
    identity_hparams={"scale": 1.0},
    continuous_hparams=("scale",),
    has_weights=False,
    description="coordinate-wise median of the task vectors, times scale",
)
