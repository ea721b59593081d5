"""``mergetheory merge`` on HF model folders and mergekit configs (per-tensor streaming)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.io import load_safetensors
from mergetheory.merge import MERGE_OPERATORS

WEIGHTS = [1.0, 0.5, 2.0, 1.5]


def _config(tmp, method, params="", models_params=""):
    text = "models:\n" + "".join(
        f"  - model: expert{i}\n{models_params.format(w=WEIGHTS[i])}" for i in range(4)
    )
    text += f"base_model: base\nmerge_method: {method}\n{params}"
    (tmp / "merge.yml").write_text(text)
    return str(tmp / "merge.yml")


def _read_folder(folder):
    index = folder / "model.safetensors.index.json"
    if index.exists():
        out = {}
        for f in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_safetensors(folder / f))
        return out
    return load_safetensors(folder / "model.safetensors")


def test_mergekit_ties_config_equals_the_registry_operator(tmp_path, hf_pool, capsys):
    base, experts, _ = hf_pool(tmp_path)
    weights = WEIGHTS
    per_model = "    parameters: {{weight: {w}}}\n"
    cfg = _config(tmp_path, "ties", "parameters: {density: 0.5}\ndtype: float32\n", per_model)
    out = tmp_path / "merged"
    rc = main(["merge", "--config", cfg, "--out", str(out), "--max-shard-size", "100"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "config.json").is_file() and (out / "model.safetensors.index.json").is_file()
    got = _read_folder(out)
    stacked = {
        n: jnp.asarray(np.stack([e[n].astype(np.float64) - base[n] for e in experts])) for n in base
    }
    hp = {
        **MERGE_OPERATORS["ties"].default_hparams,
        "density": 0.5,
        "weights": jnp.asarray(weights),
        "weights_before_election": True,
        "aggregate": "weighted_mean",
    }
    want = MERGE_OPERATORS["ties"].fn(stacked, jax.random.key(0), **hp)
    for n in base:
        assert got[n].dtype == np.float32
        np.testing.assert_allclose(got[n], base[n] + np.asarray(want[n]), rtol=1e-6, atol=1e-6)


def test_folder_merge_with_base_keeps_dtype_unless_asked(tmp_path, hf_pool, capsys):
    base, experts, _ = hf_pool(tmp_path)
    paths = [str(tmp_path / f"expert{i}") for i in range(4)]
    out = tmp_path / "avg"
    argv = ["merge", "--operator", "average", "--base", str(tmp_path / "base"), "--out"]
    assert main([*argv, str(out), *paths]) == 0, capsys.readouterr().err
    got = _read_folder(out)
    for n in base:
        want = np.mean([e[n].astype(np.float64) for e in experts], axis=0)
        np.testing.assert_allclose(got[n], want, rtol=1e-6)
        assert got[n].dtype == np.float32
    assert main([*argv, str(tmp_path / "bf"), "--dtype", "bfloat16", *paths]) == 0
    assert str(_read_folder(tmp_path / "bf")["head.w"].dtype) == "bfloat16"


@pytest.mark.parametrize(
    "method, params, problem",
    [
        ("slerp", "", "merge_method 'slerp' is not supported"),
        ("ties", "parameters: {rescale: true}\n", "rescale: True is not supported for ties"),
        (
            "task_arithmetic",
            "parameters: {normalize: true}\n",
            "normalize: True is not supported for task_arithmetic",
        ),
        ("linear", "", "linear averages base_model too"),
        ("ties", "parameters: {epsilon: 0.1}\n", "parameter 'epsilon' of ties"),
    ],
)
def test_unsupported_mergekit_config_refused(tmp_path, hf_pool, capsys, method, params, problem):
    hf_pool(tmp_path)
    cfg = _config(tmp_path, method, params)
    assert main(["merge", "--config", cfg, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and problem in err and "merge.yml" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_per_tensor_merge_streams_msgpack_and_orbax(tmp_path, capsys, monkeypatch, fmt):
    from mergetheory.io import save_msgpack, save_orbax
    from mergetheory.io.msgpack import MsgpackReader
    from mergetheory.io.orbax import OrbaxReader

    rng = np.random.default_rng(5)
    theta0 = {"dense": {"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=4)}}
    save = save_msgpack if fmt == "msgpack" else save_orbax
    suffix = ".msgpack" if fmt == "msgpack" else ""
    paths = []
    for i, name in enumerate(["base", "e0", "e1", "e2"]):
        tree = jax.tree.map(lambda a, i=i: a + (i > 0) * rng.normal(size=a.shape), theta0)
        paths.append(str(save(tmp_path / f"{name}{suffix}", tree)))
    # whole-tree path (every expert loaded) as the reference
    assert (
        main(
            ["merge", "--operator", "ties", "--out", str(tmp_path / "whole.npz"), "--base", *paths]
        )
        == 0
    )
    reads = []
    reader = MsgpackReader if fmt == "msgpack" else OrbaxReader
    get = reader.get

    def counted(self, name, rows=None):
        reads.append(name)
        return get(self, name, rows)

    monkeypatch.setattr(reader, "get", counted)
    out = tmp_path / f"streamed{suffix}"  # the inputs' format
    rc = main(["merge", "--operator", "ties", "--per-tensor", "--out", str(out), "--base", *paths])
    assert rc == 0, capsys.readouterr().err
    assert sorted(reads) == sorted(["dense.bias", "dense.kernel"] * 4)  # each tensor once
    whole = np.load(tmp_path / "whole.npz")
    got = _restore(out, fmt)  # the format's own library reader
    assert sorted(got) == ["dense"] and sorted(got["dense"]) == ["bias", "kernel"]
    for k in whole.files:  # ties trims per tensor: the same numbers either way
        a, b = k.split(".")
        np.testing.assert_allclose(got[a][b], whole[k], rtol=1e-12, err_msg=k)


def _restore(path, fmt):
    if fmt == "msgpack":
        from flax import serialization

        return serialization.msgpack_restore(path.read_bytes())
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path)


def _ties_want(base, experts, **hp):
    stacked = {
        n: jnp.asarray(np.stack([e[n].astype(np.float64) - base[n] for e in experts])) for n in base
    }
    hp = {
        **MERGE_OPERATORS["ties"].default_hparams,
        "weights": jnp.asarray(WEIGHTS),
        "weights_before_election": True,
        **hp,
    }
    return MERGE_OPERATORS["ties"].fn(stacked, jax.random.key(0), **hp)


@pytest.mark.parametrize(
    "params, hp",
    [
        # mergekit's density defaults to 1 (keep all), not the registry's 0.2
        ("", {"density": 1.0, "aggregate": "weighted_mean"}),
        # normalize: false sums the agreeing weighted task vectors (no division)
        (
            "parameters: {density: 0.5, normalize: false, int8_mask: true}\n",
            {"density": 0.5, "aggregate": "sum"},
        ),
    ],
)
def test_mergekit_ties_defaults_and_switches(tmp_path, hf_pool, capsys, params, hp):
    base, experts, _ = hf_pool(tmp_path)
    cfg = _config(tmp_path, "ties", params, "    parameters: {{weight: {w}}}\n")
    out = tmp_path / "merged"
    assert main(["merge", "--config", cfg, "--out", str(out)]) == 0, capsys.readouterr().err
    got, want = _read_folder(out), _ties_want(base, experts, **hp)
    for n in base:
        np.testing.assert_allclose(got[n], base[n] + np.asarray(want[n]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_base", [False, True])
def test_mergekit_linear_is_the_weighted_mean_of_every_listed_model(
    tmp_path, hf_pool, capsys, with_base
):
    base, experts, _ = hf_pool(tmp_path)
    models = [("base", base)] if with_base else []
    models += [(f"expert{i}", e) for i, e in enumerate(experts)]
    text = "models:\n" + "".join(
        f"  - model: {name}\n    parameters: {{weight: {0.25 + i}}}\n"
        for i, (name, _) in enumerate(models)
    )
    text += "base_model: base\n" if with_base else ""
    (tmp_path / "merge.yml").write_text(text + "merge_method: linear\n")
    out = tmp_path / "merged"
    argv = ["merge", "--config", str(tmp_path / "merge.yml"), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    got = _read_folder(out)
    w = np.array([0.25 + i for i in range(len(models))])
    for n in base:
        want = (
            sum(wi * m[n].astype(np.float64) for wi, (_, m) in zip(w, models, strict=True))
            / w.sum()
        )
        np.testing.assert_allclose(got[n], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["dare_linear", "dare_ties"])
def test_per_tensor_random_masks_equal_the_whole_tree_merge(tmp_path, monkeypatch, capsys, op):
    from mergetheory.cli import merge
    from mergetheory.io import save_safetensors

    rng = np.random.default_rng(6)
    shapes = {"a.w": (6, 4), "a.b": (4,), "z": (3, 5)}  # same-size leaves: masks must differ
    paths = []
    for i, name in enumerate(["base", "e0", "e1", "e2"]):
        paths.append(str(tmp_path / f"{name}.safetensors"))
        save_safetensors(paths[-1], {k: (i > 0) + rng.normal(size=s) for k, s in shapes.items()})
    argv = ["merge", "--operator", op, "--seed", "3", "--base", paths[0]]
    with monkeypatch.context() as m:
        m.setattr(merge, "is_streamable", lambda *a: False)  # every expert loaded
        assert main([*argv, "--out", str(tmp_path / "whole.npz"), *paths[1:]]) == 0
    rc = main([*argv, "--per-tensor", "--out", str(tmp_path / "pt"), *paths[1:]])
    assert rc == 0, capsys.readouterr().err
    whole, got = np.load(tmp_path / "whole.npz"), _read_folder(tmp_path / "pt")
    assert sorted(got) == sorted(whole.files)
    for k in whole.files:  # each tensor given its key in the whole tree
        np.testing.assert_array_equal(got[k], whole[k], err_msg=k)
