"""``mergetheory merge`` of npz / msgpack / orbax inputs: streamed, written in their format.

The merged output, read back by the format's own library (``np.load``,
``flax.serialization.msgpack_restore``, orbax's ``StandardCheckpointer``), must equal the
registry operator applied in memory to the stacked trees the libraries load, and the
per-tensor operators must read one tensor at a time (``tracemalloc``: the peak is a few
tensors, not the experts).
"""

import gc
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.cli import main, merge_models, merge_stream
from mergetheory.io import flatten_tree, save_msgpack, save_orbax
from mergetheory.merge import MERGE_OPERATORS

SUFFIX = {"npz": ".npz", "msgpack": ".msgpack", "orbax": ""}


def _trees(num=3, seed=0, shapes=None):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"w": (6, 4), "b": (4,)}
    base = {"enc": {k: rng.normal(size=s) for k, s in shapes.items()}}
    experts = [jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape), base) for _ in range(num)]
    return base, experts


def _save(fmt, path, tree):
    if fmt == "npz":
        np.savez(path, **flatten_tree(tree))
        return str(path)
    return str((save_msgpack if fmt == "msgpack" else save_orbax)(path, tree))


def _write(tmp_path, fmt, base, experts):
    s = SUFFIX[fmt]
    paths = [_save(fmt, tmp_path / f"e{i}{s}", t) for i, t in enumerate(experts)]
    return _save(fmt, tmp_path / f"base{s}", base), paths


def _restore(fmt, path):
    """The output as the format's own library reads it, flattened."""
    if fmt == "npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if fmt == "msgpack":
        from flax import serialization

        return flatten_tree(serialization.msgpack_restore(path.read_bytes()))
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return flatten_tree(ckptr.restore(path))


def _in_memory(op, base, experts, **hp):
    """The registry operator on the stacked task vectors of the loaded trees, plus base."""
    flat_b, flat_e = flatten_tree(base), [flatten_tree(e) for e in experts]
    tv = {k: jnp.asarray(np.stack([e[k] - flat_b[k] for e in flat_e])) for k in flat_b}
    merged = MERGE_OPERATORS[op].fn(tv, jax.random.key(0), **hp)
    return {k: flat_b[k] + np.asarray(v) for k, v in merged.items()}


OPS = [
    ("task_arithmetic", ["--scale", "0.7"], {"scale": 0.7}),
    ("ties", ["--density", "0.4"], {"density": 0.4}),
    ("magnitude_prune", ["--density", "0.5"], {"density": 0.5}),
]


@pytest.mark.parametrize("op, flags, hp", OPS)
@pytest.mark.parametrize("fmt", ["npz", "msgpack", "orbax"])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_merge_writes_the_inputs_format(
    tmp_path, monkeypatch, capsys, fmt, op, flags, hp, per_tensor
):
    base, experts = _trees()
    base_path, paths = _write(tmp_path, fmt, base, experts)
    streamed = []
    orig = merge_stream.merged_tensors
    for module in (merge_stream, merge_models):  # plain merge, --per-tensor
        monkeypatch.setattr(
            module, "merged_tensors", lambda *a, **k: streamed.append(1) or orig(*a, **k)
        )
    out = tmp_path / f"merged{SUFFIX[fmt]}"
    argv = ["merge", "--operator", op, *flags, "--base", base_path, "--out", str(out), *paths]
    assert main([*argv, *(["--per-tensor"] if per_tensor else [])]) == 0, capsys.readouterr().err
    assert streamed == [1]  # tensor by tensor, not the whole tree
    got, want = _restore(fmt, out), _in_memory(op, base, experts, **hp)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-12, atol=1e-14, err_msg=k)
        assert got[k].dtype == np.float64


