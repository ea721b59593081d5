"""Tests for mergetheory.io.results: round trip, provenance, atomicity and clear errors."""

import json
import os
from typing import NamedTuple

import jax
import numpy as np
import pytest

from mergetheory.io import (
    CorruptResultsError,
    ResultsNotFoundError,
    atomic_write,
    load_results,
    save_results,
)
from mergetheory.io import results as results_module


class _Config(NamedTuple):
    seed: int = 7
    grid: tuple[int, ...] = (2, 4)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = (("w", (3, 2)),)
    top_k: int | None = None


def _arrays():
    return {
        "x": np.arange(6.0).reshape(2, 3),
        "n": np.asarray([1, 2, 3]),
        "flag": np.asarray([True, False]),
        "scalar": np.asarray(1.5),
        "jax": jax.numpy.ones(2),
        "file": np.zeros(1),  # a name np.savez cannot take as a keyword
    }


def test_round_trip_and_provenance(tmp_path):
    npz, js = save_results(tmp_path / "sub" / "exp", _arrays(), _Config())
    assert npz == tmp_path / "sub" / "exp.npz" and js.exists()
    res = load_results(tmp_path / "sub" / "exp")
    assert set(res.arrays) == {"x", "n", "flag", "scalar", "jax", "file"}
    np.testing.assert_array_equal(res.arrays["x"], np.arange(6.0).reshape(2, 3))
    assert res.arrays["flag"].dtype == bool and res.arrays["scalar"].shape == ()
    meta = res.metadata
    assert meta["seed"] == 7
    assert meta["config"] == {"seed": 7, "grid": [2, 4], "shapes": [["w", [3, 2]]], "top_k": None}
    assert meta["jax_version"] == jax.__version__
    assert meta["numpy_version"] == np.__version__
    for field in ("platform", "devices", "git_revision", "timestamp", "python_version"):
        assert meta[field]
    assert isinstance(meta["git_revision"], str)
    assert meta["arrays"]["x"] == {"shape": [2, 3], "dtype": "float64"}
    # the suffix is optional on both sides
    assert load_results(tmp_path / "sub" / "exp.npz").metadata["run_id"] == meta["run_id"]


def test_seed_argument_and_dict_config(tmp_path):
    save_results(tmp_path / "a", {"x": np.zeros(1)}, {"lr": 0.1}, seed=3)
    assert load_results(tmp_path / "a").metadata["seed"] == 3
    save_results(tmp_path / "b", {"x": np.zeros(1)}, {"lr": 0.1})
    assert load_results(tmp_path / "b").metadata["seed"] is None


def test_git_unknown_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(results_module, "_git", lambda args, cwd: None)
    save_results(tmp_path / "r", {"x": np.zeros(1)}, {})
    meta = load_results(tmp_path / "r").metadata
    assert meta["git_revision"] == "unknown" and meta["git_dirty"] is None


def test_file_mode_follows_umask(tmp_path):
    save_results(tmp_path / "r", {"x": np.zeros(1)}, {})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "r.npz").st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


def test_save_failure_keeps_previous_results(tmp_path, monkeypatch):
    save_results(tmp_path / "r", {"x": np.ones(2)}, {"v": 1})

    def broken_write(f, arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(results_module, "_write_npz", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_results(tmp_path / "r", {"x": np.zeros(2)}, {"v": 2})
    res = load_results(tmp_path / "r")  # still the first, complete run
    np.testing.assert_array_equal(res.arrays["x"], np.ones(2))
    assert res.metadata["config"] == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["r.json", "r.npz"]


def test_missing_files(tmp_path):
    with pytest.raises(ResultsNotFoundError, match=r"nothing\.npz does not exist"):
        load_results(tmp_path / "nothing")
    save_results(tmp_path / "r", {"x": np.zeros(1)}, {})
    (tmp_path / "r.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"r\.json"):  # a FileNotFoundError subclass
        load_results(tmp_path / "r")


def test_corrupt_files(tmp_path):
    save_results(tmp_path / "r", {"x": np.zeros(1)}, {})
    (tmp_path / "r.npz").write_bytes(b"not a zip file")
    with pytest.raises(CorruptResultsError, match=r"cannot read results file .*r\.npz"):
        load_results(tmp_path / "r")
    save_results(tmp_path / "s", {"x": np.zeros(1)}, {})
    (tmp_path / "s.json").write_text("{ truncated")
    with pytest.raises(CorruptResultsError, match="sidecar"):
        load_results(tmp_path / "s")


def test_files_from_different_runs(tmp_path):
    save_results(tmp_path / "r", {"x": np.zeros(1)}, {"run": 1})
    old_json = (tmp_path / "r.json").read_text()
    save_results(tmp_path / "r", {"x": np.ones(1)}, {"run": 2})
    (tmp_path / "r.json").write_text(old_json)
    assert json.loads(old_json)["config"] == {"run": 1}
    with pytest.raises(CorruptResultsError, match="different runs"):
        load_results(tmp_path / "r")


def test_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="bad array name"):
        save_results(tmp_path / "r", {"__run_id__": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="object"):
        save_results(tmp_path / "r", {"x": np.asarray([{"a": 1}], dtype=object)}, {})
    assert not list(tmp_path.iterdir())
