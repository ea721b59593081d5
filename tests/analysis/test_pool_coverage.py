"""``analyze``: RHT / TIES / DARE coverage at equal norm budget, plugin operators, every n*."""

import json
import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.analysis.pool import analyze_pool
from mergetheory.cli import main
from mergetheory.merge import register_operator, unregister_operator
from mergetheory.theory.rht import coverage_gain

# the sizes of the module fixture below: the CLI run reuses its compiled programs (same n, M)
FAST = ["--num-samples", "2000", "--num-orders", "2", "--quiet"]
NUM = 5


def _pool(tmp, seed=0):
    """Five correlated experts (two tensors each) as .npz task vectors."""
    rng = np.random.default_rng(seed)
    common = {"w": rng.normal(size=(16, 12)), "b": rng.normal(size=12)}
    tv = {k: [] for k in common}
    paths = []
    for i in range(NUM):
        ex = {k: v + rng.normal(size=v.shape) for k, v in common.items()}
        np.savez(tmp / f"e{i}.npz", **ex)
        paths.append(str(tmp / f"e{i}.npz"))
        for k in ex:
            tv[k].append(ex[k])
    return paths, {k: jnp.asarray(np.stack(v)) for k, v in tv.items()}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cov")
    paths, tv = _pool(tmp)
    return analyze_pool(paths, seed=2, num_samples=2000, num_orders=2), tv


def test_coverage_matches_the_theory_on_the_same_vectors(analysis):
    res, tv = analysis
    cov = res.coverage["operators"]
    assert list(cov) == ["rht", "ties", "dare_linear"]
    key = jr.fold_in(jr.key(2), 3)  # the documented coverage key
    # rht acting on one expert = the released code's step; ties on one expert = its trim
    for name, theory_name, density in (
        ("rht", "rht", 0.7),
        ("ties", "magnitude_prune", 0.7),
    ):
        ev = coverage_gain(key, tv, theory_name, density=density, num_samples=2000)
        got = cov[name]
        # deterministic maps: the norm budgets agree to round-off
        assert got["radius_after"] == pytest.approx(ev.radius_after, rel=1e-10)
        assert got["log_rescale_gain"] == pytest.approx(ev.log_rescale_gain, abs=1e-10)
        # Monte Carlo parts: within the estimator's own standard errors
        se = got["log_geometry_gain_stderr"] + ev.log_geometry_gain_stderr
        assert abs(got["log_geometry_gain"] - ev.log_geometry_gain) <= 4 * se
        assert got["identity_residual"] < 1e-9
        assert got["hparams"]["density"] == 0.7
    # rht = ties' trim / density: the same geometry, rescaling apart by log(1/0.7)
    assert cov["rht"]["log_geometry_gain"] == pytest.approx(
        cov["ties"]["log_geometry_gain"], abs=1e-9
    )
    gap = cov["rht"]["log_rescale_gain"] - cov["ties"]["log_rescale_gain"]
    assert gap == pytest.approx(-math.log(0.7), abs=1e-12)


def test_dare_geometry_gain_near_its_prediction(analysis):
    res, _ = analysis
    ev = res.coverage["operators"]["dare_linear"]
    # independent masks shrink every off-diagonal Gram entry by the density (in
    # expectation): the correlation-based prediction 1/2 log((1 - d c) / (1 - c)) of
    # theory.rht with the pool's mean cosine c; the finite-D mask noise is ~ 1/sqrt(D)
    c = ev["mean_cosine_before"]
    pred = 0.5 * math.log((1 - 0.7 * c) / (1 - c))
    assert ev["log_geometry_gain"] > 3 * ev["log_geometry_gain_stderr"]
    assert abs(ev["log_geometry_gain"] - pred) < 0.1


def test_n_star_definitions_from_the_curves(analysis):
    res, _ = analysis
    ns = res.n_star
    hull0 = np.asarray(res.curves["hull0_width"]["order"]["mean"])
    util = ns["utility_log_cost=0.05"]
    assert util["n_star"] == int(np.argmax(np.log(hull0) - 0.05 * np.arange(1, NUM + 1))) + 1
    delta = np.asarray(res.curves["cone_statdim"]["order"]["mean"])
    d = res.num_params
    lower = d - math.sqrt(8 * math.log(4 / 0.05)) * math.sqrt(d)
    kin = [v for k, v in ns.items() if k.startswith("kinematic_m=")]
    assert len(kin) == 3
    for q, out in zip((0.25, 0.5, 0.75), kin, strict=True):
        assert out["m"] == pytest.approx(lower - q * delta[-1], rel=1e-12)
        first = int(np.argmax(delta + out["m"] >= lower)) + 1
        assert out["n_star"] == first and out["ci_low"] <= first <= out["ci_high"]


def _median(task_vectors, key, *, scale=1.0):
    del key
    return {k: scale * jnp.median(v, axis=0) for k, v in task_vectors.items()}


