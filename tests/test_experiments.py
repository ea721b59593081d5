"""The experiment -> results -> figure pipeline, end to end in --quick mode."""

import numpy as np
import pytest

from experiments import run_all as experiments_run_all
from experiments.diagnostics import METRICS, QUICK_CONFIG
from figures import run_all as figures_run_all
from figures._style import atomic_savefig, plt
from mergetheory.io import load_results


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """Run the diagnostics experiment once, through run_all, into a temporary directory."""
    out = tmp_path_factory.mktemp("results")
    status = experiments_run_all.main(
        ["--quick", "--out-dir", str(out), "--only", "diagnostics", "--no-progress"]
    )
    assert status == 0
    return out


def test_discovery():
    experiments = experiments_run_all.discover()
    assert "diagnostics" in experiments and "run_all" not in experiments
    assert "fig_diagnostics" in figures_run_all.discover()


def test_diagnostics_results_are_sane(quick_results):
    res = load_results(quick_results / "diagnostics")
    a, meta = res.arrays, res.metadata
    cfg = QUICK_CONFIG
    shape = (len(cfg.num_tasks_grid), len(cfg.rho_grid))
    np.testing.assert_array_equal(a["num_tasks_grid"], cfg.num_tasks_grid)
    np.testing.assert_array_equal(a["rho_grid"], cfg.rho_grid)
    for m in METRICS:
        assert a[f"{m}_mean"].shape == shape and np.isfinite(a[f"{m}_mean"]).all()
        assert (a[f"{m}_stderr"] > 0).all()
    assert meta["seed"] == cfg.seed and meta["config"]["quick"] is True
    assert meta["config"]["num_tasks_grid"] == list(cfg.num_tasks_grid)

    def close(metric, theory, slack):
        err = np.abs(a[f"{metric}_mean"] - a[theory])
        assert (err < 5 * a[f"{metric}_stderr"] + slack).all(), (metric, err)

    close("cosine", "cosine_theory", 1e-3)  # cosines track rho
    close("pcc", "cosine_theory", 1e-3)
    close("sign_conflict", "sign_conflict_theory", 1e-3)  # Sheppard's formula
    close("ed", "ed_theory", 1e-2)  # E ||tau_i - tau_j|| ~ sqrt(2 (1 - rho)) norm
    # |cos| >= cos; TSV interference grows with the number of experts
    assert (a["abs_cosine_mean"] >= a["cosine_mean"] - 1e-12).all()
    assert (np.diff(a["tsv_interference_mean"], axis=0) > 0).all()


def test_figure_from_results(quick_results, tmp_path):
    out = tmp_path / "fig"
    status = figures_run_all.main(
        ["--results-dir", str(quick_results), "--out-dir", str(out), "--only", "fig_diagnostics"]
    )
    assert status == 0
    png, pdf = out / "fig_diagnostics.png", out / "fig_diagnostics.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in out.iterdir()) == ["fig_diagnostics.pdf", "fig_diagnostics.png"]


def test_figures_fail_clearly_without_results(tmp_path, capsys):
    status = figures_run_all.main(
        ["--results-dir", str(tmp_path), "--out-dir", str(tmp_path / "fig"), "--no-progress"]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "diagnostics.npz") in err
    assert "python -m experiments.diagnostics" in err
    assert not (tmp_path / "fig").exists()


def test_atomic_savefig_failure_leaves_nothing(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    paths = atomic_savefig(fig, tmp_path / "ok")
    assert [p.name for p in paths] == ["ok.png", "ok.pdf"]

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    fig.savefig = boom
    with pytest.raises(RuntimeError):
        atomic_savefig(fig, tmp_path / "bad")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.pdf", "ok.png"]


@pytest.mark.slow
def test_operator_diagnostics_covers_every_registered_operator(tmp_path):
    """Issue 5: the operator sweep knows every registry entry by name, with finite values."""
    from experiments import operator_diagnostics as od
    from figures import fig_operator_diagnostics as fod
    from mergetheory.io import load_results
    from mergetheory.merge import MERGE_OPERATORS

    assert od.main(["--quick", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    res = load_results(tmp_path / "operator_diagnostics")
    assert sorted(map(str, res.arrays["operators"])) == sorted(MERGE_OPERATORS)
    ret = res.arrays["retention_mean"]
    assert np.all(np.isfinite(ret)) and np.all(ret > 0) and np.all(ret <= 1 + 1e-12)
    assert fod.main(["--results-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "fig_operator_diagnostics.png").exists()


def test_run_experiment_saves_config_summary_and_time(tmp_path):
    from typing import NamedTuple

    from experiments import run_experiment

    class Cfg(NamedTuple):
        seed: int = 3
        size: int = 10

    seen = []

    def run(config, args):
        seen.append((config, args.no_progress))
        return {"x": np.arange(config.size)}, {"total": int(config.size)}

    argv = ["--quick", "--out-dir", str(tmp_path), "--no-progress"]
    assert run_experiment("toy", "Toy experiment.\n\nMore.", run, Cfg(), Cfg(size=4), argv) == 0
    assert seen == [(Cfg(size=4), True)]  # --quick picked the quick configuration
    res = load_results(tmp_path / "toy")
    np.testing.assert_array_equal(res.arrays["x"], np.arange(4))
    assert float(res.arrays["elapsed_s"]) >= 0
    cfg = res.metadata["config"]
    assert cfg["size"] == 4 and cfg["quick"] is True and res.metadata["seed"] == 3
    assert cfg["summary"]["total"] == 4 and cfg["summary"]["elapsed_s"] >= 0

    # arrays only: no summary key; a failing run raises and writes nothing
    assert run_experiment("bare", None, lambda c, a: {"y": np.ones(2)}, Cfg(), Cfg(), argv) == 0
    assert "summary" not in load_results(tmp_path / "bare").metadata["config"]

    def broken(config, args):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_experiment("broken", None, broken, Cfg(), Cfg(), argv)
    assert not list(tmp_path.glob("broken*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(experiments_run_all.discover()) - {"diagnostics"}))
def test_every_experiment_runs_quick_end_to_end(name, tmp_path):
    """Each experiment's --quick run, summary and sidecar included (slow: a few minutes)."""
    argv = ["--quick", "--out-dir", str(tmp_path), "--only", name, "--no-progress"]
    assert experiments_run_all.main(argv) == 0
    assert (tmp_path / f"{name}.json").exists()


def test_discovery_runs_a_module_after_the_ones_it_names():
    order = list(experiments_run_all.discover())
    assert order.index("real_merging") < order.index("instance_mergeability")
    rest = [n for n in order if n != "instance_mergeability"]
    assert rest == sorted(rest)  # otherwise alphabetical
