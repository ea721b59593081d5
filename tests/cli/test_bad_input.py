"""Bad input as a new user meets it: one table of CLI cases, then the library's share.

Every CLI row builds its files in ``tmp_path`` and expects exit status 2, ONE line on
stderr naming the file or argument and the problem, and no output file.
"""

import json
import os
import time

import ml_dtypes
import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.io import (
    CheckpointError,
    load_checkpoint,
    load_peft_adapter,
    load_safetensors,
    peft_dense_update,
    save_msgpack,
    save_peft_adapter,
    save_safetensors,
    task_vectors_from_checkpoints,
)
from mergetheory.io.atomic import atomic_write_bytes, clean_stale_temps
from mergetheory.tree import TaskVectorError, validate_task_vectors

BF16 = ml_dtypes.bfloat16


def _experts(tmp, num=2, dtype=np.float64, suffix=".npz", seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num):
        arrays = {"w": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)}
        p = tmp / f"e{i}{suffix}"
        if suffix == ".npz":
            np.savez(p, **arrays)
        else:
            save_safetensors(p, arrays)
        paths.append(str(p))
    return paths


def _manager(tmp):
    import orbax.checkpoint as ocp

    root = tmp / "run"
    with ocp.CheckpointManager(root) as mgr:
        for step in (1, 3):
            tree = {"w": np.full((4, 3), float(step)), "b": np.full(3, float(step))}
            mgr.save(step, args=ocp.args.StandardSave(tree))
        mgr.wait_until_finished()
    return root


def _integer(tmp):
    np.savez(tmp / "int.npz", w=np.full((4, 3), 200, np.uint8), b=np.zeros(3, np.uint8))
    return [str(tmp / "int.npz")], "dtype uint8, expected a float array", "int.npz"


def _not_zip(tmp):
    (tmp / "text.npz").write_text("w,b\n1,2\n")
    return [str(tmp / "text.npz")], "cannot read as .npz (not a zip archive)", "text.npz"


def _object_array(tmp):
    np.savez(tmp / "obj.npz", w=np.array([{"a": 1}], dtype=object))
    return [str(tmp / "obj.npz")], "object (pickled) arrays; refused", "obj.npz"


def _directory(tmp):
    (tmp / "folder").mkdir()
    return [str(tmp / "folder")], "not an orbax checkpoint", "folder"


def _npy(tmp):
    np.save(tmp / "tv.npy", np.zeros((2, 5)))
    return [str(tmp / "tv.npy")], "a single .npy array", "tv.npy"


def _mixed_dtypes(tmp):
    a = _experts(tmp, num=1, dtype=np.float32)
    np.savez(tmp / "f64.npz", w=np.zeros((4, 3)), b=np.zeros(3))
    return [*a, str(tmp / "f64.npz")], "dtype float64, but", "f64.npz"


def _scale_inf(tmp):
    return ["--scale", "inf", *_experts(tmp)], "scale=inf is not a finite number", "scale"


def _hparam_nan(tmp):
    return ["--hparam", "scale=nan", *_experts(tmp)], "not a finite number", "scale"


def _overflow(tmp):
    argv = ["--scale", "1e308", *_experts(tmp)]
    return argv, "merged output has", "not written"


def _unknown_hparam(tmp):
    argv = ["--hparam", "dencity=0.3", *_experts(tmp)]
    return argv, "has no hyperparameter 'dencity' (it takes: scale)", "dencity"


def _out_is_dir(tmp):
    (tmp / "outdir").mkdir()
    return ["--out", str(tmp / "outdir"), *_experts(tmp)], "is a directory", "outdir"


def _out_suffix(tmp):
    return ["--out", str(tmp / "merged.bin"), *_experts(tmp)], "unknown output format", "merged.bin"


def _out_unwritable(tmp):
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return ["--out", str(locked / "m.npz"), *_experts(tmp)], "cannot write in", "locked"


def _out_under_a_file(tmp):
    (tmp / "notes.txt").write_text("x")
    argv = ["--out", str(tmp / "notes.txt" / "m.npz"), *_experts(tmp)]
    return argv, "cannot write in", "notes.txt"


def _missing_step(tmp):
    root = _manager(tmp)
    return ["--step", "7", str(root), str(root)], "has no step 7 (steps: [1, 3])", "run"