def test_cli_operator_adds_a_plugin_and_writes_the_report(tmp_path, capsys):
    paths, _ = _pool(tmp_path, seed=1)
    register_operator("cov_test_median", _median, has_weights=False)
    try:
        out = tmp_path / "rep"
        argv = ["analyze", *paths, "--out", str(out), *FAST, "--operator", "cov_test_median"]
        argv += ["--kinematic-m", "100", "--utility-cost", "0.1"]
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        unregister_operator("cov_test_median")
    rep = json.loads((out / "analysis.json").read_text())
    ops = rep["coverage"]["operators"]
    assert set(ops) == {"rht", "ties", "dare_linear", "cov_test_median"}
    # the median of one expert is the expert: the same set, no gain of any kind
    assert ops["cov_test_median"]["log_total_gain"] == pytest.approx(0.0, abs=1e-9)
    assert ops["cov_test_median"]["hparams"] == {}  # no defaults, no density taken
    assert set(rep["n_star"]) >= {"kinematic_m=100", "utility_log_cost=0.1"}
    md = (out / "analysis.md").read_text()
    assert "## Coverage at equal norm budget" in md and "| cov_test_median |" in md
    assert "n* (kinematic_m=100)" in md and "n* (utility_log_cost=0.1)" in md
    assert "widest at equal norm budget" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--operator", "no_such_op"], "no merge operator 'no_such_op'"),
        (["--operator", "base_knowledge_weighted"], "cannot act on one expert alone"),
        (["--density", "1.5"], "density must be in (0, 1]"),
        (["--utility-cost", "nan"], "utility cost must be a finite number"),
        (["--eta", "0"], "eta must be in (0, 1)"),
    ],
)
def test_cli_bad_coverage_settings(tmp_path, capsys, extra, problem):
    paths, _ = _pool(tmp_path)
    assert main(["analyze", *paths, "--out", str(tmp_path / "r"), *FAST, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and problem in err, err


def test_coverage_shares_the_one_read_of_the_inputs(tmp_path, monkeypatch):
    from mergetheory.analysis.pool_coverage import (
        COVERAGE_OPERATORS,
        coverage_comparison,
        per_expert_grams,
    )
    from mergetheory.io import save_safetensors
    from mergetheory.io.pool import TaskVectorTensors, open_expert
    from mergetheory.io.safetensors import SafetensorsReader

    rng = np.random.default_rng(3)
    base = {"w": rng.normal(size=(16, 12)), "b": rng.normal(size=12)}  # the fixture's shapes
    save_safetensors(tmp_path / "base.safetensors", base)
    paths = []
    for i in range(NUM):
        paths.append(tmp_path / f"e{i}.safetensors")
        save_safetensors(paths[-1], {k: v + rng.normal(size=v.shape) for k, v in base.items()})
    reads = []
    get = SafetensorsReader.get

    def counted(self, name, rows=None):
        reads.append((self.path.name, name))
        return get(self, name, rows)

    monkeypatch.setattr(SafetensorsReader, "get", counted)
    res = analyze_pool(paths, tmp_path / "base.safetensors", seed=1, num_samples=2000, num_orders=2)
    # every tensor of every file read exactly once: the coverage comparison made no 2nd pass
    assert sorted(reads) == sorted(
        {(f"{p.stem}.safetensors", k) for p in [*paths, tmp_path / "base"] for k in base}
    )
    # ... and gives the numbers of a separate pass (the two-pass computation), exactly
    opened = [open_expert(p) for p in paths]
    tensors = TaskVectorTensors(opened, open_expert(tmp_path / "base.safetensors"))
    grams = per_expert_grams(tensors, COVERAGE_OPERATORS, jr.fold_in(jr.key(1), 4), density=0.7)
    hparams = {k: v["hparams"] for k, v in res.coverage["operators"].items()}
    two_pass = coverage_comparison(
        jr.fold_in(jr.key(1), 3), res.gram, grams, num_samples=2000, hparams=hparams
    )
    assert res.coverage["operators"] == two_pass


def test_large_tensors_maps_spilled_give_the_held_grams(tmp_path, monkeypatch):
    from mergetheory.analysis.pool_coverage import COVERAGE_OPERATORS, per_expert_grams
    from mergetheory.io import save_safetensors
    from mergetheory.io import stack as stack_mod
    from mergetheory.io.pool import TaskVectorTensors, open_expert

    rng = np.random.default_rng(5)
    base = {"w": rng.normal(size=(16, 12)), "b": rng.normal(size=12)}
    save_safetensors(tmp_path / "base.safetensors", base)
    paths = []
    for i in range(NUM):
        paths.append(tmp_path / f"e{i}.safetensors")
        save_safetensors(paths[-1], {k: v + rng.normal(size=v.shape) for k, v in base.items()})

    def grams():
        opened = [open_expert(p) for p in paths]
        tensors = TaskVectorTensors(opened, open_expert(tmp_path / "base.safetensors"))
        key = jr.fold_in(jr.key(1), 4)
        return per_expert_grams(tensors, COVERAGE_OPERATORS, key, density=0.7)

    held = grams()
    monkeypatch.setattr(stack_mod, "GRAM_BLOCK", 40)  # w: 4 blocks of 3 rows, maps spilled
    spilled = grams()
    for name in COVERAGE_OPERATORS:  # same maps (same keys), the Gram summed by blocks
        np.testing.assert_allclose(spilled[name], held[name], rtol=1e-13)
    assert not np.array_equal(held["ties"], 0 * held["ties"])
