r"""Interference diagnostics of correlated synthetic task vectors, swept over n and rho.

For every correlation :math:`\rho` in ``rho_grid`` and replicate ``r``, draw
``n_max = max(num_tasks_grid)`` task vectors from ``CorrelatedSpec(n_max, rho, norm)``
(:math:`\tau_t = \sqrt\rho\, c + \sqrt{1-\rho}\,\varepsilon_t`) and, for every ``n`` in
``num_tasks_grid``, measure the first ``n`` of them (nested sets: common random numbers
across ``n``, so curves in ``n`` are smooth within a replicate):

* mean off-diagonal cosine (signed and absolute); theory :math:`\approx \rho`;
* pooled sign-conflict rate against the TIES mass-elected sign; theory
  :math:`\arccos\sqrt{(1 + (n-1)\rho)/n}/\pi` (``expected_sign_conflict``);
* TSV singular interference, summed over the 2-D leaves;
* model kinship: mean off-diagonal PCC, CS (``|cos|``) and ED; theory for ED
  :math:`\approx \text{norm}\sqrt{2(1-\rho)}`.

Each quantity is averaged over replicates and reported with its standard error
``std(ddof=1) / sqrt(num_replicates)``; arrays are ``[len(num_tasks_grid), len(rho_grid)]``.
All keys derive from ``config.seed``. Output: ``<out-dir>/diagnostics.npz`` + ``.json``.

Run: ``python -m experiments.diagnostics [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from tqdm import tqdm

from experiments import experiment_main
from mergetheory.diagnostics import interference_diagnostics, mean_off_diagonal
from mergetheory.tasks import CorrelatedSpec, expected_sign_conflict, sample_task_vectors

NAME = "diagnostics"

METRICS = ("cosine", "abs_cosine", "sign_conflict", "tsv_interference", "pcc", "cs", "ed")
"""Recorded quantities; each is saved as ``<metric>_mean`` and ``<metric>_stderr``."""


class DiagnosticsConfig(NamedTuple):
    """Frozen configuration of the diagnostics sweep.

    Attributes:
      seed: the one integer every PRNG key derives from.
      num_tasks_grid: values of ``n`` (number of experts), increasing.
      rho_grid: correlations of the shared component.
      shapes: ``((leaf name, shape), ...)`` of one task vector.
      num_replicates: independent draws per ``rho``.
      norm: root-mean-square norm of each task vector.
      top_k: per-task truncation of the TSV interference (None: full rank).
      dtype: dtype of the task vectors.
    """

    seed: int = 20261123
    num_tasks_grid: tuple[int, ...] = (2, 4, 8, 16, 32)
    rho_grid: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.8)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("layer1/kernel", (48, 24)),
        ("layer1/bias", (24,)),
        ("layer2/kernel", (24, 12)),
        ("layer2/bias", (12,)),
    )
    num_replicates: int = 12
    norm: float = 1.0
    top_k: int | None = None
    dtype: str = "float64"


QUICK_CONFIG = DiagnosticsConfig(
    num_tasks_grid=(2, 4, 8),
    rho_grid=(0.0, 0.5, 0.8),
    shapes=(("layer1/kernel", (32, 16)), ("layer1/bias", (16,))),
    num_replicates=6,
)


def _one_replicate(task_vectors, top_k):
    out = interference_diagnostics(task_vectors, top_k=top_k)
    return {
        "cosine": mean_off_diagonal(out.cosine),
        "abs_cosine": mean_off_diagonal(out.cosine, absolute=True),
        "sign_conflict": out.sign_conflict.overall,
        "tsv_interference": out.singular_interference,
        "pcc": mean_off_diagonal(out.kinship.pcc),
        "cs": mean_off_diagonal(out.kinship.cs),
        "ed": mean_off_diagonal(out.kinship.ed),
    }


def run(config: DiagnosticsConfig, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Run the sweep and return the arrays to save (see the module docstring)."""
    dtype = jnp.dtype(config.dtype)
    shapes = dict(config.shapes)
    n_max = max(config.num_tasks_grid)
    rhos = jnp.asarray(config.rho_grid, dtype)
    num_rho, num_rep = len(config.rho_grid), config.num_replicates

    key_tasks = jr.fold_in(jr.key(config.seed), 0)  # the only randomness: the task draws
    keys = jr.split(key_tasks, (num_rho, num_rep))

    def draw(key, rho):
        return sample_task_vectors(key, CorrelatedSpec(n_max, rho, config.norm), shapes, dtype)

    tv = jax.jit(jax.vmap(jax.vmap(draw, in_axes=(0, None)), in_axes=(0, 0)))(keys, rhos)

    # One rho at a time (a Python loop over jitted vmaps, the same compiled program for
    # every rho): memory is set by one rho's replicates, since the TSV interference holds
    # a few [n k, n k] matrices per replicate. Not jax.lax.map: on jax 0.10.2 XLA:CPU
    # deadlocked running interference_diagnostics inside a scan / lax.map loop.
    measure = jax.jit(jax.vmap(lambda t: _one_replicate(t, config.top_k)))

    per_n = []
    for n in tqdm(config.num_tasks_grid, desc=NAME, leave=False, disable=not progress):
        rows = []
        for j in range(num_rho):
            sub = jtu.tree_map(lambda x, n=n, j=j: x[j, :, :n], tv)
            rows.append(jax.device_get(measure(sub)))  # {metric: [num_rep]}
        per_n.append({m: np.stack([r[m] for r in rows]) for m in METRICS})  # [rho, rep]

    out: dict[str, np.ndarray] = {
        "num_tasks_grid": np.asarray(config.num_tasks_grid),
        "rho_grid": np.asarray(config.rho_grid),
    }
    for m in METRICS:
        vals = np.stack([np.asarray(d[m]) for d in per_n])  # [n, rho, rep]
        out[f"{m}_mean"] = vals.mean(axis=-1)
        out[f"{m}_stderr"] = vals.std(axis=-1, ddof=1) / np.sqrt(num_rep)
    grid_n = np.asarray(config.num_tasks_grid, np.float64)[:, None]
    grid_rho = np.asarray(config.rho_grid, np.float64)[None, :]
    out["cosine_theory"] = np.broadcast_to(grid_rho, out["cosine_mean"].shape).copy()
    out["sign_conflict_theory"] = expected_sign_conflict(grid_n, grid_rho)
    out["ed_theory"] = np.broadcast_to(
        config.norm * np.sqrt(2.0 * (1.0 - grid_rho)), out["ed_mean"].shape
    ).copy()
    return out


main = experiment_main(NAME, __doc__, run, DiagnosticsConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