CLI_CASES = {
    "integer checkpoint refused": _integer,
    "text file named .npz": _not_zip,
    "object arrays": _object_array,
    "plain directory": _directory,
    "single .npy": _npy,
    "mixed float32 + float64": _mixed_dtypes,
    "--scale inf": _scale_inf,
    "--hparam scale=nan": _hparam_nan,
    "overflowing --scale": _overflow,
    "unknown hyperparameter": _unknown_hparam,
    "--out a directory": _out_is_dir,
    "--out unknown suffix": _out_suffix,
    "--out unwritable": _out_unwritable,
    "--out under a file": _out_under_a_file,
    "orbax manager without that step": _missing_step,
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    if case == "--out unwritable" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    inputs, problem, names = CLI_CASES[case](tmp_path)
    out = next((a for a in inputs if a.startswith(str(tmp_path / "m"))), None)
    argv = ["merge", "--operator", "task_arithmetic"]
    if "--out" not in inputs:
        out = str(tmp_path / "m.npz")
        argv += ["--out", out]
    rc = main([*argv, *inputs])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and "Traceback" not in err
    assert problem in err and names in err, err
    assert "allow_pickle" not in err
    assert out is None or not os.path.exists(out)


# ------------------------------------------------------------------------------------
# inputs that used to fail and now load
# ------------------------------------------------------------------------------------


def test_bf16_safetensors_round_trip_and_merge(tmp_path):
    paths = _experts(tmp_path, num=3, dtype=BF16, suffix=".safetensors")
    back = load_safetensors(paths[0])
    assert back["w"].dtype == BF16
    from safetensors.numpy import save

    # a file written by the safetensors library itself (bfloat16 bytes) loads too
    w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(BF16)
    (tmp_path / "lib.safetensors").write_bytes(save({"w": w}))
    np.testing.assert_array_equal(load_safetensors(tmp_path / "lib.safetensors")["w"], w)

    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--operator", "task_arithmetic", "--out", str(out), *paths]) == 0
    from safetensors import safe_open

    with safe_open(out, framework="flax") as f:  # the output is real safetensors
        assert set(f.keys()) == {"w", "b"}
    merged = load_safetensors(out)
    assert merged["w"].dtype == BF16  # dtype kept
    want = sum(load_safetensors(p)["w"].astype(np.float64) for p in paths)
    np.testing.assert_allclose(merged["w"].astype(np.float64), want, rtol=2e-2, atol=2e-2)


def test_integer_checkpoints_refused_by_library(tmp_path):
    base = {"w": np.full(3, 100, np.uint8)}
    expert = {"w": np.full(3, 200, np.uint8)}
    with pytest.raises(CheckpointError, match=r"base checkpoint .*dtype uint8.*refused"):
        task_vectors_from_checkpoints(base, [expert])


def test_orbax_manager_latest_and_step(tmp_path, capsys):
    root = _manager(tmp_path)
    np.testing.assert_array_equal(load_checkpoint(root)["w"], np.full((4, 3), 3.0))
    np.testing.assert_array_equal(load_checkpoint(root / "1")["b"], np.ones(3))
    np.testing.assert_array_equal(load_checkpoint(root, step=1)["b"], np.ones(3))
    out = tmp_path / "m.npz"
    rc = main(["merge", "--operator", "average", "--step", "1", "--out", str(out), str(root)])
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out)["w"], np.ones((4, 3)))


def test_nnx_state_orbax_and_pure_dict_msgpack_line_up(tmp_path):
    import orbax.checkpoint as ocp
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "expert", nnx.state(model))
        ckptr.wait_until_finished()
    pure = {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)}
    save_msgpack(tmp_path / "base.msgpack", pure)
    tv = task_vectors_from_checkpoints(tmp_path / "base.msgpack", [tmp_path / "expert"])
    np.testing.assert_array_equal(np.asarray(tv["kernel"][0]), np.asarray(model.kernel[...]))


def test_stale_temps_of_killed_writers_are_cleaned(tmp_path):
    target = tmp_path / "out.bin"
    dead = tmp_path / ".out.bin.tmp-999999999-0123456789ab"  # no such process
    dead.write_bytes(b"x" * 100)
    live = tmp_path / f".out.bin.tmp-{os.getpid()}-0123456789ab"  # a writer still running
    live.write_bytes(b"x")
    old = tmp_path / ".out.bin.tmp-abcdefabcdef"  # the older naming, an hour old
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = tmp_path / ".out.bin.tmp-fedcbafedcba"
    young.write_bytes(b"x")
    other = tmp_path / ".other.bin.tmp-999999999-0123456789ab"  # not this target's
    other.write_bytes(b"x")
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert not dead.exists() and not old.exists()
    assert live.exists() and young.exists() and other.exists()
    assert clean_stale_temps(target) == []


def test_peft_fan_in_fan_out_and_pattern_alternation(tmp_path):
    rng = np.random.default_rng(0)
    b1, a1 = rng.normal(size=(4, 2)), rng.normal(size=(2, 3))
    b2, a2 = rng.normal(size=(4, 1)), rng.normal(size=(1, 3))
    cfg = {"fan_in_fan_out": True, "alpha_pattern": {"fc1|fc2": 8.0}, "rank_pattern": {}}
    cfg["rank_pattern"] = {"layers\\.0\\.fc2": 1}
    modules = {"layers.0.fc1": (b1, a1), "layers.0.fc2": (b2, a2), "layers.0.proj": (b1, a1)}
    path = save_peft_adapter(tmp_path / "ad", modules, r=2, lora_alpha=4.0, extra_config=cfg)
    adapter = load_peft_adapter(path)
    dense = peft_dense_update(adapter)
    layer = dense["layers"]["0"]
    # fan_in_fan_out: PEFT adds (s B A)^T to a Conv1D weight [d_in, d_out]
    np.testing.assert_allclose(layer["fc1"], (8.0 / 2) * (b1 @ a1).T)
    np.testing.assert_allclose(layer["fc2"], (8.0 / 1) * (b2 @ a2).T)
    np.testing.assert_allclose(layer["proj"], (4.0 / 2) * (b1 @ a1).T)
    np.testing.assert_allclose(
        peft_dense_update(adapter, fan_in_fan_out=False)["layers"]["0"]["proj"], 2.0 * b1 @ a1
    )
    assert json.loads((path / "adapter_config.json").read_text())["fan_in_fan_out"] is True


def test_unstacked_expert_list_names_the_convention():
    experts = [{"w": np.ones((4, 3)), "b": np.ones(3)} for _ in range(3)]
    with pytest.raises(TaskVectorError, match=r"list of 3 pytrees .*stacked \[T, \.\.\.\]"):
        validate_task_vectors(experts)
    from mergetheory.merge import MERGE_OPERATORS

    with pytest.raises(TaskVectorError, match="tree_stack"):
        MERGE_OPERATORS["ties"].fn(experts, None, density=0.5)