def test_a_global_trim_loads_the_whole_tree_and_writes_the_format(tmp_path, monkeypatch, capsys):
    base, experts = _trees(seed=4)
    base_path, paths = _write(tmp_path, "msgpack", base, experts)
    streamed = []
    monkeypatch.setattr(merge_stream, "merged_tensors", lambda *a, **k: streamed.append(1))
    out = tmp_path / "m.msgpack"
    argv = ["merge", "--operator", "ties", "--hparam", "trim=global", "--base", base_path]
    assert main([*argv, "--out", str(out), *paths]) == 0, capsys.readouterr().err
    assert streamed == []  # the global trim needs every tensor at once
    want = _in_memory("ties", base, experts, trim="global")
    got = _restore("msgpack", out)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-12, err_msg=k)


def test_nnx_state_orbax_merge_restores_into_the_model(tmp_path, capsys):
    import orbax.checkpoint as ocp
    from flax import nnx

    models = [nnx.Linear(4, 3, rngs=nnx.Rngs(i)) for i in range(3)]
    paths = []
    with ocp.StandardCheckpointer() as ckptr:
        for i, m in enumerate(models):
            ckptr.save(tmp_path / f"m{i}", nnx.state(m))
        ckptr.wait_until_finished()
        paths = [str(tmp_path / f"m{i}") for i in range(3)]
    out = tmp_path / "merged"
    argv = ["merge", "--operator", "task_arithmetic", "--base", paths[0], "--out", str(out)]
    assert main([*argv, *paths[1:]]) == 0, capsys.readouterr().err
    graph, abstract = nnx.split(nnx.eval_shape(lambda: nnx.Linear(4, 3, rngs=nnx.Rngs(0))))
    with ocp.StandardCheckpointer() as ckptr:
        merged = nnx.merge(graph, ckptr.restore(out, abstract))  # the nnx.State tree kept
    k = [np.asarray(m.kernel[...]) for m in models]
    np.testing.assert_allclose(merged.kernel[...], k[1] + k[2] - k[0], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["npz", "msgpack", "orbax"])
def test_streamed_merge_holds_a_few_tensors(tmp_path, monkeypatch, capsys, fmt):
    from mergetheory.io import orbax

    shapes = {f"t{i}": (128, 256) for i in range(24)}  # 24 tensors of 256 KiB (float64)
    base, experts = _trees(num=4, seed=2, shapes=shapes)
    base_path, paths = _write(tmp_path, fmt, base, experts)
    tensor = 128 * 256 * 8
    monkeypatch.setattr(orbax, "ORBAX_BATCH_BYTES", 2 * tensor)  # orbax output: pairs
    argv = ["merge", "--operator", "task_arithmetic", "--base", base_path, "--out"]
    main([*argv, str(tmp_path / f"warm{SUFFIX[fmt]}"), *paths])  # compile, then measure
    peaks = {}
    for name, extra in (("streamed", []), ("whole", ["--hparam", "trim=global"])):
        op = ["--operator", "ties"] if extra else []
        out = str(tmp_path / f"{name}{SUFFIX[fmt]}")
        gc.collect()
        tracemalloc.start()
        try:
            assert main([*argv, out, *op, *extra, *paths]) == 0, capsys.readouterr().err
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    experts_bytes = 4 * 24 * tensor
    # streamed: the [4, ...] stack of one tensor, the base's copy, one read, the result
    # (about 6 tensors; a few more at times, garbage of the run not yet collected); orbax
    # also holds the writer's group (2 tensors here) and orbax's copies while saving it
    limit = 16 if fmt == "orbax" else 12
    assert peaks["streamed"] < limit * tensor, peaks
    assert peaks["whole"] > experts_bytes, peaks  # every expert loaded: what streaming avoids


