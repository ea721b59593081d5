"""Tests for mergetheory.io (checkpoints): round trips, PEFT adapters, lineage, every error path."""

import json
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory import io as ck
from mergetheory.lora import densify, lora_gram_matrix
from mergetheory.tree import TaskVectorError, gram_matrix


def _rng(key):
    """A NumPy generator seeded from the test key (cheaper than compiling jax.random ops)."""
    return np.random.default_rng(np.asarray(jr.key_data(key)).tolist())


def _params(key, scale=1.0):
    rng = _rng(key)
    return {
        "hidden_0": {
            "kernel": jnp.asarray(scale * rng.standard_normal((6, 4)), jnp.float32),
            "bias": jnp.asarray(scale * rng.standard_normal(4), jnp.float32),
        },
        "out": {
            "kernel": jnp.asarray(scale * rng.standard_normal((4, 3)), jnp.float64),
            "bias": jnp.zeros(3, jnp.float64),
        },
    }


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _no_temp_left(directory):
    return not any(p.name.startswith(".") and ".tmp-" in p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------


def test_orbax_round_trip_and_atomic_overwrite(tmp_path, key):
    p = _params(key)
    path = ck.save_orbax(tmp_path / "base", p)
    _assert_tree_equal(ck.load_orbax(path), p)
    _assert_tree_equal(ck.load_checkpoint(path), p)  # a directory dispatches to orbax
    # restoring against an abstract target fixes structure and dtypes
    _assert_tree_equal(ck.load_orbax(path, abstract_tree=p), p)
    with pytest.raises(ck.CheckpointError, match="already exists"):
        ck.save_orbax(path, p)
    p2 = _params(jr.fold_in(key, 1))
    ck.save_orbax(path, p2, overwrite=True)
    _assert_tree_equal(ck.load_orbax(path), p2)
    assert _no_temp_left(tmp_path)


def test_msgpack_round_trip(tmp_path, key):
    p = _params(key)
    path = ck.save_msgpack(tmp_path / "model.msgpack", p)
    _assert_tree_equal(ck.load_msgpack(path), p)
    _assert_tree_equal(ck.load_checkpoint(path), p)
    assert _no_temp_left(tmp_path)


def test_safetensors_round_trip_flat_and_nested(tmp_path, key):
    p = _params(key)
    flat = ck.flatten_tree(p)
    assert sorted(flat) == ["hidden_0.bias", "hidden_0.kernel", "out.bias", "out.kernel"]
    path = ck.save_safetensors(tmp_path / "model.safetensors", flat, metadata={"k": "v"})
    back = ck.load_safetensors(path)
    _assert_tree_equal(back, flat)
    _assert_tree_equal(ck.unflatten_tree(back), p)
    _assert_tree_equal(ck.load_checkpoint(path), p)
    assert _no_temp_left(tmp_path)


def test_flatten_rejects_ambiguous_names():
    with pytest.raises(ck.CheckpointError, match="separator"):
        ck.flatten_tree({"a.b": jnp.ones(2)})
    with pytest.raises(ck.CheckpointError, match="nests under the array"):
        ck.unflatten_tree({"a": np.ones(2), "a.b": np.ones(2)})


# --------------------------------------------------------------------------------------
# task vectors and the lineage check
# --------------------------------------------------------------------------------------


def test_task_vectors_from_mixed_format_checkpoints(tmp_path, key):
    base = _params(key)
    experts = [
        jax.tree.map(lambda x, i=i: x + (i + 1) * 0.5 * jnp.ones_like(x), base) for i in range(3)
    ]
    b = ck.save_orbax(tmp_path / "base", base)
    e0 = ck.save_orbax(tmp_path / "e0", experts[0])
    e1 = ck.save_msgpack(tmp_path / "e1.msgpack", experts[1])
    e2 = ck.save_safetensors(tmp_path / "e2.safetensors", ck.flatten_tree(experts[2]))
    tv = ck.task_vectors_from_checkpoints(b, [e0, e1, e2])
    assert tv["hidden_0"]["kernel"].shape == (3, 6, 4)
    assert tv["out"]["kernel"].dtype == jnp.float64
    for i in range(3):
        for leaf in jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], tv)):
            np.testing.assert_allclose(leaf, (i + 1) * 0.5, rtol=1e-6)
    # in-memory pytrees are accepted too
    tv2 = ck.task_vectors_from_checkpoints(base, experts)
    jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-6), tv, tv2)


