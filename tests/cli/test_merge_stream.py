"""``mergetheory merge`` of .safetensors files: the per-tensor streaming merge.

Its output must equal, bit for bit, the whole-tree merge (the library operator on the
stacked tree, and the CLI's in-memory path on the same data as ``.npz`` files), and it
must hold one tensor name's copies at a time.
"""

import gc
import weakref

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from mergetheory.cli import main, merge_stream
from mergetheory.io import load_safetensors, save_safetensors
from mergetheory.io.safetensors import SafetensorsReader
from mergetheory.merge import MERGE_OPERATORS

SHAPES = {"wte": (40, 6), "h.0.w": (6, 6), "h.0.b": (6,), "ln": (6,), "head": (6, 5)}
WEIGHTS = "1,0.5,2"


def _write(tmp_path, num=3, dtype=np.float32, seed=3):
    rng = np.random.default_rng(seed)
    base = {n: rng.normal(size=s).astype(dtype) for n, s in SHAPES.items()}
    models = [
        {n: (v + 0.1 * rng.normal(size=v.shape)).astype(dtype) for n, v in base.items()}
        for _ in range(num)
    ]
    paths = []
    for i, m in enumerate([base, *models]):
        p = tmp_path / f"m{i}.safetensors"
        save_safetensors(p, m)
        np.savez(tmp_path / f"m{i}.npz", **m)
        paths.append(str(p))
    return base, models, paths[0], paths[1:]


def _merge(tmp_path, name, inputs, base=None, extra=()):
    out = tmp_path / name
    argv = ["merge", "--out", str(out), *extra, *inputs]
    assert main([*argv, *(["--base", base] if base else [])]) == 0
    return load_safetensors(out) if out.suffix == ".safetensors" else dict(np.load(out))


OPS = [
    ("task_arithmetic", ["--scale", "0.7"]),
    ("average", ["--weights", WEIGHTS]),
    ("ties", ["--density", "0.4", "--weights", WEIGHTS]),
    ("magnitude_prune", ["--density", "0.3"]),
    ("breadcrumbs", []),
]


@pytest.mark.parametrize("op, flags", OPS)
@pytest.mark.parametrize("with_base", [True, False])
def test_streamed_merge_equals_the_whole_tree_merge(tmp_path, monkeypatch, op, flags, with_base):
    from mergetheory.cli import merge

    base, models, base_path, paths = _write(tmp_path)
    extra = ["--operator", op, *flags]
    b = base_path if with_base else None
    got = _merge(tmp_path, "s.safetensors", paths, b, extra)
    # the in-memory path of the CLI (the whole stacked tree), on the same data as .npz
    npz = [p.replace(".safetensors", ".npz") for p in paths]
    with monkeypatch.context() as m:
        m.setattr(merge, "is_streamable", lambda *a: False)
        old = _merge(tmp_path, "o.npz", npz, b and b.replace(".safetensors", ".npz"), extra)
    # the library operator on the stacked tree
    hp = dict(MERGE_OPERATORS[op].default_hparams)
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        name = flag.removeprefix("--")
        hp[name] = (
            jnp.asarray([float(w) for w in value.split(",")]) if "," in value else (float(value))
        )
    if "weights" in hp:
        hp["weights"] = hp["weights"].astype(jnp.float64)
    stacked = {
        n: jnp.asarray(np.stack([m[n] - base[n] if with_base else m[n] for m in models]))
        for n in SHAPES
    }
    want = MERGE_OPERATORS[op].fn(stacked, jax.random.key(0), **hp)
    for n in SHAPES:
        w = np.asarray(want[n])
        w = (base[n] + w).astype(np.float32) if with_base else w
        np.testing.assert_array_equal(got[n], w, err_msg=n)
        np.testing.assert_array_equal(got[n], old[n], err_msg=n)
        assert got[n].dtype == old[n].dtype
    assert list(got) == sorted(SHAPES)


def _count_blocked_ties(monkeypatch):
    """Record whether each merge used the blocked TIES (``None``: not TIES)."""
    used = []
    orig = merge_stream.blocked_ties

    def wrapped(op_name, hparams):
        res = orig(op_name, hparams)
        used.append(None if op_name != "ties" else res is not None)
        return res

    monkeypatch.setattr(merge_stream, "blocked_ties", wrapped)
    return used


