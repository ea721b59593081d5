"""Checkpoints written one tensor at a time, read back by each format's own library.

NpzWriter against ``np.load``, MsgpackWriter against ``flax.serialization.msgpack_restore``,
OrbaxWriter against orbax's ``StandardCheckpointer``; the lazy NpzReader against
``np.load``; OrbaxReader's row reads against the whole restored leaf.
"""

import jax
import ml_dtypes
import numpy as np
import pytest

from mergetheory.io import CheckpointError, save_msgpack, save_orbax
from mergetheory.io.msgpack import MsgpackReader, MsgpackWriter
from mergetheory.io.npz import NpzReader, NpzWriter
from mergetheory.io.orbax import OrbaxReader, OrbaxWriter


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": {"value": rng.standard_normal((7, 4)).astype(np.float32)}},
        "layers": {"0": {"w": rng.standard_normal((5, 3))}, "1": {"w": rng.standard_normal(3)}},
        "emb": rng.standard_normal((6, 2)).astype(ml_dtypes.bfloat16),
    }


def _copy_through(reader, writer_cls, path, scale=2.0, **kw):
    """Write ``scale *`` every tensor of ``reader`` with the reader's own tree."""
    spec = {n: (reader.shape(n), reader.dtype(n)) for n in reader.names}
    writer = writer_cls(path, spec, reader.key_paths, **kw)
    with writer:
        for n in writer.order:
            writer.write(n, (scale * reader.get(n).astype(np.float64)).astype(reader.dtype(n)))
    return writer


def _same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def _scaled(tree, scale=2.0):
    return jax.tree.map(
        lambda a: (scale * np.asarray(a).astype(np.float64)).astype(np.asarray(a).dtype), tree
    )


@pytest.mark.parametrize("chunk", [None, 64])
def test_msgpack_writer_is_read_by_flax_with_the_input_tree(tmp_path, monkeypatch, chunk):
    from flax import serialization

    src = save_msgpack(tmp_path / "in.msgpack", _tree())
    if chunk:  # every array above 64 bytes is written in flax's chunked layout
        monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", chunk)
    out = tmp_path / "out.msgpack"
    _copy_through(MsgpackReader(src), MsgpackWriter, out)
    data = out.read_bytes()
    assert (b"__msgpack_chunked_array__" in data) == bool(chunk)
    want = serialization.msgpack_restore(src.read_bytes())
    _same(serialization.msgpack_restore(data), _scaled(want))  # wrappers kept


def test_npz_writer_and_reader_against_numpy(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"a.w": rng.normal(size=(9, 3)), "b": rng.normal(size=4).astype(np.float32)}
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    for name in ("plain.npz", "packed.npz"):
        reader = NpzReader(tmp_path / name)
        assert reader.names == list(arrays)
        for k, a in arrays.items():
            got = reader.get(k)
            assert (reader.shape(k), reader.dtype(k), got.dtype) == (a.shape, a.dtype, a.dtype)
            np.testing.assert_array_equal(got, a)
        for rows in [(0, 1), (2, 7), (8, 9), (3, 3)]:
            np.testing.assert_array_equal(reader.get("a.w", rows), arrays["a.w"][slice(*rows)])
    _copy_through(NpzReader(tmp_path / "plain.npz"), NpzWriter, tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as back:
        assert back.files == list(arrays)
        for k, a in arrays.items():
            np.testing.assert_array_equal(back[k], 2 * a)


@pytest.mark.parametrize("batch_bytes", [None, 1])
def test_orbax_writer_is_restored_by_orbax_with_the_input_tree(tmp_path, batch_bytes):
    import orbax.checkpoint as ocp

    src = save_orbax(tmp_path / "in", _tree())
    out = tmp_path / "out"
    w = _copy_through(OrbaxReader(src), OrbaxWriter, out, batch_bytes=batch_bytes)
    assert w.groups == (1 if batch_bytes is None else 4)  # one group per tensor at 1 byte
    with ocp.StandardCheckpointer() as ckptr:
        got, want = ckptr.restore(out), ckptr.restore(src)
    _same(got, _scaled(want))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no temporaries


def test_orbax_writer_output_restores_into_an_nnx_model(tmp_path):
    import orbax.checkpoint as ocp
    from flax import nnx

    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "in", nnx.state(model))
        ckptr.wait_until_finished()
    _copy_through(OrbaxReader(tmp_path / "in"), OrbaxWriter, tmp_path / "out", batch_bytes=1)
    graph, abstract = nnx.split(nnx.eval_shape(lambda: nnx.Linear(5, 3, rngs=nnx.Rngs(0))))
    with ocp.StandardCheckpointer() as ckptr:
        restored = nnx.merge(graph, ckptr.restore(tmp_path / "out", abstract))
    np.testing.assert_array_equal(restored.kernel[...], 2 * np.asarray(model.kernel[...]))