def test_lineage_check_names_leaf_and_file(tmp_path, key):
    base = _params(key)
    b = ck.save_msgpack(tmp_path / "base.msgpack", base)
    good = ck.save_msgpack(tmp_path / "good.msgpack", base)

    wrong_shape = dict(base, out={"kernel": jnp.zeros((4, 5)), "bias": jnp.zeros(3)})
    ws = ck.save_msgpack(tmp_path / "wrong_shape.msgpack", wrong_shape)
    with pytest.raises(
        ck.CheckpointError, match=r"wrong_shape\.msgpack.*\['out'\]\['kernel'\].*shape"
    ):
        ck.task_vectors_from_checkpoints(b, [good, ws])

    missing = {"hidden_0": base["hidden_0"], "out": {"kernel": base["out"]["kernel"]}}
    ms = ck.save_msgpack(tmp_path / "missing.msgpack", missing)
    with pytest.raises(
        ck.CheckpointError, match=r"expert 1 .*missing\.msgpack.*\['out'\]\['bias'\]"
    ):
        ck.task_vectors_from_checkpoints(b, [good, ms])

    extra = dict(base, head={"w": jnp.zeros(2)})
    ex = ck.save_msgpack(tmp_path / "extra.msgpack", extra)
    with pytest.raises(ck.CheckpointError, match=r"extra\.msgpack.*\['head'\]\['w'\] is not in"):
        ck.task_vectors_from_checkpoints(b, [ex])

    wrong_dtype = jax.tree.map(lambda x: x.astype(jnp.float64), base)
    wd = ck.save_msgpack(tmp_path / "dtype.msgpack", wrong_dtype)
    with pytest.raises(ck.CheckpointError, match=r"dtype\.msgpack.*dtype float64"):
        ck.task_vectors_from_checkpoints(b, [wd])

    with pytest.raises(ck.CheckpointError, match="empty"):
        ck.task_vectors_from_checkpoints(b, [])
    # CheckpointError is a TaskVectorError (and a ValueError)
    assert issubclass(ck.CheckpointError, TaskVectorError)


# --------------------------------------------------------------------------------------
# error paths: missing, corrupt, non-finite, unknown format
# --------------------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path):
    for fn, name in [
        (ck.load_orbax, "nope_dir"),
        (ck.load_msgpack, "nope.msgpack"),
        (ck.load_safetensors, "nope.safetensors"),
        (ck.load_checkpoint, "nope.msgpack"),
        (ck.load_peft_adapter, "nope_adapter"),
    ]:
        with pytest.raises(ck.CheckpointError, match=rf"not found: .*{name}"):
            fn(tmp_path / name)
    with pytest.raises(ck.CheckpointError, match=r"not found: .*missing_expert"):
        ck.task_vectors_from_checkpoints({"w": jnp.ones(2)}, [tmp_path / "missing_expert"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ck.CheckpointError, match="unknown checkpoint format"):
        ck.load_checkpoint(tmp_path / "file.txt")
    with pytest.raises(ck.CheckpointError, match="must be a directory"):
        ck.load_orbax(tmp_path / "file.txt")


def test_truncated_and_corrupt_files(tmp_path, key):
    p = _params(key)
    mp = ck.save_msgpack(tmp_path / "m.msgpack", p)
    data = mp.read_bytes()
    mp.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match=r"corrupt or truncated msgpack .*m\.msgpack"):
        ck.load_msgpack(mp)
    mp.write_bytes(b"")
    with pytest.raises(ck.CheckpointError, match="empty"):
        ck.load_msgpack(mp)

    st = ck.save_safetensors(tmp_path / "s.safetensors", ck.flatten_tree(p))
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 7])
    with pytest.raises(
        ck.CheckpointError, match=r"corrupt or truncated safetensors .*s\.safetensors"
    ):
        ck.load_safetensors(st)
    st.write_bytes(b"\x00garbage")
    with pytest.raises(ck.CheckpointError, match="corrupt or truncated safetensors .*exceeds"):
        ck.load_safetensors(st)

    od = ck.save_orbax(tmp_path / "o", p)
    for f in od.rglob("*"):
        if f.is_file() and f.name == "manifest.ocdbt":
            f.write_bytes(b"\x00" * 3)
    with pytest.raises(ck.CheckpointError, match=r"orbax checkpoint .*[/\\]o"):
        ck.load_orbax(od)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ck.CheckpointError, match="empty_dir"):
        ck.load_orbax(empty)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_rejected_with_file_and_leaf(tmp_path, key, bad):
    p = _params(key)
    p["hidden_0"]["bias"] = p["hidden_0"]["bias"].at[1].set(bad)
    mp = ck.save_msgpack(tmp_path / "bad.msgpack", p)
    with pytest.raises(ck.CheckpointError, match=r"bad\.msgpack: leaf \['hidden_0'\]\['bias'\]"):
        ck.load_msgpack(mp)
    st = ck.save_safetensors(tmp_path / "bad.safetensors", ck.flatten_tree(p))
    with pytest.raises(ck.CheckpointError, match=r"bad\.safetensors: leaf \['hidden_0\.bias'\]"):
        ck.load_safetensors(st)
    od = ck.save_orbax(tmp_path / "bad_orbax", p)
    with pytest.raises(ck.CheckpointError, match=r"bad_orbax: leaf"):
        ck.load_orbax(od)
    with pytest.raises(ck.CheckpointError, match="in-memory"):
        ck.task_vectors_from_checkpoints(_params(key), [p])
    # opting out of the check loads the values as they are
    assert np.isnan(ck.load_msgpack(mp, check_finite=False)["hidden_0"]["bias"][1]) == (
        bool(np.isnan(bad))
    )


