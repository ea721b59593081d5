"""Orbax and msgpack checkpoints read one array at a time: equal to the libraries' loaders."""

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from mergetheory.io import CheckpointError, flatten_tree, load_checkpoint, save_msgpack, save_orbax
from mergetheory.io.msgpack import MsgpackReader
from mergetheory.io.orbax import OrbaxReader
from mergetheory.io.pool import open_expert, stream_pool_statistics


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": {"value": rng.standard_normal((3, 4)).astype(np.float32)}},
        "blocks": [rng.standard_normal(5), np.float16(rng.standard_normal())],
        "emb": rng.standard_normal((6, 2)).astype(ml_dtypes.bfloat16),
        "scale": 1.5,
    }


def _assert_reader_matches(reader, reference):
    assert reader.names == list(reference)
    for name, want in reference.items():
        got = reader.get(name)
        assert (reader.shape(name), reader.dtype(name)) == (want.shape, want.dtype), name
        assert (got.shape, got.dtype) == (want.shape, want.dtype), name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_msgpack_reader_equals_flax_msgpack_restore(tmp_path, monkeypatch):
    from flax import serialization

    tree = _tree()
    tree["big"] = np.arange(300, dtype=np.float64).reshape(3, 100)
    tree["misc"] = {"step": 7, "note": "x", "z": 1 + 2j, "none": None}
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 512)  # "big" is stored chunked
    data = serialization.msgpack_serialize(tree)
    assert b"__msgpack_chunked_array__" in data
    path = tmp_path / "m.msgpack"
    path.write_bytes(data)
    # the reference is the library's own restore, flattened as load_checkpoint does
    reference = flatten_tree(load_checkpoint(path, check_finite=False))
    assert "dense.kernel" in reference and "big" in reference
    _assert_reader_matches(MsgpackReader(path), reference)
    reader = MsgpackReader(path)
    for name in ("big", "dense.kernel", "emb"):  # rows across chunk boundaries, and plain
        want = reference[name]
        for rows in [(0, 1), (1, 3), (2, 3), (0, want.shape[0]), (2, 2)]:
            np.testing.assert_array_equal(
                reader.get(name, rows), want[rows[0] : rows[1]], err_msg=f"{name} {rows}"
            )


def test_msgpack_reader_reads_only_the_asked_array(tmp_path):
    small = np.arange(8, dtype=np.float32)
    big = np.ones(2_000_000, np.float32)  # 8 MB
    path = save_msgpack(tmp_path / "m.msgpack", {"big": big, "small": small})
    tracemalloc.start()
    try:
        reader = MsgpackReader(path)
        opened = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        got = reader.get("small")
        read = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, small)
    assert opened < big.nbytes / 20 and read < big.nbytes / 20, (opened, read)
    # the index never decodes array data: garbling "big"'s bytes leaves "small" intact
    raw = bytearray(path.read_bytes())
    at = raw.find(big.tobytes()[:64])
    raw[at : at + big.nbytes] = b"\xff" * big.nbytes
    path.write_bytes(bytes(raw))
    reader = MsgpackReader(path)
    np.testing.assert_array_equal(reader.get("small"), small)
    assert np.isnan(reader.get("big")).all()


@pytest.mark.parametrize(
    "mangle, why",
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b + b"\x00", "extra bytes"),
        (lambda b: b"\x93\x01\x02\x03", "not a pytree"),
    ],
)
def test_msgpack_reader_names_the_file_of_a_bad_input(tmp_path, mangle, why):
    path = save_msgpack(tmp_path / "m.msgpack", {"w": np.ones(100)})
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(CheckpointError, match=r"m\.msgpack") as err:
        MsgpackReader(path)
    assert why in str(err.value)
    with pytest.raises(CheckpointError, match=r"m\.msgpack"):
        load_checkpoint(path)  # the library path refuses it too


def test_orbax_reader_equals_orbax_restore_and_unwraps_nnx_state(tmp_path):
    import orbax.checkpoint as ocp
    from flax import nnx

    path = save_orbax(tmp_path / "ck", _tree())
    _assert_reader_matches(OrbaxReader(path), flatten_tree(load_checkpoint(path)))
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "nnx", nnx.state(model))
        ckptr.wait_until_finished()
    reader = OrbaxReader(tmp_path / "nnx")
    assert sorted(reader.names) == ["bias", "kernel"]
    np.testing.assert_array_equal(reader.get("kernel"), np.asarray(model.kernel[...]))


def test_orbax_reader_restores_one_leaf_per_get(tmp_path, monkeypatch):
    import jax
    import orbax.checkpoint as ocp

    path = save_orbax(tmp_path / "ck", _tree())
    reader = OrbaxReader(path)
    requested = []
    restore = ocp.Checkpointer.restore

    def spy(self, directory, args):
        requested.append([x for x in jax.tree_util.tree_leaves(args.item) if x is not None])
        assert args.partial_restore
        return restore(self, directory, args=args)

    monkeypatch.setattr(ocp.Checkpointer, "restore", spy)
    for name in reader.names:
        reader.get(name)
    assert [len(r) for r in requested] == [1] * len(reader.names)


def test_orbax_reader_reads_manager_steps(tmp_path):
    import orbax.checkpoint as ocp

    root = tmp_path / "run"
    with ocp.CheckpointManager(root) as mgr:
        for step in (1, 3):
            mgr.save(step, args=ocp.args.StandardSave({"w": np.full((2, 2), float(step))}))
        mgr.wait_until_finished()
    assert OrbaxReader(root).get("w")[0, 0] == 3.0
    assert OrbaxReader(root, step=1).get("w")[0, 0] == 1.0
    with pytest.raises(CheckpointError, match="has no step 2"):
        OrbaxReader(root, step=2)


def test_stream_pool_statistics_on_orbax_and_msgpack_pools(tmp_path):
    trees = [_tree(seed) for seed in range(4)]
    for i, t in enumerate(trees):
        save_orbax(tmp_path / f"o{i}", t)
        save_msgpack(tmp_path / f"m{i}.msgpack", t)
    flat = [flatten_tree(load_checkpoint(tmp_path / f"m{i}.msgpack")) for i in range(4)]
    x = np.stack(
        [
            np.concatenate([f[k].astype(np.float64).ravel() - flat[0][k].ravel() for k in f])
            for f in flat[1:]
        ]
    )
    for kind in ("o{}", "m{}.msgpack"):
        opened = [open_expert(tmp_path / kind.format(i)) for i in range(4)]
        stats = stream_pool_statistics(opened[1:], opened[0])
        np.testing.assert_allclose(stats.gram, x @ x.T, rtol=1e-12)
        assert stats.num_params == x.shape[1]
