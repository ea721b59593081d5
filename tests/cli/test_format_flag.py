"""``--format`` on ``analyze`` and ``merge``: force the detected input format."""

import json
import shutil

import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.cli.common import INPUT_FORMATS
from mergetheory.io import save_safetensors
from mergetheory.io.checkpoints import CHECKPOINT_FORMATS
from mergetheory.io.pool import EXPERT_FORMATS

# the sizes of tests/analysis/test_analyze_pool.py (4 experts, M = 256): the analyze runs here
# reuse its compiled Monte Carlo programs when the two run in one session
FAST = ["--num-samples", "256", "--num-orders", "2", "--quiet"]
NUM = 4


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_cli_formats_are_the_library_formats():
    assert INPUT_FORMATS == EXPERT_FORMATS
    assert set(CHECKPOINT_FORMATS) <= set(EXPERT_FORMATS)


def test_npz_under_another_suffix(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(NUM):
        np.savez(tmp_path / f"e{i}.npz", w=rng.normal(size=(5, 4)))
        shutil.move(tmp_path / f"e{i}.npz", tmp_path / f"e{i}.bin")
        paths.append(str(tmp_path / f"e{i}.bin"))
    out = tmp_path / "rep"
    assert main(["analyze", *paths, "--out", str(out), *FAST]) == 2
    assert "--format" in _err(capsys)  # the error says how to force a format
    assert main(["analyze", *paths, "--out", str(out), *FAST, "--format", "npz"]) == 0
    rep = json.loads((out / "analysis.json").read_text())
    x = np.stack([np.load(p)["w"].ravel() for p in paths])  # np.load reads by content
    np.testing.assert_allclose(rep["gram"], x @ x.T, rtol=1e-12)
    assert rep["config"]["format"] == "npz"


def test_npy_experts(tmp_path, capsys):
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(NUM, 7, 3))
    paths = []
    for i, x in enumerate(xs):
        np.save(tmp_path / f"tv{i}.npy", x)
        paths.append(str(tmp_path / f"tv{i}.npy"))
    assert main(["merge", "--operator", "average", "--out", str(tmp_path / "m.npz"), *paths]) == 2
    assert "--format npy" in _err(capsys)
    argv = ["merge", "--operator", "average", "--format", "npy", "--out", str(tmp_path / "m.npz")]
    assert main([*argv, *paths]) == 0, _err(capsys)
    with np.load(tmp_path / "m.npz") as merged:
        np.testing.assert_allclose(merged["array"], xs.mean(axis=0), rtol=1e-12)
    out = tmp_path / "rep"
    assert main(["analyze", *paths, "--format", "npy", "--out", str(out), *FAST]) == 0
    rep = json.loads((out / "analysis.json").read_text())
    assert rep["num_params"] == 21
    flat = xs.reshape(NUM, -1)
    np.testing.assert_allclose(rep["gram"], flat @ flat.T, rtol=1e-12)


def test_safetensors_under_another_suffix(tmp_path, capsys):
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(4, 4)).astype(np.float32) for _ in range(3)]
    paths = []
    for i, x in enumerate(xs):
        save_safetensors(tmp_path / f"m{i}.safetensors", {"w": x})
        shutil.move(tmp_path / f"m{i}.safetensors", tmp_path / f"m{i}.st")
        paths.append(str(tmp_path / f"m{i}.st"))
    out = tmp_path / "m.npz"
    argv = ["merge", "--operator", "task_arithmetic", "--format", "safetensors", "--out", str(out)]
    assert main([*argv, *paths]) == 0, _err(capsys)
    with np.load(out) as merged:
        np.testing.assert_allclose(merged["w"], sum(xs), rtol=1e-6)


@pytest.mark.parametrize(
    "cmd, fmt, problem",
    [
        ("analyze", "pickle", "argument --format: invalid choice: 'pickle'"),
        ("merge", "zip", "argument --format: invalid choice: 'zip'"),
        ("analyze", "peft", "format peft expects a folder with adapter_config.json"),
        ("analyze", "hf", "format hf expects a model folder"),
        ("analyze", "orbax", "format orbax expects a directory"),
        ("merge", "msgpack", "corrupt or truncated msgpack checkpoint"),
        ("merge", "npy", "no NUMPY header"),
    ],
)
def test_bad_or_mismatched_format(tmp_path, capsys, cmd, fmt, problem):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(3):
        np.savez(tmp_path / f"e{i}.npz", w=rng.normal(size=(3, 2)))
        paths.append(str(tmp_path / f"e{i}.npz"))
    if cmd == "analyze":
        argv = ["analyze", *paths, "--out", str(tmp_path / "rep"), *FAST]
    else:
        argv = ["merge", "--operator", "average", "--out", str(tmp_path / "m.npz"), *paths]
    assert main([*argv, "--format", fmt]) == 2
    err = _err(capsys)
    assert problem in err and ("e0.npz" in err or "choice" in err), err
