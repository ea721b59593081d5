"""Tests for ``mergetheory width`` (mergetheory.cli)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.random as jr
import numpy as np
import pytest

from mergetheory import cli, width
from mergetheory.geometry import ConvexHull

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def vectors(tmp_path):
    path = tmp_path / "tv.npy"
    np.save(path, np.random.default_rng(0).standard_normal((5, 40)))
    return path


def _run(capsys, argv):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_width_json_matches_library_and_progress(capsys, vectors):
    argv = ["width", "--set", "hull", "--vectors", str(vectors), "--num-samples", "64"]
    argv += ["--seed", "3", "--chunk-size", "8", "--json", "--progress"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["num_samples"] == 64 and res["set"] == "hull" and res["dim"] == 40
    hull = ConvexHull.from_task_vectors(np.load(vectors))
    ref = width.gaussian_width(jr.key(3), hull, num_samples=64, chunk_size=8)
    np.testing.assert_allclose(res["mean"], float(ref.mean), rtol=1e-12)
    np.testing.assert_allclose(res["stderr"], float(ref.stderr), rtol=1e-10)
    assert "100%" in err and "sample" in err  # tqdm, 8 blocks of 8 samples, on stderr

    # the same run, human-readable and quiet
    rc, out, err = _run(capsys, argv[:-2] + ["--no-progress"])
    assert rc == 0 and err == ""
    assert out.startswith("Gaussian width of hull(5 vectors in R^40): ")
    assert f"{res['mean']:.6g}" in out


def test_width_nested_json(capsys, vectors):
    argv = ["width", "--set", "zonotope", "--vectors", str(vectors), "--num-samples", "50"]
    rc, out, _ = _run(capsys, argv + ["--seed", "0", "--nested", "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["n"] == [1, 2, 3, 4, 5] and res["num_samples"] == 50
    assert [len(res[k]) for k in ("mean", "stderr", "diff1", "diff1_stderr")] == [5, 5, 4, 4]
    assert len(res["diff2"]) == len(res["diff2_stderr"]) == 3
    assert np.all(np.diff(res["mean"]) > 0)  # zonotope widths grow with every generator


def _bad_files(tmp_path):
    good = np.random.default_rng(1).standard_normal((3, 4))
    files = {}
    for name, arr in {
        "rank1": np.ones(4),
        "nan": np.where(np.eye(3, 4) > 0, np.nan, good),
        "inf": np.where(np.eye(3, 4) > 0, np.inf, good),
        "good": good,
        "square": np.random.default_rng(0).standard_normal((12, 12)),
    }.items():
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], arr)
    files["text"] = tmp_path / "text.npy"
    files["text"].write_text("not an array")
    files["truncated"] = tmp_path / "truncated.npy"
    files["truncated"].write_bytes(files["good"].read_bytes()[:-20])
    return files


@pytest.mark.parametrize(
    "file, extra, match",
    [
        ("missing", [], "file not found"),
        ("rank1", [], "2-D [n, D]"),
        ("nan", [], "3 NaN"),
        ("inf", [], "3 Inf"),
        ("text", [], "not a .npy file"),
        ("truncated", [], "cannot read"),
        ("good", ["--seed", str(2**70)], "--seed must be in"),
        ("good", ["--set", "cone", "--max-iter", "0"], "--max-iter must be >= 1"),
        ("square", ["--set", "cone", "--max-iter", "1"], "did not converge within max_iter=1"),
        ("good", ["--num-samples", "1"], "--num-samples must be >= 2"),
        ("good", ["--set", "ball"], "invalid choice: 'ball'"),
        ("good", ["--quantity", "statdim"], "defined for cones"),
        ("good", ["--chunk-size", "0"], "--chunk-size must be >= 1"),
        ("good", ["--seed", "x"], "invalid int value"),
    ],
)
def test_width_bad_input_one_line(capsys, tmp_path, file, extra, match):
    files = _bad_files(tmp_path)
    path = files.get(file, tmp_path / "missing.npy")
    argv = ["width", "--set", "hull", "--vectors", str(path), "--num-samples", "10"]
    rc, out, err = _run(capsys, argv + ["--seed", "0"] + extra)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert match in err and err.startswith("mergetheory width: error:")


def test_no_command_and_help(capsys):
    assert cli.main([]) == 2
    assert cli.main(["width", "--help"]) == 0
    assert "--num-samples" in capsys.readouterr().out
    assert set(cli.SUBCOMMANDS) >= {"width"}


def test_subprocess_bad_input_exit_code(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[1.0, np.nan], [0.0, 1.0]]))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "mergetheory.cli", "width", "--set", "cone"]
    cmd += ["--vectors", str(bad), "--num-samples", "100", "--seed", "0", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0] == (
        f"mergetheory width: error: --vectors: 1 NaN and 0 Inf value(s) in {bad} (first in row 0)"
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_width_reads_vectors_as_float64(capsys, tmp_path, dtype):
    """Two rows 1.5 degrees apart span a plane: delta = 2 exactly, whatever the file dtype.

    (In float32 the library's rank tolerance, ~2 degrees, would lump them into a line.)
    """
    angle = np.deg2rad(1.5)
    rows = np.zeros((2, 6))
    rows[0, 0] = 1.0
    rows[1, :2] = np.cos(angle), np.sin(angle)
    path = tmp_path / "close.npy"
    np.save(path, rows.astype(dtype))
    argv = ["width", "--set", "span", "--quantity", "statdim", "--vectors", str(path)]
    rc, out, _ = _run(capsys, argv + ["--num-samples", "4000", "--seed", "0", "--json"])
    assert rc == 0
    res = json.loads(out)
    assert abs(res["mean"] - 2.0) < 5 * res["stderr"]


def test_width_nested_cone_statdim_matches_orthant(capsys, tmp_path):
    """cone{e_1..e_n} is an n-dimensional orthant: delta = n / 2 for every prefix."""
    path = tmp_path / "basis.npy"
    np.save(path, np.eye(5, 8))
    argv = ["width", "--set", "cone", "--quantity", "statdim", "--nested", "--vectors", str(path)]
    rc, out, _ = _run(capsys, argv + ["--num-samples", "4000", "--seed", "3", "--json"])
    assert rc == 0
    res = json.loads(out)
    assert res["n"] == [1, 2, 3, 4, 5]
    err = np.abs(np.asarray(res["mean"]) - np.arange(1, 6) / 2)
    assert np.all(err < 5 * np.asarray(res["stderr"])), err
    # paired first differences: delta(C_{n+1}) - delta(C_n) = 1/2
    d1 = np.abs(np.asarray(res["diff1"]) - 0.5)
    assert np.all(d1 < 5 * np.asarray(res["diff1_stderr"])), d1
