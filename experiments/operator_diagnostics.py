r"""Every registered merge operator, measured on the same correlated experts, against n.

For each operator in :data:`mergetheory.merge.MERGE_OPERATORS` (by name, with its registry
``default_hparams``), each correlation :math:`\rho` and each ``n``, merge the first ``n`` of
``n_max`` task vectors drawn from ``CorrelatedSpec(n_max, rho, norm)`` and record

* **retention**: the mean over experts of :math:`\cos(\Delta, \tau_t)`, how much of each
  expert's direction the merged update keeps;
* **norm ratio**: :math:`\|\Delta\| / \overline{\|\tau_t\|}`;
* **sign conflict of the merge**: the fraction of the merged update's non-zero
  coordinates whose sign disagrees with an expert's non-zero coordinate, averaged over
  experts.

Operators that need per-task data get it from the config (``base_accuracy`` evenly spaced
in [0.2, 0.9]). Each quantity is a mean over replicates with its standard error; arrays
are ``[num_ops, len(num_tasks_grid), len(rho_grid)]``. All keys derive from
``config.seed`` (one fold for the task draws, one for the operators' own randomness).

Run: ``python -m experiments.operator_diagnostics [--quick] [--out-dir DIR]``.
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
from mergetheory import tree
from mergetheory.merge import MERGE_OPERATORS
from mergetheory.tasks import CorrelatedSpec, sample_task_vectors

NAME = "operator_diagnostics"
METRICS = ("retention", "norm_ratio", "merge_sign_conflict")


class OperatorDiagnosticsConfig(NamedTuple):
    """Frozen configuration (see the module docstring)."""

    seed: int = 20261123
    num_tasks_grid: tuple[int, ...] = (2, 4, 8, 16)
    rho_grid: tuple[float, ...] = (0.0, 0.5)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("layer1/kernel", (32, 16)),
        ("layer1/bias", (16,)),
    )
    num_replicates: int = 4
    norm: float = 1.0
    dtype: str = "float64"


QUICK_CONFIG = OperatorDiagnosticsConfig(num_tasks_grid=(2, 4), rho_grid=(0.5,), num_replicates=2)


def _measure(tv, merged):
    flat, _ = tree.ravel_tasks(tv)
    m, _ = tree.ravel_tasks(jtu.tree_map(lambda x: x[None], merged))
    m = m[0]
    norms = jnp.linalg.norm(flat, axis=1)
    m_norm = jnp.linalg.norm(m)
    cos = flat @ m / (norms * jnp.maximum(m_norm, 1e-300))
    both = (flat != 0) & (m != 0)[None, :]
    disagree = both & (jnp.sign(flat) != jnp.sign(m)[None, :])
    conflict = disagree.sum(1) / jnp.maximum(both.sum(1), 1)
    return {
        "retention": jnp.mean(cos),
        "norm_ratio": m_norm / jnp.mean(norms),
        "merge_sign_conflict": jnp.mean(conflict),
    }


def _extra_hparams(op, num, dtype):
    extra = {}
    if "base_accuracy" in op.needs:
        extra["base_accuracy"] = jnp.linspace(0.2, 0.9, num, dtype=dtype)
    return extra


def run(config: OperatorDiagnosticsConfig, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Run the sweep and return the arrays to save (see the module docstring)."""
    dtype = jnp.dtype(config.dtype)
    shapes = dict(config.shapes)
    n_max = max(config.num_tasks_grid)
    names = sorted(MERGE_OPERATORS)
    root = jr.key(config.seed)
    key_tasks, key_ops = jr.fold_in(root, 0), jr.fold_in(root, 1)
    num_rho, num_rep = len(config.rho_grid), config.num_replicates
    task_keys = jr.split(key_tasks, (num_rho, num_rep))
    op_keys = jr.split(key_ops, num_rep)

    vals = np.zeros((len(names), len(config.num_tasks_grid), num_rho, num_rep, len(METRICS)))
    bar = tqdm(
        total=len(names) * len(config.num_tasks_grid), desc=NAME, leave=False, disable=not progress
    )
    tvs = [
        [
            sample_task_vectors(
                task_keys[j, r], CorrelatedSpec(n_max, rho, config.norm), shapes, dtype
            )
            for r in range(num_rep)
        ]
        for j, rho in enumerate(config.rho_grid)
    ]
    for a, name in enumerate(names):
        op = MERGE_OPERATORS[name]
        for b, n in enumerate(config.num_tasks_grid):
            hp = {**op.default_hparams, **_extra_hparams(op, n, dtype)}
            for j in range(num_rho):
                for r in range(num_rep):
                    sub = jtu.tree_map(lambda x, n=n: x[:n], tvs[j][r])
                    merged = op.fn(sub, op_keys[r], **hp)
                    out = jax.device_get(_measure(sub, merged))
                    vals[a, b, j, r] = [float(out[m]) for m in METRICS]
            bar.update()
    bar.close()
    if not np.all(np.isfinite(vals)):
        bad = sorted({names[i] for i in np.argwhere(~np.isfinite(vals))[:, 0]})
        raise FloatingPointError(f"non-finite diagnostics for operators {bad}")
    arrays: dict[str, np.ndarray] = {
        "operators": np.asarray(names),
        "num_tasks_grid": np.asarray(config.num_tasks_grid),
        "rho_grid": np.asarray(config.rho_grid),
    }
    for i, m in enumerate(METRICS):
        arrays[f"{m}_mean"] = vals[..., i].mean(-1)
        arrays[f"{m}_stderr"] = vals[..., i].std(-1, ddof=1) / np.sqrt(num_rep)
    return arrays


main = experiment_main(NAME, __doc__, run, OperatorDiagnosticsConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