@pytest.mark.parametrize(
    "op, flags",
    [
        ("task_arithmetic", []),
        ("average", []),
        ("ties", ["--density", "0.3"]),
        ("ties", ["--hparam", "weights_before_election=true", "--hparam", "aggregate=sum"]),
    ],
)
def test_row_blocks_change_nothing(tmp_path, monkeypatch, op, flags):
    _, _, base_path, paths = _write(tmp_path)
    extra = ["--operator", op, "--weights", WEIGHTS, *flags]
    whole = _merge(tmp_path, "a.safetensors", paths, base_path, extra)
    # stacks of 3 x 4 rows x 6 float32 = 288 bytes: wte (40 rows) merges in 10 blocks
    monkeypatch.setattr(merge_stream, "DEFAULT_BLOCK_BYTES", 3 * 4 * 6 * 4)
    assert len(merge_stream.row_blocks((40, 6), 3, 4, 3 * 4 * 6 * 4)) == 10
    assert merge_stream.row_blocks((40, 6), 3, 4, 3 * 4 * 40 * 6) == [None]  # fits
    assert merge_stream.row_blocks((1, 50), 3, 4, 8) == [(0, 1)]  # a row over the budget
    assert merge_stream.row_blocks((400,), 3, 4, 8) == [None]  # 1-D: never split
    used = _count_blocked_ties(monkeypatch)
    blocked = _merge(tmp_path, "b.safetensors", paths, base_path, extra)
    assert used == ([True] if op == "ties" else [None])
    for n in SHAPES:
        np.testing.assert_array_equal(blocked[n], whole[n], err_msg=n)


def test_one_tensor_name_in_memory_at_a_time(tmp_path, monkeypatch):
    """Every array read for a tensor name is freed before the next name is read."""
    _, _, base_path, paths = _write(tmp_path)
    live: list[tuple[str, weakref.ref]] = []
    order: list[str] = []
    get = SafetensorsReader.get

    def tracked(self, name, rows=None):
        if order and order[-1] != name:
            gc.collect()
            held = sorted({n for n, r in live if r() is not None})
            assert not held, f"reading {name!r} while {held} still held"
        arr = get(self, name, rows)
        live.append((name, weakref.ref(arr)))
        order.append(name)
        return arr

    monkeypatch.setattr(SafetensorsReader, "get", tracked)
    out = str(tmp_path / "m.safetensors")
    assert main(["merge", "--operator", "ties", "--base", base_path, "--out", out, *paths]) == 0
    # base + 3 experts per name, each name once, in sorted order
    assert order == [n for n in sorted(SHAPES) for _ in range(4)]


def test_bf16_files_stream_and_keep_the_dtype(tmp_path):
    bf16 = np.dtype(ml_dtypes.bfloat16)
    base, models, base_path, paths = _write(tmp_path, dtype=bf16)
    got = _merge(tmp_path, "m.safetensors", paths, base_path, ["--operator", "task_arithmetic"])
    for n in SHAPES:
        assert got[n].dtype == bf16
        x = {n: jnp.asarray(np.stack([m[n] - base[n] for m in models]))}
        tau = MERGE_OPERATORS["task_arithmetic"].fn(x, None)[n]
        np.testing.assert_array_equal(got[n], (base[n] + np.asarray(tau)).astype(bf16))


def test_a_nan_in_an_expert_names_the_file_and_tensor(tmp_path, capsys):
    base, models, base_path, paths = _write(tmp_path)
    models[1]["h.0.b"][2] = np.nan
    save_safetensors(paths[1], models[1])
    out = tmp_path / "m.safetensors"
    argv = ["merge", "--operator", "ties", "--base", base_path, "--out", str(out), *paths]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{paths[1]}: key 'h.0.b' has 1 NaN/Inf" in err, err
    assert not out.exists()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_ties_blocks_of_one_row_change_nothing(tmp_path, monkeypatch, dtype):
    # every tensor of 2+ rows merged one row at a time: thresholds from 1-row blocks
    _, _, base_path, paths = _write(tmp_path, dtype=np.dtype(dtype), seed=5)
    extra = ["--operator", "ties", "--density", "0.3"]
    whole = _merge(tmp_path, "a.safetensors", paths, base_path, extra)
    monkeypatch.setattr(merge_stream, "DEFAULT_BLOCK_BYTES", 3 * 6 * np.dtype(dtype).itemsize)
    used = _count_blocked_ties(monkeypatch)
    blocked = _merge(tmp_path, "b.safetensors", paths, base_path, extra)
    assert used == [True]
    for n in SHAPES:
        np.testing.assert_array_equal(blocked[n], whole[n], err_msg=n)


def test_ties_row_blocks_of_model_folders_change_nothing(tmp_path, hf_pool, monkeypatch):
    hf_pool(tmp_path)
    paths = [str(tmp_path / f"expert{i}") for i in range(4)]
    argv = ["merge", "--operator", "ties", "--density", "0.4", "--base", str(tmp_path / "base")]
    assert main([*argv, "--out", str(tmp_path / "whole"), *paths]) == 0
    monkeypatch.setattr(merge_stream, "DEFAULT_BLOCK_BYTES", 4 * 2 * 4 * 8)  # 2 rows, float64
    used = _count_blocked_ties(monkeypatch)
    assert main([*argv, "--out", str(tmp_path / "blocked"), *paths]) == 0
    assert used == [True]
    whole = load_safetensors(tmp_path / "whole" / "model.safetensors")
    blocked = load_safetensors(tmp_path / "blocked" / "model.safetensors")
    for n, w in whole.items():
        np.testing.assert_array_equal(blocked[n], w, err_msg=n)