@pytest.mark.parametrize("cls", [NpzWriter, MsgpackWriter, OrbaxWriter])
def test_writers_refuse_a_wrong_tensor_and_leave_nothing(tmp_path, cls):
    spec = {"a": ((2,), np.float32), "b": ((3,), np.float64)}
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="expected tensor 'a'"), cls(out, spec) as w:
        w.write("b", np.zeros(3))
    with pytest.raises(CheckpointError, match="'b' was declared, not written"):
        with cls(out, spec) as w:
            w.write("a", np.zeros(2, np.float32))
    with pytest.raises(RuntimeError), cls(out, spec) as w:  # a failure mid-merge
        w.write("a", np.zeros(2, np.float32))
        raise RuntimeError("merge failed")
    assert list(tmp_path.iterdir()) == []


def test_orbax_row_reads_equal_the_restored_leaf(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    tree = _tree(3)
    tree["big"] = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)
    path = save_orbax(tmp_path / "ck", tree)
    reader = OrbaxReader(path)
    whole = {n: reader.get(n) for n in reader.names}
    restored = []
    restore = ocp.Checkpointer.restore
    monkeypatch.setattr(
        ocp.Checkpointer, "restore", lambda *a, **k: restored.append(1) or restore(*a, **k)
    )
    for name in ("big", "dense.kernel", "emb", "layers.0.w"):
        for rows in [(0, 1), (3, 5), (0, whole[name].shape[0]), (2, 2)]:
            got = reader.get(name, rows)
            assert got.dtype == whole[name].dtype, name
            np.testing.assert_array_equal(got, whole[name][slice(*rows)], err_msg=name)
    assert restored == []  # rows come from tensorstore slice reads, not a leaf restore


def _without_partial_import(monkeypatch):
    import sys

    import orbax.checkpoint.experimental.v1 as v1

    monkeypatch.setitem(sys.modules, "orbax.checkpoint.experimental.v1.partial", None)
    monkeypatch.delattr(v1, "partial", raising=False)


def _without_finalize(monkeypatch):
    from orbax.checkpoint.experimental.v1 import partial

    monkeypatch.delattr(partial, "finalize")


@pytest.mark.parametrize("old_orbax", [_without_partial_import, _without_finalize])
def test_orbax_writer_without_partial_save_saves_the_tree_once(tmp_path, monkeypatch, old_orbax):
    import orbax.checkpoint as ocp

    tree = {**_tree(), "temperature": 1.5}  # a Python float leaf too
    src = save_orbax(tmp_path / "in", tree)
    reader = OrbaxReader(src)
    with monkeypatch.context() as m:
        old_orbax(m)  # an orbax without partial save: the fallback
        w = _copy_through(
            reader, OrbaxWriter, tmp_path / "old", batch_bytes=1, scalars=reader.scalar_kinds
        )
    assert w.groups == 1  # the whole tree held and saved once, whatever batch_bytes
    w = _copy_through(
        reader, OrbaxWriter, tmp_path / "new", batch_bytes=1, scalars=reader.scalar_kinds
    )
    assert w.groups == 5  # partial save: one group per tensor at 1 byte
    with ocp.StandardCheckpointer() as ckptr:
        old, new, want = (ckptr.restore(tmp_path / d) for d in ("old", "new", "in"))
    assert type(old["temperature"]) is type(new["temperature"]) is float
    _same(old, _scaled(want))
    _same(new, _scaled(want))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "new", "old"]  # no temporaries


def test_msgpack_writer_keeps_python_and_numpy_scalars(tmp_path):
    from flax import serialization

    tree = {**_tree(), "t": 1.5, "s": np.float32(2.5)}
    src = tmp_path / "in.msgpack"  # flax's own bytes (save_msgpack stores arrays)
    src.write_bytes(serialization.msgpack_serialize(tree))
    reader = MsgpackReader(src)
    assert reader.scalar_kinds == {"t": "python", "s": "numpy"}
    out = tmp_path / "out.msgpack"
    _copy_through(reader, MsgpackWriter, out, scalars=reader.scalar_kinds)
    got = serialization.msgpack_restore(out.read_bytes())
    assert type(got["t"]) is float and got["t"] == 3.0
    assert type(got["s"]) is np.float32 and got["s"] == np.float32(5.0)
    # without the kinds (another format's input): 0-d arrays
    _copy_through(reader, MsgpackWriter, tmp_path / "plain.msgpack")
    plain = serialization.msgpack_restore((tmp_path / "plain.msgpack").read_bytes())
    assert type(plain["t"]) is np.ndarray and plain["t"].shape == ()
