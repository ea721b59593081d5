"""The multiple-choice probe, its feature shortcut and the per-instance LoRA training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergetheory.models.corpus import stdlib_root
from mergetheory.models.instance_lora import (
    InstanceLoraSpec,
    lora_kernel_delta,
    train_instance_loras,
)
from mergetheory.models.language import TransformerConfig, init_transformer, transformer_apply
from mergetheory.models.lora_train import apply_lora, get_path
from mergetheory.models.probe import (
    adapted_kernel_path,
    base_gap,
    choice_scores,
    make_probe,
    probe_features,
    probe_survival,
)

CFG = TransformerConfig(d_model=16, num_layers=2, num_heads=2, context=24, mlp_ratio=4)
P, L = 16, 8


def _make_probe():
    return make_probe(stdlib_root(), families=("json",), num_instances=24, seed=3, prefix=P,
                      continuation=L, num_choices=4)  # fmt: skip


@pytest.fixture(scope="module")
def probe():
    return _make_probe()


@pytest.fixture(scope="module")
def params():
    return init_transformer(jax.random.key(7), CFG)


def _reference_scores(params, tokens):
    """Summed log-probabilities of the choices from the full model's logits."""
    logits = transformer_apply(params, jnp.asarray(tokens, jnp.int32), num_heads=CFG.num_heads)
    logp = jax.nn.log_softmax(logits, -1)[..., P - 1 : P + L - 1, :]
    tg = jnp.asarray(tokens[..., P:], jnp.int32)[..., None]
    return np.asarray(jnp.take_along_axis(logp, tg, -1)[..., 0].sum(-1))


def test_probe_construction(probe):
    root = stdlib_root()
    assert probe.tokens.shape == (24, 4, P + L)
    for i in range(24):
        text = (root / probe.files[probe.file_index[i]]).read_bytes()
        o = probe.offset[i]
        # prefix and true continuation are the file's bytes at the offset
        assert bytes(probe.tokens[i, probe.label[i]]) == text[o : o + P + L]
        conts = [bytes(probe.tokens[i, c, P:]) for c in range(4)]
        assert len(set(conts)) == 4  # distinct choices
        for c in range(4):
            assert bytes(probe.tokens[i, c, :P]) == text[o : o + P]  # shared prefix
            assert conts[c] in text  # every choice comes from the same file
        assert probe.families[probe.family_index[i]] == "json"
    # the true continuation is not always at the same position
    assert len(set(probe.label.tolist())) > 1


def test_probe_is_deterministic(probe):
    again = _make_probe()
    np.testing.assert_array_equal(again.tokens, probe.tokens)


def test_probe_bad_input():
    with pytest.raises(ValueError, match="no file"):
        make_probe(stdlib_root(), families=("no_such_family",), num_instances=2, seed=0)


def test_feature_scores_match_full_model(probe, params):
    feats = probe_features(params, probe.tokens, num_heads=CFG.num_heads, prefix=P)
    got = np.asarray(choice_scores(params, feats, probe.targets, None, num_heads=CFG.num_heads))
    np.testing.assert_allclose(got, _reference_scores(params, probe.tokens), rtol=1e-4, atol=1e-3)
    # an update of the adapted kernel: the same as changing that kernel in the full model
    path = adapted_kernel_path(params)
    assert path == "block_1/mlp_fc1/kernel"
    delta = 0.3 * jax.random.normal(jax.random.key(1), get_path(params, path).shape, jnp.float32)
    moved = jax.tree.map(lambda x: x, params)
    moved["block_1"]["mlp_fc1"]["kernel"] = params["block_1"]["mlp_fc1"]["kernel"] + delta
    got = np.asarray(choice_scores(params, feats, probe.targets, delta, num_heads=CFG.num_heads))
    np.testing.assert_allclose(got, _reference_scores(moved, probe.tokens), rtol=1e-4, atol=1e-3)


def test_base_gap():
    scores = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2]]))
    np.testing.assert_allclose(base_gap(scores, np.array([0, 2])), [0.0, 0.5])


def test_instance_loras_fix_their_instance(probe, params):
    feats = probe_features(params, probe.tokens, num_heads=CFG.num_heads, prefix=P)
    spec = InstanceLoraSpec(
        rank=2, alpha=4.0, learning_rate=2e-2, max_steps=60, check_every=5, stop_margin=0.5
    )
    out = train_instance_loras(
        jax.random.key(0),
        params,
        feats,
        probe.targets,
        probe.label,
        spec,
        num_heads=CFG.num_heads,
        batch=16,
    )
    assert out.B.shape == (24, 4 * CFG.d_model, 2) and out.A.shape == (24, 2, CFG.d_model)
    assert out.fixed.mean() > 0.5
    path = adapted_kernel_path(params)
    for i in np.flatnonzero(out.fixed)[:6]:
        # the full model with the adapter applied the PEFT way ranks the truth first by the margin
        adapted = apply_lora(params, {path: {"B": out.B[i], "A": out.A[i]}}, out.scaling)
        ref = _reference_scores(adapted, probe.tokens[i])
        y = probe.label[i]
        assert ref[y] - np.delete(ref, y).max() >= spec.stop_margin - 1e-3
        assert out.steps[i] % spec.check_every == 0 and out.steps[i] <= spec.max_steps
    # survival of each instance under its own update alone (through probe_survival)
    args = (params, feats, jnp.asarray(probe.targets), jnp.asarray(probe.label))
    delta = lora_kernel_delta(out.B, out.A, out.scaling)
    alone = [
        bool(probe_survival(delta[i], jnp.array([i]), args, num_heads=2)[0]) for i in range(24)
    ]
    np.testing.assert_array_equal(np.array(alone)[out.fixed], True)
