"""Tests for ``mergetheory merge``: results against the library, and one-line errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.merge import MERGE_OPERATORS


def _write_experts(tmp_path, num=3, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num):
        p = tmp_path / f"expert{i}.npz"
        np.savez(p, w=rng.normal(size=(4, 3)), b=rng.normal(size=(3,)))
        paths.append(str(p))
    return paths


def _stack(paths):
    data = [np.load(p) for p in paths]
    return {k: jnp.asarray(np.stack([d[k] for d in data])) for k in ("w", "b")}


def test_task_arithmetic_matches_hand_sum(tmp_path, capsys):
    paths = _write_experts(tmp_path)
    out = tmp_path / "merged.npz"
    args = ["--operator", "task_arithmetic", "--scale", "0.5", "--out", str(out)]
    rc = main(["merge", *args, *paths])
    assert rc == 0, capsys.readouterr().err
    merged = np.load(out)
    data = [np.load(p) for p in paths]
    np.testing.assert_allclose(merged["w"], 0.5 * sum(d["w"] for d in data), rtol=1e-12)
    np.testing.assert_allclose(merged["b"], 0.5 * sum(d["b"] for d in data), rtol=1e-12)


@pytest.mark.parametrize("name", ["ties", "dare_ties", "rht"])
def test_cli_equals_library_call(tmp_path, name):
    paths = _write_experts(tmp_path, seed=1)
    out = tmp_path / f"{name}.npz"
    rc = main(
        [
            "merge",
            "--operator",
            name,
            "--density",
            "0.5",
            "--seed",
            "7",
            "--weights",
            "1,2,0.5",
            "--out",
            str(out),
            *paths,
        ]
    )
    assert rc == 0
    op = MERGE_OPERATORS[name]
    hp = {**op.default_hparams, "density": 0.5, "weights": jnp.asarray([1.0, 2.0, 0.5])}
    ref = op.fn(_stack(paths), jax.random.key(7), **hp)
    got = np.load(out)
    for k in ("w", "b"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12)


def test_base_knowledge_weighted_needs_accuracy(tmp_path, capsys):
    paths = _write_experts(tmp_path)
    out = tmp_path / "m.npz"
    rc = main(["merge", "--operator", "base_knowledge_weighted", "--out", str(out), *paths])
    assert rc == 2
    assert "needs --base-accuracy" in capsys.readouterr().err
    rc = main(
        [
            "merge",
            "--operator",
            "base_knowledge_weighted",
            "--base-accuracy",
            "0.9,0.5,0.1",
            "--out",
            str(out),
            *paths,
        ]
    )
    assert rc == 0 and out.exists()


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_name_file_and_key(tmp_path, capsys):
    paths = _write_experts(tmp_path)
    out = tmp_path / "m.npz"
    args = ["merge", "--operator", "average", "--out", str(out)]
    assert main([*args, paths[0], str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz: no such file" in _error_line(capsys)

    np.savez(tmp_path / "keys.npz", w=np.zeros((4, 3)), c=np.zeros(3))
    assert main([*args, paths[0], str(tmp_path / "keys.npz")]) == 2
    assert "keys.npz: missing key 'b'" in _error_line(capsys)

    np.savez(tmp_path / "shape.npz", w=np.zeros((4, 4)), b=np.zeros(3))
    assert main([*args, paths[0], str(tmp_path / "shape.npz")]) == 2
    assert "shape.npz: key 'w' has shape (4, 4)" in _error_line(capsys)

    np.savez(tmp_path / "nan.npz", w=np.full((4, 3), np.nan), b=np.zeros(3))
    assert main([*args, paths[0], str(tmp_path / "nan.npz")]) == 2
    assert "nan.npz: key 'w' has 12 NaN/Inf" in _error_line(capsys)

    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert main([*args, paths[0], str(tmp_path / "corrupt.npz")]) == 2
    assert "corrupt.npz: cannot read as .npz" in _error_line(capsys)

    assert main(["merge", "--operator", "ties", "--density", "1.5", "--out", str(out), *paths]) == 2
    assert "density" in _error_line(capsys)
    assert not out.exists()


def test_subprocess_exit_code(tmp_path):
    paths = _write_experts(tmp_path, num=2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergetheory.cli",
            "merge",
            "--operator",
            "nope",
            "--out",
            str(tmp_path / "m.npz"),
            *paths,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
