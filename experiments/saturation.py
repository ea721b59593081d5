r"""H-bound, H-lower, H-saturation and H-correlated (claims C1, C2): bounds and saturation.

Three parts, all from :mod:`mergetheory.theory.saturation`:

1. **Bounds on measured curves.** For every sampler family (isotropic, correlated,
   sparse, LoRA, heavy-tailed; ``N`` experts in ``D`` dimensions) and ``kind`` in
   ``hull`` / ``hull0``: the nested width :math:`w(S_n)`, the upper bound
   :math:`R_n\min(\sqrt{2\log p}, \mathbb E\chi_{r_n})`, the Sudakov-Fernique lower bound
   :math:`(\delta_n/\sqrt2)E_p` and the coverage :math:`w/R_n`
   (:func:`~mergetheory.theory.saturation.check_width_bounds`).
2. **Correlated family.** For each :math:`\rho`: the exact per-path identity
   :math:`h_\tau = \sqrt\rho\langle g, c\rangle + \sqrt{1-\rho}\,h_\varepsilon`
   (:func:`~mergetheory.theory.saturation.check_correlated_shrinkage`) and the coverage
   curve of ``CorrelatedSpec`` experts against :math:`\sqrt{1-\rho}\,E_n`.
3. **Effective-dimension cap.** ``N`` isotropic experts in a ``d``-dimensional space: the
   coverage saturates at :math:`\mathbb E\chi_d`; report the fraction of the cap reached
   and the first ``n`` reaching 90 % of it.

Keys: ``seed -> (bounds, correlated, cap)``, each split into task and width keys and
``fold_in`` by family / rho / d. Output: ``<out-dir>/saturation.npz`` + ``.json``
(``config.summary`` feeds ``paper/sections/saturation.md``).

Run: ``python -m experiments.saturation [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import experiment_main
from experiments.concavity import draw_family
from mergetheory.geometry import ConvexHull
from mergetheory.geometry.closed_forms import expected_chi, expected_max_normal
from mergetheory.tasks import CorrelatedSpec, GaussianSpec, sample_task_vectors
from mergetheory.theory.saturation import check_correlated_shrinkage, check_width_bounds
from mergetheory.theory.subsets import generator_gram

NAME = "saturation"
KINDS = ("hull", "hull0")


class SaturationConfig(NamedTuple):
    """Frozen configuration.

    Attributes:
      seed: the one integer every PRNG key derives from.
      num_experts: ``N`` for part 1.
      shape: shape of one task vector in part 1 (``D`` = its size).
      families: ``(label, family, parameter)`` as in ``experiments.concavity``.
      num_samples: Monte Carlo paths per curve in part 1.
      rho_grid: correlations of part 2.
      corr_num_experts: ``n`` of part 2.
      corr_dim: ``D`` of part 2.
      corr_num_samples: Gaussian paths of part 2 (identity and curves).
      cap_dims: effective dimensions ``d`` of part 3.
      cap_num_experts: ``N`` of part 3.
      cap_num_samples: paths of part 3.
      cap_level: fraction of the cap that defines ``n_cap``.
      z: significance in standard errors.
      dtype: dtype of the task vectors.
    """

    seed: int = 20261125
    num_experts: int = 64
    shape: tuple[int, ...] = (64, 64)
    families: tuple[tuple[str, str, float], ...] = (
        ("isotropic", "gaussian", 0.0),
        ("correlated rho=0.5", "correlated", 0.5),
        ("sparse f=0.05", "sparse", 0.05),
        ("LoRA r=4", "lora", 4),
        ("heavy-tailed nu=2.5", "heavy", 2.5),
    )
    num_samples: int = 20_000
    rho_grid: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
    corr_num_experts: int = 32
    corr_dim: int = 1024
    corr_num_samples: int = 8000
    cap_dims: tuple[int, ...] = (2, 4, 8, 16)
    cap_num_experts: int = 256
    cap_num_samples: int = 8000
    cap_level: float = 0.9
    z: float = 3.0
    dtype: str = "float64"


QUICK_CONFIG = SaturationConfig(
    num_experts=12,
    shape=(16, 16),
    families=(("isotropic", "gaussian", 0.0), ("LoRA r=2", "lora", 2)),
    num_samples=2000,
    rho_grid=(0.0, 0.5, 0.9),
    corr_num_experts=8,
    corr_dim=128,
    corr_num_samples=1000,
    cap_dims=(2, 4),
    cap_num_experts=32,
    cap_num_samples=1000,
)


def run(config: SaturationConfig, *, progress: bool = True) -> tuple[dict, dict]:
    """Run the three parts; return ``(arrays, summary)``."""
    dtype = jnp.dtype(config.dtype)
    root = jr.key(config.seed)
    key_bounds, key_corr, key_cap = jr.split(root, 3)
    bar = tqdm(
        total=len(config.families) + len(config.rho_grid) + len(config.cap_dims),
        desc=NAME,
        leave=False,
        disable=not progress,
    )

    # part 1 -------------------------------------------------------------------------
    n = config.num_experts
    num_f = len(config.families)
    fields = ("width", "width_stderr", "upper", "lower", "coverage", "coverage_stderr", "radius")
    from_curve = {"width": "mean", "width_stderr": "stderr"}  # the rest are evidence fields
    p1 = {f"bounds_{k}": np.zeros((num_f, len(KINDS), n)) for k in fields}
    p1["bounds_cap"] = np.zeros((num_f, len(KINDS), n))
    verdicts1: dict[tuple[int, int], str] = {}
    kt, kw = jr.split(key_bounds)
    for f, (_, fam, param) in enumerate(config.families):
        tv = draw_family(jr.fold_in(kt, f), fam, param, n, config.shape, dtype)
        hull = ConvexHull.from_gram(generator_gram(tv))  # a set, not a bare Gram array
        for k, kind in enumerate(KINDS):
            ev = check_width_bounds(
                jr.fold_in(jr.fold_in(kw, f), k),
                hull,
                kind=kind,
                num_samples=config.num_samples,
                z=config.z,
            )
            for name in fields:
                source = ev.curve if name in from_curve else ev
                p1[f"bounds_{name}"][f, k] = getattr(source, from_curve.get(name, name))
            p1["bounds_cap"][f, k] = ev.cap
            verdicts1[(f, k)] = ev.verdict
        bar.update()

    # part 2 -------------------------------------------------------------------------
    nc, num_r = config.corr_num_experts, len(config.rho_grid)
    kt2, kw2, kid = jr.split(key_corr, 3)
    p2: dict[str, np.ndarray] = {
        "corr_coverage": np.zeros((num_r, nc)),
        "corr_coverage_stderr": np.zeros((num_r, nc)),
        "corr_predicted": np.zeros((num_r, nc)),
        "corr_identity_residual": np.zeros(num_r),
        "corr_width_tau": np.zeros((num_r, 2)),
        "corr_width_eps_scaled": np.zeros((num_r, 2)),
        "corr_difference_z": np.zeros(num_r),
    }
    verdicts2 = []
    e_n = np.array([expected_max_normal(m) for m in range(1, nc + 1)])
    for r, rho in enumerate(config.rho_grid):
        ev = check_correlated_shrinkage(
            jr.fold_in(kid, r),
            num_tasks=nc,
            rho=float(rho),
            dim=config.corr_dim,
            num_samples=config.corr_num_samples,
            dtype=dtype,
        )
        p2["corr_identity_residual"][r] = ev.identity_residual
        p2["corr_width_tau"][r] = ev.width_tau
        s1 = np.sqrt(1.0 - rho)
        p2["corr_width_eps_scaled"][r] = (s1 * ev.width_eps[0], s1 * ev.width_eps[1])
        p2["corr_difference_z"][r] = ev.difference_z
        verdicts2.append(ev.verdict)
        spec = CorrelatedSpec(nc, float(rho), exact_norm=True)
        tv = sample_task_vectors(jr.fold_in(kt2, r), spec, {"w": (config.corr_dim,)}, dtype)
        cev = check_width_bounds(
            jr.fold_in(kw2, r), tv, kind="hull", num_samples=config.corr_num_samples
        )
        p2["corr_coverage"][r] = cev.coverage
        p2["corr_coverage_stderr"][r] = cev.coverage_stderr
        p2["corr_predicted"][r] = s1 * e_n
        bar.update()

    # part 3 -------------------------------------------------------------------------
    ncap, num_d = config.cap_num_experts, len(config.cap_dims)
    kt3, kw3 = jr.split(key_cap)
    p3 = {
        "cap_coverage": np.zeros((num_d, ncap)),
        "cap_coverage_stderr": np.zeros((num_d, ncap)),
        "cap_value": np.zeros(num_d),
        "cap_fraction": np.zeros(num_d),
        "cap_n_level": np.zeros(num_d, dtype=np.int64),
        "cap_upper_log": np.zeros((num_d, ncap)),
    }
    verdicts3 = []
    for j, d in enumerate(config.cap_dims):
        spec = GaussianSpec(ncap, exact_norm=True)
        tv = sample_task_vectors(jr.fold_in(kt3, j), spec, {"w": (int(d),)}, dtype)
        ev = check_width_bounds(
            jr.fold_in(kw3, j),
            tv["w"],
            kind="hull",
            num_samples=config.cap_num_samples,
            method="naive",
        )
        cap = expected_chi(int(d))
        p3["cap_coverage"][j] = ev.coverage
        p3["cap_coverage_stderr"][j] = ev.coverage_stderr
        p3["cap_value"][j] = cap
        p3["cap_fraction"][j] = ev.cap_fraction
        reached = np.nonzero(ev.coverage >= config.cap_level * cap)[0]
        p3["cap_n_level"][j] = int(reached[0] + 1) if reached.size else -1
        p3["cap_upper_log"][j] = ev.upper_log / ev.radius
        verdicts3.append(ev.verdict)
        bar.update()
    bar.close()

    arrays = {
        **p1,
        **p2,
        **p3,
        "ns": np.arange(1, n + 1),
        "corr_ns": np.arange(1, nc + 1),
        "cap_ns": np.arange(1, ncap + 1),
        "rho_grid": np.asarray(config.rho_grid),
        "cap_dims": np.asarray(config.cap_dims),
        "bounds_verdict_ok": np.array(
            [[verdicts1[(f, k)] == "holds" for k in range(len(KINDS))] for f in range(num_f)]
        ),
    }
    summary = _summary(config, arrays, verdicts1, verdicts2, verdicts3)
    return arrays, summary


def _summary(config, a, v1, v2, v3) -> dict:
    labels = [f[0] for f in config.families]
    n = config.num_experts
    rows = [
        f"| experts | set | w(S_{n}) | coverage w/R | upper U | w/U | lower L | w/L | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f, label in enumerate(labels):
        for k, kind in enumerate(KINDS):
            w, se = a["bounds_width"][f, k, -1], a["bounds_width_stderr"][f, k, -1]
            up, lo = a["bounds_upper"][f, k, -1], a["bounds_lower"][f, k, -1]
            cov = a["bounds_coverage"][f, k, -1]
            rows.append(
                f"| {label} | {kind} | {w:.4f} +- {se:.1g} | {cov:.3f} | {up:.3f} | "
                f"{w / up:.3f} | {lo:.3f} | {w / lo if lo > 0 else float('nan'):.3f} | "
                f"{v1[(f, k)]} |"
            )
    corr_rows = [
        f"| rho | coverage at n={config.corr_num_experts} | sqrt(1-rho) E_n | "
        "per-path residual | verdict |",
        "|---|---|---|---|---|",
    ]
    for r, rho in enumerate(config.rho_grid):
        corr_rows.append(
            f"| {rho:g} | {a['corr_coverage'][r, -1]:.4f} +- "
            f"{a['corr_coverage_stderr'][r, -1]:.1g} | {a['corr_predicted'][r, -1]:.4f} | "
            f"{a['corr_identity_residual'][r]:.1e} | {v2[r]} |"
        )
    cap_rows = [
        f"| d | cap E chi_d | coverage at n={config.cap_num_experts} | fraction of cap | "
        f"first n at {100 * config.cap_level:.0f}% |",
        "|---|---|---|---|---|",
    ]
    for j, d in enumerate(config.cap_dims):
        nl = int(a["cap_n_level"][j])
        cap_rows.append(
            f"| {d} | {a['cap_value'][j]:.4f} | {a['cap_coverage'][j, -1]:.4f} | "
            f"{a['cap_fraction'][j]:.3f} | {nl if nl > 0 else '> ' + str(config.cap_num_experts)} |"
        )
    up, lo = a["bounds_upper"][..., 2:], a["bounds_lower"][..., 2:]  # n >= 3
    w = a["bounds_width"][..., 2:]
    w_u = np.where(up > 0, w / np.where(up > 0, up, 1.0), np.nan)
    w_l = np.where(lo > 0, w / np.where(lo > 0, lo, 1.0), np.inf)
    iso = labels.index("isotropic") if "isotropic" in labels else 0
    all_bounds = all(v == "holds" for v in v1.values())
    return {
        "bounds_table": "\n".join(rows),
        "correlated_table": "\n".join(corr_rows),
        "cap_table": "\n".join(cap_rows),
        "num_experts": n,
        "dim": int(np.prod(config.shape)),
        "bounds_verdict": "holds" if all_bounds else "fails (see table)",
        "max_upper_ratio": float(np.nanmax(w_u)),
        "min_lower_ratio": float(np.nanmin(w_l)),
        "isotropic_hull_coverage": float(a["bounds_coverage"][iso, 0, -1]),
        "isotropic_hull_upper_log": float(np.sqrt(2 * np.log(n))),
        "isotropic_hull_en": float(expected_max_normal(n)),
        "correlated_verdict": "holds" if all(v == "holds" for v in v2) else "fails",
        "correlated_max_residual": float(np.max(a["corr_identity_residual"])),
        "correlated_max_abs_z": float(np.max(np.abs(a["corr_difference_z"]))),
        "cap_verdict": "holds" if all(v == "holds" for v in v3) else "fails",
        "cap_min_fraction": float(np.min(a["cap_fraction"])),
        "cap_max_fraction": float(np.max(a["cap_fraction"])),
        "cap_num_experts": config.cap_num_experts,
    }


main = experiment_main(NAME, __doc__, run, SaturationConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
