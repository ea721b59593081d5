r"""H-concavity (claim C3): width of the merged set against the number of experts ``n``.

For every sampler family (isotropic, correlated, sparse, LoRA, heavy-tailed, plus the
adversarial *tiny-first* ordering of :func:`mergetheory.theory.concavity.tiny_first_generators`)
and every set family (hull, hull0, span, cone, zonotope), measure

* the **fixed-ordering** curve :math:`n \mapsto w(S_n)` (``nested_width``, common random
  numbers across ``n``), and
* the **random-subset mean** :math:`\bar w_n` (``subset_mean_width``: exact order-statistic
  average for hull / hull0 / zonotope, one random ordering per path for span / cone),

with paired second differences, their standard errors, and a verdict per curve
(:func:`mergetheory.theory.concavity.check_concavity`). Also: the zonotope closed form
:math:`\sum_{i\le n}\|\tau_i\|/\sqrt{2\pi}` and the per-path submodularity check
(:func:`~mergetheory.theory.concavity.check_submodularity`) for each set family.

Keys: ``seed -> (tasks, width, submodularity)``, then ``fold_in`` by family / kind /
ordering. Output: ``<out-dir>/concavity.npz`` + ``.json`` (``config.summary`` feeds
``paper/sections/concavity.md``).

Run: ``python -m experiments.concavity [--quick] [--out-dir DIR]``.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from tqdm import tqdm

from experiments import experiment_main
from mergetheory.geometry import ConvexHull
from mergetheory.tasks import family_spec, sample_task_vectors
from mergetheory.theory.concavity import (
    ConcavityDetails,
    check_concavity,
    check_submodularity,
    generator_gram,
    tiny_first_generators,
    zonotope_width_closed_form,
)
from mergetheory.verdict import FAILS, HOLDS, HOLDS_UNDER_ASSUMPTIONS, Verdict

NAME = "concavity"
ORDERINGS = ("fixed", "random_subsets")
ADVERSARIAL = "tiny-first"


class ConcavityConfig(NamedTuple):
    """Frozen configuration.

    Attributes:
      seed: the one integer every PRNG key derives from.
      num_experts: ``N``, experts per family (curves for ``n = 1..N``).
      shape: shape of one task vector (one 2-D leaf; LoRA adapts it).
      families: ``(label, family, parameter)``; family in ``gaussian``, ``correlated``
        (``rho``), ``sparse`` (support fraction), ``lora`` (rank), ``heavy`` (``nu``).
        Dense families use ``exact_norm=True`` (equal norms), LoRA does not.
      kinds: set families.
      num_samples: ``(kind, M)`` Monte Carlo paths per curve.
      tiny: norm of the tiny experts of the adversarial ordering.
      num_tiny: how many tiny experts come first.
      z: significance (standard errors) for the verdicts.
      submodular_sets: ``(A, B, t)`` indices for the submodularity check.
      submodular_samples: paths of the submodularity check.
      dtype: dtype of the task vectors.
    """

    seed: int = 20261124
    num_experts: int = 10
    shape: tuple[int, ...] = (32, 32)
    families: tuple[tuple[str, str, float], ...] = (
        ("isotropic", "gaussian", 0.0),
        ("correlated rho=0.5", "correlated", 0.5),
        ("sparse f=0.05", "sparse", 0.05),
        ("LoRA r=2", "lora", 2),
        ("heavy-tailed nu=2.5", "heavy", 2.5),
    )
    kinds: tuple[str, ...] = ("hull", "hull0", "span", "cone", "zonotope")
    num_samples: tuple[tuple[str, int], ...] = (
        ("hull", 40_000),
        ("hull0", 40_000),
        ("span", 20_000),
        ("cone", 2_000),
        ("zonotope", 40_000),
    )
    tiny: float = 0.01
    num_tiny: int = 2
    z: float = 3.0
    submodular_sets: tuple[tuple[int, ...], tuple[int, ...], int] = ((0,), (0, 1, 2, 3), 6)
    submodular_samples: int = 20_000
    dtype: str = "float64"


QUICK_CONFIG = ConcavityConfig(
    num_experts=6,
    shape=(16, 16),
    families=(("isotropic", "gaussian", 0.0), ("LoRA r=2", "lora", 2)),
    num_samples=(
        ("hull", 4000),
        ("hull0", 4000),
        ("span", 2000),
        ("cone", 200),
        ("zonotope", 4000),
    ),
    submodular_sets=((0,), (0, 1, 2), 4),
    submodular_samples=2000,
)


def draw_family(key, family: str, param: Any, num: int, shape, dtype) -> Any:
    """Task vectors ``[num, *shape]`` (or LoRA factors) of one sampler family, unit norm."""
    spec = family_spec(family, param, num, exact_norm=True)
    return sample_task_vectors(key, spec, {"w": tuple(shape)}, dtype)


def _verdict_code(verdict: Verdict) -> int:
    return {HOLDS: 0, HOLDS_UNDER_ASSUMPTIONS: 1}.get(verdict.status, 2)


def _failure(details: ConcavityDetails) -> str:
    """What a failing concavity verdict found: the convex step, or linear growth."""
    if details.convex_n is not None:
        return f"convex step at n={details.convex_n}"
    return "not strictly concave"


def _short(verdict: Verdict, details: ConcavityDetails) -> str:
    if verdict.status == HOLDS:
        return "holds"
    if verdict.holds:
        return "holds*"
    if details.convex_n is not None:
        return f"**fails** (convex at n={details.convex_n})"
    return "**fails** (linear)"


def run(config: ConcavityConfig, *, progress: bool = True) -> tuple[dict, dict]:
    """Run the sweep; return ``(arrays, summary)``."""
    dtype = jnp.dtype(config.dtype)
    root = jr.key(config.seed)
    key_tasks, key_width, key_sub = jr.split(root, 3)
    n = config.num_experts
    labels = [f[0] for f in config.families] + [ADVERSARIAL]
    num_f, num_k, num_o = len(labels), len(config.kinds), len(ORDERINGS)
    samples = dict(config.num_samples)

    gens = [
        draw_family(jr.fold_in(key_tasks, i), fam, p, n, config.shape, dtype)
        for i, (_, fam, p) in enumerate(config.families)
    ]
    dim = int(np.prod(config.shape))
    gens.append(
        tiny_first_generators(n, tiny=config.tiny, num_tiny=config.num_tiny, dim=dim, dtype=dtype)
    )
    # the sets are passed as generated sets (Gram only); a bare [N, N] array would be read
    # as N task vectors
    grams = [generator_gram(g) for g in gens]
    sets = [ConvexHull.from_gram(g) for g in grams]

    shape4 = (num_f, num_k, num_o)
    out = {
        name: np.zeros(shape4 + (size,))
        for name, size in (
            ("mean", n),
            ("stderr", n),
            ("diff1", n - 1),
            ("diff1_stderr", n - 1),
            ("diff2", n - 2),
            ("diff2_stderr", n - 2),
        )
    }
    for name in ("max_diff2_z", "elasticity", "elasticity_stderr", "gain_drop", "gain_drop_se"):
        out[name] = np.zeros(shape4)
    codes = np.zeros(shape4, dtype=np.int64)
    verdicts: dict[tuple[int, int, int], Verdict] = {}
    details: dict[tuple[int, int, int], ConcavityDetails] = {}

    jobs = [(f, k, o) for f in range(num_f) for k in range(num_k) for o in range(num_o)]
    for f, k, o in tqdm(jobs, desc=NAME, leave=False, disable=not progress):
        kind, ordering = config.kinds[k], ORDERINGS[o]
        key = jr.fold_in(jr.fold_in(jr.fold_in(key_width, f), k), o)
        ev = check_concavity(
            key,
            sets[f],
            kind=kind,
            ordering=ordering,
            num_samples=samples[kind],
            z=config.z,
        )
        for name in ("mean", "stderr", "diff1", "diff1_stderr", "diff2", "diff2_stderr"):
            out[name][f, k, o] = getattr(ev.curve, name)
        out["max_diff2_z"][f, k, o] = ev.details.max_diff2_z
        out["elasticity"][f, k, o] = ev.details.elasticity
        out["elasticity_stderr"][f, k, o] = ev.details.elasticity_stderr
        out["gain_drop"][f, k, o] = ev.details.gain_drop
        out["gain_drop_se"][f, k, o] = ev.details.gain_drop_stderr
        codes[f, k, o] = _verdict_code(ev.verdict)
        verdicts[(f, k, o)] = ev.verdict
        details[(f, k, o)] = ev.details

    zono = np.stack([zonotope_width_closed_form(s) for s in sets])  # [F, N]
    zk = config.kinds.index("zonotope") if "zonotope" in config.kinds else None
    zono_z = np.full((num_f,), np.nan)
    if zk is not None:
        m, s = out["mean"][:, zk, 0], out["stderr"][:, zk, 0]
        zono_z = np.max(np.abs(m - zono) / s, axis=1)

    a, b, t = config.submodular_sets
    sub_min = np.zeros(num_k)
    sub_frac = np.zeros(num_k)
    sub_slack = np.zeros((num_k, 2))
    sub_verdicts = []
    for k, kind in enumerate(config.kinds):
        ev = check_submodularity(
            jr.fold_in(key_sub, k),
            sets[0],
            list(a),
            list(b),
            t,
            kind=kind,
            num_samples=config.submodular_samples,
            z=config.z,
        )
        sub_min[k], sub_frac[k] = ev.min_path_slack, ev.frac_paths_violating
        sub_slack[k] = (ev.slack, ev.slack_stderr)
        sub_verdicts.append(ev.verdict)

    arrays = {
        **out,
        "verdict_code": codes,
        "ns": np.arange(1, n + 1),
        "zonotope_closed_form": zono,
        "zonotope_max_abs_z": zono_z,
        "submodular_min_path_slack": sub_min,
        "submodular_frac_violating": sub_frac,
        "submodular_slack": sub_slack,
    }
    summary = _summary(config, labels, arrays, verdicts, details, sub_verdicts)
    return arrays, summary


def _summary(config, labels, a, verdicts, details, sub_verdicts) -> dict:
    kinds = config.kinds
    header = "| experts | ordering | " + " | ".join(kinds) + " |"
    rows = [header, "|" + "---|" * (len(kinds) + 2)]
    for f, label in enumerate(labels):
        for o, ordering in enumerate(ORDERINGS):
            cells = [_short(verdicts[(f, k, o)], details[(f, k, o)]) for k in range(len(kinds))]
            rows.append(f"| {label} | {ordering.replace('_', ' ')} | " + " | ".join(cells) + " |")
    sub_rows = ["| set | per-path min slack | paths violating | verdict |", "|---|---|---|---|"]
    for k, kind in enumerate(kinds):
        short = sub_verdicts[k].status
        sub_rows.append(
            f"| {kind} | {a['submodular_min_path_slack'][k]:.3g} | "
            f"{100 * a['submodular_frac_violating'][k]:.1f}% | {short} |"
        )
    adv = len(labels) - 1
    summ: dict[str, Any] = {
        "verdict_table": "\n".join(rows),
        "submodularity_table": "\n".join(sub_rows),
        "num_experts": config.num_experts,
        "dim": int(np.prod(config.shape)),
        "z": config.z,
    }
    k_idx = {kind: i for i, kind in enumerate(kinds)}
    if "hull" in k_idx:
        h = k_idx["hull"]
        summ["adversarial_hull_diff2"] = float(a["diff2"][adv, h, 0, 0])
        summ["adversarial_hull_diff2_se"] = float(a["diff2_stderr"][adv, h, 0, 0])
        summ["adversarial_hull_subset_max_diff2"] = float(np.max(a["diff2"][adv, h, 1]))
        summ["isotropic_hull_first_diff2"] = float(a["diff2"][0, h, 0, 0])
        summ["isotropic_hull_first_diff2_se"] = float(a["diff2_stderr"][0, h, 0, 0])
        summ["isotropic_hull_elasticity"] = float(a["elasticity"][0, h, 0])
        summ["isotropic_hull_elasticity_se"] = float(a["elasticity_stderr"][0, h, 0])
        summ["hull_subset_max_diff2"] = float(np.max(a["diff2"][:, h, 1]))
    if "span" in k_idx:
        s = k_idx["span"]
        summ["isotropic_span_elasticity"] = float(a["elasticity"][0, s, 0])
        summ["isotropic_span_elasticity_se"] = float(a["elasticity_stderr"][0, s, 0])
        summ["adversarial_span_verdict"] = verdicts[(adv, s, 0)]
    if "zonotope" in k_idx:
        zk = k_idx["zonotope"]
        summ["zonotope_max_abs_z"] = float(np.nanmax(a["zonotope_max_abs_z"][:-1]))
        summ["isotropic_zonotope_verdict"] = verdicts[(0, zk, 0)]
        summ["adversarial_zonotope_diff2"] = float(a["diff2"][adv, zk, 0, 0])
    if "hull" in k_idx:
        summ["adversarial_hull_verdict"] = verdicts[(adv, k_idx["hull"], 0)]
        summ["adversarial_hull_subset_verdict"] = verdicts[(adv, k_idx["hull"], 1)]
    for kind in ("hull", "hull0"):
        if kind in k_idx:
            k = k_idx[kind]
            subset_ok = all(verdicts[(f, k, 1)].status != FAILS for f in range(len(labels)))
            summ[f"{kind}_subsets_all_concave"] = "yes" if subset_ok else "no"
            fixed_fails = [
                f"{labels[f]} ({_failure(details[(f, k, 0)])})"
                for f in range(len(labels))
                if verdicts[(f, k, 0)].status == FAILS
            ]
            summ[f"{kind}_fixed_counterexamples"] = "; ".join(fixed_fails) or "none"
    summ["num_samples"] = ", ".join(f"{k} {m}" for k, m in config.num_samples)
    fails = sum(v.status == FAILS for v in verdicts.values())
    summ["num_curves"] = len(verdicts)
    summ["num_fails"] = int(fails)
    summ["num_holds"] = int(sum(v.status == HOLDS for v in verdicts.values()))
    return summ


main = experiment_main(NAME, __doc__, run, ConcavityConfig(), QUICK_CONFIG)
"""Command-line entry point (see the module docstring)."""


if __name__ == "__main__":
    sys.exit(main())