@pytest.mark.parametrize(
    "mangle, problem",
    [
        ("truncate", "e1"),
        ("shape", "has shape (3, 4), but"),
        ("nan", "key 'enc.w' has 1 NaN/Inf"),
    ],
)
@pytest.mark.parametrize("fmt", ["npz", "msgpack"])
def test_bad_streamed_inputs_are_one_line_exit_2(tmp_path, capsys, fmt, mangle, problem):
    base, experts = _trees(seed=5)
    if mangle == "shape":
        experts[1]["enc"]["w"] = experts[1]["enc"]["w"][:3]
    if mangle == "nan":
        experts[1]["enc"]["w"][2, 1] = np.nan
    base_path, paths = _write(tmp_path, fmt, base, experts)
    if mangle == "truncate":
        data = open(paths[1], "rb").read()
        open(paths[1], "wb").write(data[: len(data) // 2])
    out = tmp_path / f"m{SUFFIX[fmt]}"
    argv = ["merge", "--operator", "ties", "--base", base_path, "--out", str(out), *paths]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and problem in err and "e1" in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name[0] == ".") == []


def test_out_of_the_wrong_kind_is_refused_before_merging(tmp_path, capsys):
    base, experts = _trees(seed=6)
    base_path, paths = _write(tmp_path, "orbax", base, experts)
    argv = ["merge", "--operator", "average", "--base", base_path, "--per-tensor", "--out"]
    assert main([*argv, paths[0], *paths]) == 2  # an existing folder: orbax must be new
    assert "an orbax output must be a new folder" in capsys.readouterr().err
    (tmp_path / "d.msgpack").mkdir()
    assert main([*argv, str(tmp_path / "d.msgpack"), *paths]) == 2
    assert "is a directory, expected a file name" in capsys.readouterr().err


@pytest.mark.parametrize("op", sorted(merge_stream.STREAMED_OPERATORS))
@pytest.mark.parametrize("with_base", [True, False])
def test_every_streamed_operator_equals_its_whole_tree_merge(tmp_path, monkeypatch, op, with_base):
    from mergetheory.cli import merge

    base, experts = _trees(num=3, seed=7, shapes={"w": (6, 4), "v": (3, 5), "b": (4,)})
    base_path, paths = _write(tmp_path, "npz", base, experts)
    extra = ["--base-accuracy", "0.2,0.5,0.7"] if op == "base_knowledge_weighted" else []
    extra += [f"--hparam={k}={v}" for k, v in merge_stream.STREAMED_OPERATORS[op].items()]
    argv = ["merge", "--operator", op, *extra, *(["--base", base_path] if with_base else [])]
    assert main([*argv, "--out", str(tmp_path / "s.npz"), *paths]) == 0
    with monkeypatch.context() as m:
        m.setattr(merge, "is_streamable", lambda *a: False)
        assert main([*argv, "--out", str(tmp_path / "w.npz"), *paths]) == 0
    got, want = _restore("npz", tmp_path / "s.npz"), _restore("npz", tmp_path / "w.npz")
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype, k
        np.testing.assert_array_equal(got[k], w, err_msg=k)


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_scalar_leaves_come_back_as_the_inputs_held_them(tmp_path, fmt, per_tensor):
    import flax.serialization as fs
    import orbax.checkpoint as ocp

    from mergetheory.io import save_orbax

    rng = np.random.default_rng(9)
    trees = [{"w": rng.normal(size=(3, 2)), "t": 1.5 + i, "s": np.float32(2 + i)} for i in range(3)]
    paths = []
    for i, tree in enumerate(trees):
        if fmt == "msgpack":
            paths.append(tmp_path / f"e{i}.msgpack")
            paths[-1].write_bytes(fs.msgpack_serialize(tree))
        else:
            paths.append(save_orbax(tmp_path / f"e{i}", tree))
    out = tmp_path / ("m.msgpack" if fmt == "msgpack" else "m")
    flags = ["--per-tensor"] if per_tensor else []
    argv = ["merge", "--operator", "average", *flags, "--base", str(paths[0]), "--out", str(out)]
    assert main([*argv, *map(str, paths[1:])]) == 0
    if fmt == "msgpack":
        got, first = fs.msgpack_restore(out.read_bytes()), fs.msgpack_restore(paths[0].read_bytes())
    else:
        with ocp.StandardCheckpointer() as ckptr:
            got, first = ckptr.restore(out), ckptr.restore(paths[0])
    for k in ("t", "s", "w"):  # Python float / NumPy scalar / array, as in the inputs
        assert type(got[k]) is type(first[k]), (k, type(got[k]), type(first[k]))
        want = np.mean([np.asarray(t[k], np.float64) for t in trees[1:]], axis=0)
        np.testing.assert_allclose(np.asarray(got[k], np.float64), want, rtol=1e-6)