# --------------------------------------------------------------------------------------
# PEFT LoRA adapters
# --------------------------------------------------------------------------------------

_MODULES = {
    "model.layers.0.self_attn.q_proj": (8, 6),  # (d_out, d_in)
    "model.layers.0.self_attn.v_proj": (5, 6),
    "model.layers.1.self_attn.q_proj": (8, 6),
}


def _fake_adapter(key, r):
    rng = _rng(key)
    return {
        name: (
            rng.standard_normal((d_out, r)).astype(np.float32),
            rng.standard_normal((r, d_in)).astype(np.float32),
        )
        for name, (d_out, d_in) in _MODULES.items()
    }


@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_adapter_round_trip_scaling_and_dense_update(tmp_path, key, use_rslora):
    r, alpha = 4, 16
    mods = _fake_adapter(key, r)
    path = ck.save_peft_adapter(
        tmp_path / "adapter", mods, r=r, lora_alpha=alpha, use_rslora=use_rslora
    )
    assert (path / "adapter_model.safetensors").is_file()
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["r"] == r and cfg["use_rslora"] is use_rslora
    flat = ck.load_safetensors(path / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in flat
    assert flat["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (r, 6)

    ad = ck.load_peft_adapter(path)
    expected_s = alpha / math.sqrt(r) if use_rslora else alpha / r
    f = ad.factors["model"]["layers"]["0"]["self_attn"]["q_proj"]
    assert f.scaling == pytest.approx(expected_s)
    np.testing.assert_array_equal(f.B, mods["model.layers.0.self_attn.q_proj"][0])
    np.testing.assert_array_equal(f.A, mods["model.layers.0.self_attn.q_proj"][1])
    dense = ck.peft_dense_update(ad)
    for name, (b, a) in mods.items():
        node = dense
        for part in name.split("."):
            node = node[part]
        np.testing.assert_allclose(node, expected_s * (b @ a), rtol=1e-6)


def test_stack_peft_adapters_feeds_lora_gram(tmp_path, key):
    paths = []
    for t, (r, alpha, rs) in enumerate([(4, 8, False), (2, 8, True), (4, 4, False)]):
        mods = _fake_adapter(jr.fold_in(key, t), r)
        paths.append(
            ck.save_peft_adapter(tmp_path / f"a{t}", mods, r=r, lora_alpha=alpha, use_rslora=rs)
        )
    stacked = ck.stack_peft_adapters(paths)
    q = stacked["model"]["layers"]["0"]["self_attn"]["q_proj"]
    assert q.B.shape == (3, 8, 4) and q.A.shape == (3, 4, 6)  # rank 2 padded to 4
    np.testing.assert_allclose(q.scaling, [2.0, 8 / math.sqrt(2), 1.0], rtol=1e-6)
    dense = densify(stacked)
    per = [ck.peft_dense_update(ck.load_peft_adapter(p)) for p in paths]
    for t in range(3):
        np.testing.assert_allclose(
            dense["model"]["layers"]["0"]["self_attn"]["v_proj"][t],
            per[t]["model"]["layers"]["0"]["self_attn"]["v_proj"],
            rtol=1e-5,
        )
    np.testing.assert_allclose(lora_gram_matrix(stacked), gram_matrix(dense), rtol=1e-4)


def test_peft_rank_pattern(tmp_path, key):
    mods = _fake_adapter(key, 4)
    rng = _rng(jr.fold_in(key, 99))
    mods["model.layers.0.self_attn.v_proj"] = (
        rng.standard_normal((5, 2)).astype(np.float32),
        rng.standard_normal((2, 6)).astype(np.float32),
    )
    path = ck.save_peft_adapter(
        tmp_path / "ad",
        mods,
        r=4,
        lora_alpha=8,
        extra_config={"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"v_proj": 1}},
    )
    ad = ck.load_peft_adapter(path)
    assert ad.factors["model"]["layers"]["0"]["self_attn"]["v_proj"].scaling == pytest.approx(0.5)
    assert ad.factors["model"]["layers"]["0"]["self_attn"]["q_proj"].scaling == pytest.approx(2.0)


def test_peft_error_paths(tmp_path, key):
    mods = _fake_adapter(key, 4)
    path = ck.save_peft_adapter(tmp_path / "ad", mods, r=4, lora_alpha=8)
    # rank disagreeing with the config
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps(dict(cfg, r=3)))
    with pytest.raises(ck.CheckpointError, match=r"q_proj .*config says r = 3"):
        ck.load_peft_adapter(path)
    # corrupt / incomplete config
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ck.CheckpointError, match=r"corrupt PEFT adapter config .*adapter_config"):
        ck.load_peft_adapter(path)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(ck.CheckpointError, match="lora_alpha"):
        ck.load_peft_adapter(path)
    (path / "adapter_config.json").unlink()
    with pytest.raises(ck.CheckpointError, match="adapter config not found"):
        ck.load_peft_adapter(path)
    # a module with only one factor, and a key that is not a LoRA factor
    path2 = ck.save_peft_adapter(tmp_path / "ad2", mods, r=4, lora_alpha=8)
    flat = ck.load_safetensors(path2 / "adapter_model.safetensors")
    del flat["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    ck.save_safetensors(path2 / "adapter_model.safetensors", flat)
    with pytest.raises(ck.CheckpointError, match=r"layers\.1\.self_attn\.q_proj has no lora_B"):
        ck.load_peft_adapter(path2)
    flat["base_model.model.lm_head.weight"] = np.ones((2, 2), np.float32)
    ck.save_safetensors(path2 / "adapter_model.safetensors", flat)
    with pytest.raises(ck.CheckpointError, match="lm_head.weight' is not a LoRA factor"):
        ck.load_peft_adapter(path2)
    # truncated weights file
    path3 = ck.save_peft_adapter(tmp_path / "ad3", mods, r=4, lora_alpha=8)
    w = path3 / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(ck.CheckpointError, match=r"corrupt or truncated safetensors .*ad3"):
        ck.load_peft_adapter(path3)
    # adapters of different models cannot be stacked
    other = dict(mods)
    other["model.layers.0.self_attn.q_proj"] = (
        np.ones((7, 4), np.float32),
        np.ones((4, 6), np.float32),
    )
    p4 = ck.save_peft_adapter(tmp_path / "ad4", other, r=4, lora_alpha=8)
    p5 = ck.save_peft_adapter(tmp_path / "ad5", mods, r=4, lora_alpha=8)
    with pytest.raises(ck.CheckpointError, match=r"ad4.*q_proj.* is 7x6 but 8x6"):
        ck.stack_peft_adapters([p5, p4])
    with pytest.raises(ck.CheckpointError, match="empty"):
        ck.stack_peft_adapters([])
