"""The expert zoo on its tiny configurations: contract, determinism, cache, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_traces

from mergetheory.lora import densify
from mergetheory.models.corpus import EXPERT_FAMILIES, family_of, stdlib_files, stdlib_root
from mergetheory.models.language import bits_per_byte, transformer_apply
from mergetheory.models.zoo import (
    ExpertZoo,
    ZooSpec,
    build_zoo,
    train_config,
    zoo_data,
    zoo_fingerprint,
    zoo_spec,
)
from mergetheory.models.zoo_eval import (
    base_loss_fn,
    evaluate,
    evaluate_deltas,
    evaluate_experts,
    evaluate_stack,
    example_index,
    kernel_deltas,
    lora_dense_updates,
    params_from_delta,
)
from mergetheory.models.zoo_train import eval_tasks

MODALITIES = ("language", "vision")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(scope="module")
def zoos(cache):
    return {m: build_zoo(zoo_spec(m, "tiny"), cache_dir=cache, progress=False) for m in MODALITIES}


def _leaves_with_paths(tree):
    return {
        "/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.parametrize("modality", MODALITIES)
def test_contract_fields(zoos, modality):
    zoo = zoos[modality]
    spec = zoo_spec(modality, "tiny")
    assert isinstance(zoo, ExpertZoo) and zoo.spec == spec
    num = len(spec.tasks)
    assert zoo.task_names == spec.tasks and num >= 2
    base = _leaves_with_paths(zoo.base_params)
    full = _leaves_with_paths(zoo.full_task_vectors)
    assert set(base) == set(full)
    for path, leaf in base.items():
        assert leaf.dtype == jnp.float32
        assert full[path].shape == (num,) + leaf.shape and full[path].dtype == jnp.float32
    expected_modules = (
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_fc1", "mlp_fc2"}
        if modality == "language"
        else {"hidden_0", "out"}
    )
    assert {p.split("/")[-2] for p in zoo.lora_factors} == expected_modules
    r = spec.lora_rank
    for path, f in zoo.lora_factors.items():
        d_in, d_out = base[path].shape  # flax kernel layout
        assert f.B.shape == (num, d_out, r) and f.A.shape == (num, r, d_in)
        assert f.scaling == spec.lora_alpha / r
    assert zoo.metric_name == ("bits_per_byte" if modality == "language" else "accuracy")
    assert zoo.higher_is_better == (modality == "vision")
    for arr in (zoo.base_metric, zoo.full_expert_metric, zoo.lora_expert_metric):
        assert arr.shape == (num,) and np.all(np.isfinite(arr))
    np.testing.assert_array_equal(zoo.base_knowledge, zoo.base_metric)
    info = zoo.info
    assert info["fingerprint"] == zoo_fingerprint(spec) and not info["loaded_from_cache"]
    assert info["param_counts"]["base"] == sum(x.size for x in base.values())
    assert info["param_counts"]["lora_per_expert"] == sum(
        f.A[0].size + f.B[0].size for f in zoo.lora_factors.values()
    )
    assert info["timings"]["train_total_s"] > 0
    if modality == "language":
        assert info["data"]["files"] == list(stdlib_files())
        assert len(info["data"]["sha256"]) == 64
        assert set(info["data"]["families"]) == set(spec.tasks)


@pytest.mark.parametrize("modality", MODALITIES)
def test_experts_beat_base_on_their_task(zoos, modality):
    zoo = zoos[modality]
    sign = 1.0 if zoo.higher_is_better else -1.0
    assert np.all(sign * (zoo.full_expert_metric - zoo.base_metric) > 0)
    assert np.all(sign * (zoo.lora_expert_metric - zoo.base_metric) > 0)


def _assert_same_zoo(a, b):
    for x, y in zip(jax.tree.leaves(a.base_params), jax.tree.leaves(b.base_params), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(
        jax.tree.leaves(a.full_task_vectors), jax.tree.leaves(b.full_task_vectors), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert a.lora_factors.keys() == b.lora_factors.keys()
    for p in a.lora_factors:
        np.testing.assert_array_equal(a.lora_factors[p].A, b.lora_factors[p].A)
        np.testing.assert_array_equal(a.lora_factors[p].B, b.lora_factors[p].B)
    for name in ("base_metric", "full_expert_metric", "lora_expert_metric"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_twice_identical(zoos, modality, tmp_path):
    again = build_zoo(zoo_spec(modality, "tiny"), cache_dir=tmp_path, progress=False)
    assert not again.info["loaded_from_cache"]
    _assert_same_zoo(zoos[modality], again)


@pytest.mark.parametrize("modality", MODALITIES)
def test_second_build_loads_the_cache(zoos, cache, modality):
    warm = build_zoo(zoo_spec(modality, "tiny"), cache_dir=cache, progress=False)
    assert warm.info["loaded_from_cache"]
    assert warm.info["fingerprint"] == zoos[modality].info["fingerprint"]
    assert (cache / warm.info["fingerprint"] / "zoo.json").is_file()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # nothing left over
    _assert_same_zoo(zoos[modality], warm)


def test_fingerprint_tracks_the_spec():
    spec = zoo_spec("vision", "tiny")
    fp = zoo_fingerprint(spec)
    assert fp == zoo_fingerprint(zoo_spec("vision", "tiny"))
    changed = [
        spec._replace(seed=1),
        spec._replace(lora_rank=2),
        spec._replace(expert_lr=1e-3),
        spec._replace(tasks=spec.tasks[:-1]),
    ]
    fps = {zoo_fingerprint(s) for s in changed}
    assert fp not in fps and len(fps) == len(changed)


@pytest.mark.parametrize("modality", MODALITIES)
def test_lora_dense_updates_against_numpy(zoos, modality):
    zoo = zoos[modality]
    dense = _leaves_with_paths(lora_dense_updates(zoo))
    base = _leaves_with_paths(zoo.base_params)
    assert set(dense) == set(base)
    num = len(zoo.task_names)
    for path, leaf in dense.items():
        assert leaf.shape == (num,) + base[path].shape
        if path not in zoo.lora_factors:
            assert not np.any(np.asarray(leaf))
            continue
        f = zoo.lora_factors[path]
        b, a = np.asarray(f.B, np.float64), np.asarray(f.A, np.float64)
        for t in range(num):
            want = (f.scaling * b[t] @ a[t]).T  # PEFT [d_out, d_in] -> flax kernel
            np.testing.assert_allclose(np.asarray(leaf[t]), want, rtol=1e-5, atol=1e-7)
    # kernel_deltas reads the same updates in PEFT's layout (stacked) back onto the kernels
    peft = {
        p: jnp.swapaxes(v, -1, -2)
        for p, v in _leaves_with_paths(lora_dense_updates(zoo)).items()
        if p in zoo.lora_factors
    }
    back = _leaves_with_paths(kernel_deltas(zoo, peft))
    assert set(back) == set(dense)
    for path, leaf in back.items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(dense[path]))
    with pytest.raises(ValueError, match="no parameter named"):
        kernel_deltas(zoo, {"nope": jnp.zeros((2, 3))})


@pytest.mark.parametrize("modality", MODALITIES)
def test_params_from_delta_rebuilds_the_experts(zoos, modality):
    zoo = zoos[modality]
    num = len(zoo.task_names)
    # one flipped example (vision) or float32 rounding of base + (expert - base) (language)
    tol = 1e-4 if modality == "language" else 1.5 / zoo_data(zoo.spec).eval["test"][1].shape[1]
    dense_lora = lora_dense_updates(zoo)
    peft = densify(zoo.lora_factors)  # {path: [T, d_out, d_in]}
    for t in range(num):
        full = params_from_delta(zoo, jax.tree.map(lambda x, t=t: x[t], zoo.full_task_vectors))
        got = evaluate(zoo, full, tasks=[t])
        np.testing.assert_allclose(got, zoo.full_expert_metric[t : t + 1], atol=tol)
        from_tree = params_from_delta(zoo, jax.tree.map(lambda x, t=t: x[t], dense_lora))
        from_dict = params_from_delta(zoo, {p: v[t] for p, v in peft.items()})
        for x, y in zip(jax.tree.leaves(from_tree), jax.tree.leaves(from_dict), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
        got = evaluate(zoo, from_dict, tasks=[t])
        np.testing.assert_allclose(got, zoo.lora_expert_metric[t : t + 1], atol=tol)


@pytest.mark.parametrize("modality", MODALITIES)
def test_evaluate_base_is_base_metric_and_traces_once(zoos, modality):
    zoo = zoos[modality]
    got, _ = count_traces(evaluate, zoo, zoo.base_params)
    np.testing.assert_allclose(got, zoo.base_metric, rtol=1e-6)
    _, traces = count_traces(evaluate, zoo, zoo.base_params)
    assert traces == 0
    val = evaluate(zoo, zoo.base_params, split="val", tasks=[1, 0])
    assert val.shape == (2,) and np.all(np.isfinite(val))
    stacked = jax.tree.map(lambda b, t: b[None] + t[:3], zoo.base_params, zoo.full_task_vectors)
    many = evaluate_stack(zoo, stacked, batch_size=2)
    assert many.shape == (3, len(zoo.task_names))
    for m in range(3):
        one = evaluate(zoo, jax.tree.map(lambda x, m=m: x[m], stacked))
        np.testing.assert_allclose(many[m], one, rtol=1e-5)
    # a second call with new values of the same shapes compiles nothing
    again, traces = count_traces(
        evaluate_stack, zoo, jax.tree.map(lambda x: x[::-1], stacked), batch_size=2
    )
    assert traces == 0
    np.testing.assert_allclose(again, many[::-1], rtol=1e-5)
    # base + delta inside the program: the first three experts themselves
    deltas = jax.tree.map(lambda t: t[:3], zoo.full_task_vectors)
    np.testing.assert_allclose(evaluate_deltas(zoo, deltas, batch_size=2), many, rtol=1e-5)
    with pytest.raises(ValueError, match="leading"):
        evaluate_deltas(zoo, {"w": jnp.zeros(3), "b": jnp.zeros(2)})
    # own-task metrics of the experts: the zoo's recorded expert metrics
    np.testing.assert_allclose(
        evaluate_experts(zoo, zoo.full_task_vectors), zoo.full_expert_metric, rtol=1e-5
    )
    # a subset of the examples: the same as slicing the split by hand
    sub = evaluate(zoo, zoo.base_params, max_examples=3)
    data = zoo_data(zoo.spec).eval["test"]
    idx = example_index(jax.tree.leaves(data)[0].shape[1], 3)
    assert idx.size == 3 and idx[0] == 0 and idx[-1] == jax.tree.leaves(data)[0].shape[1] - 1
    by_hand = eval_tasks(
        train_config(zoo.spec), zoo.base_params, jax.tree.map(lambda a: a[:, idx], data)
    )
    np.testing.assert_allclose(sub, np.asarray(by_hand), rtol=1e-6)


def test_bits_per_byte_by_hand():
    # p = (1/2, 1/4, 1/4, 0, ...): byte 0 costs 1 bit, byte 1 or 2 costs 2 bits
    logits = jnp.full((2, 256), -1e9, jnp.float32)
    logits = logits.at[:, :3].set(jnp.log(jnp.array([0.5, 0.25, 0.25], jnp.float32)))
    got = bits_per_byte(logits, jnp.array([0, 2], jnp.int32))
    np.testing.assert_allclose(float(got), (1.0 + 2.0) / 2, rtol=1e-6)
    uniform = bits_per_byte(jnp.zeros((3, 256), jnp.float32), jnp.array([0, 7, 255], jnp.int32))
    np.testing.assert_allclose(float(uniform), 8.0, rtol=1e-6)


def test_evaluate_language_matches_the_windows_by_hand(zoos):
    zoo = zoos["language"]
    windows = np.asarray(zoo_data(zoo.spec).eval["test"][1])  # task 1, [W, L + 1]
    logits = np.asarray(
        transformer_apply(zoo.base_params, jnp.asarray(windows[:, :-1]), num_heads=2), np.float64
    )
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, windows[:, 1:, None].astype(np.int64), -1)
    np.testing.assert_allclose(
        evaluate(zoo, zoo.base_params, tasks=[1]), [nll.mean() / np.log(2)], rtol=1e-5
    )


@pytest.mark.parametrize("modality", MODALITIES)
def test_base_loss_fn_supports_hessian_vector_products(zoos, modality):
    zoo = zoos[modality]
    loss = base_loss_fn(zoo)
    value = loss(zoo.base_params)
    assert value.shape == () and np.isfinite(value)
    v = jax.tree.map(jnp.ones_like, zoo.base_params)
    hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])
    hv = hvp(zoo.base_params, v)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(hv))
    noisy = jax.tree.map(lambda p: p + 0.5 * jnp.ones_like(p), zoo.base_params)
    assert loss(noisy) > value  # the base sits low on its own data's loss


def test_base_corpus_excludes_expert_families_and_test_code():
    files = stdlib_files()
    assert files == tuple(sorted(files)) and all(f.endswith(".py") for f in files)
    banned = {"test", "tests", "idle_test", "site-packages"}
    assert not [f for f in files if banned & set(f.split("/")[:-1])]
    assert "json/decoder.py" in files and "abc.py" in files
    spec = zoo_spec("language", "tiny")
    base_text = bytes(np.asarray(zoo_data(spec).base_train[0]))
    root = stdlib_root()
    for f in ("json/decoder.py", "email/parser.py", "pydoc_data/topics.py", "asyncio/queues.py"):
        assert family_of(f) in EXPERT_FAMILIES
        assert (root / f).read_bytes()[:2000] not in base_text
    # a base file is there (in train, or in the small held-out val share)
    assert (root / "abc.py").read_bytes()[:2000] in base_text or "abc.py" in (
        zoo_data(spec).info["base_corpus"]["val_files"]
    )


def test_stdlib_files_skips_test_dirs(tmp_path):
    for rel in ("m.py", "pkg/n.py", "pkg/tests/t.py", "test/x.py", "site-packages/y.py",
                "idlelib/idle_test/w.py", "pkg/data.txt"):  # fmt: skip
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    assert stdlib_files(tmp_path) == ("m.py", "pkg/n.py")


def test_bad_specs_fail_with_a_clear_message(zoos):
    with pytest.raises(ValueError, match="modality"):
        zoo_spec("audio", "tiny")
    with pytest.raises(ValueError, match="nosuchpkg"):
        zoo_data(zoo_spec("language", "tiny")._replace(tasks=("json", "nosuchpkg")))
    with pytest.raises(ValueError, match="transform"):
        zoo_data(ZooSpec("vision", tasks=("spin:identity",)))
    with pytest.raises(ValueError, match="split"):
        evaluate(zoos["vision"], zoos["vision"].base_params, split="train")
    with pytest.raises(ValueError, match="d_out, d_in"):
        path = next(iter(zoos["vision"].lora_factors))
        kernel = _leaves_with_paths(zoos["vision"].base_params)[path]
        params_from_delta(zoos["vision"], {path: jnp.zeros(kernel.shape + (1,))})
