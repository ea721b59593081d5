"""``mergetheory analyze`` on pools a user brings: bf16 PEFT adapters and sharded HF models."""

import importlib.util
import json

import ml_dtypes
import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.io import save_peft_adapter

BF16 = ml_dtypes.bfloat16
FAST = ["--num-samples", "256", "--num-orders", "2", "--quiet"]


def _adapters(tmp, num=10, seed=0):
    rng = np.random.default_rng(seed)
    paths, dense = [], []
    for i in range(num):
        mods, upd = {}, []
        for m in ("layers.0.self_attn.q_proj", "layers.1.mlp.fc1"):
            b = rng.normal(size=(8, 2)).astype(BF16)
            a = rng.normal(size=(2, 6)).astype(BF16)
            mods[m] = (b, a)
            upd.append((16.0 / 2) * (b.astype(np.float64) @ a.astype(np.float64)))
        paths.append(str(save_peft_adapter(tmp / f"adapter{i}", mods, r=2, lora_alpha=16.0)))
        dense.append(np.concatenate([u.ravel() for u in upd]))
    return paths, np.stack(dense)


def _report(out):
    return json.loads((out / "analysis.json").read_text())


def test_ten_bf16_peft_adapters(tmp_path, capsys):
    paths, dense = _adapters(tmp_path)
    out = tmp_path / "report"
    rc = main(["analyze", *paths, "--out", str(out), *FAST, "--order", "greedy"])
    assert rc == 0, capsys.readouterr().err
    rep = _report(out)
    assert rep["factored"] is True and rep["num_params"] == dense.shape[1]
    # norms / Gram from the factors match the dense updates formed here
    np.testing.assert_allclose(rep["gram"], dense @ dense.T, rtol=1e-9)
    np.testing.assert_allclose(rep["norms"], np.linalg.norm(dense, axis=1), rtol=1e-9)
    opposite = np.mean(np.sign(dense[0]) * np.sign(dense[3]) < 0)
    assert rep["sign_conflict"][0][3] == pytest.approx(opposite)
    assert sorted(rep["order"]) == list(range(10))
    assert len(rep["curves"]["hull0_width"]["order"]["mean"]) == 10
    assert rep["concavity"]["verdict"].split(":")[0] in (
        "holds",
        "holds under stated assumptions",
        "fails",
        "inconclusive",
    )
    md = (out / "analysis.md").read_text()
    assert "Concavity of n -> w(hull0)" in md and "n* (gain_ratio_kappa=0.5)" in md
    assert len(rep["fingerprints"]) == 20  # config + weights of every adapter
    if importlib.util.find_spec("matplotlib"):
        for stem in ("width_curves", "cosine"):
            assert (out / f"{stem}.png").stat().st_size > 0
            assert (out / f"{stem}.pdf").stat().st_size > 0


def test_sharded_hf_pool_from_mergekit_config_is_reproducible(tmp_path, capsys, hf_pool):
    taus = hf_pool(tmp_path)[2]
    cfg = tmp_path / "merge.yml"
    cfg.write_text(
        "models:\n"
        + "".join(f"  - model: expert{i}\n    parameters: {{weight: 1.0}}\n" for i in range(4))
        + "  - model: base\nbase_model: base\nmerge_method: ties\nparameters: {density: 0.5}\n"
        "dtype: float32\n"
    )
    outs = [tmp_path / "r1", tmp_path / "r2"]
    for out in outs:
        rc = main(["analyze", "--config", str(cfg), "--out", str(out), "--seed", "3", *FAST])
        assert rc == 0, capsys.readouterr().err
    rep = _report(outs[0])
    assert rep["factored"] is False and rep["base"].endswith("base")
    np.testing.assert_allclose(rep["gram"], taus @ taus.T, rtol=1e-10)
    # same inputs + seed -> the same numbers, bit for bit
    assert (outs[0] / "analysis.json").read_text() == (outs[1] / "analysis.json").read_text()
    # another seed moves the Monte Carlo numbers but not the Gram
    rc = main(
        ["analyze", "--config", str(cfg), "--out", str(tmp_path / "r3"), "--seed", "4", *FAST]
    )
    assert rc == 0
    rep3 = _report(tmp_path / "r3")
    assert rep3["gram"] == rep["gram"]
    assert (
        rep3["curves"]["hull0_width"]["order"]["mean"]
        != rep["curves"]["hull0_width"]["order"]["mean"]
    )


@pytest.mark.parametrize(
    "case, problem",
    [
        ("two experts", "at least 3 experts"),
        ("shape mismatch", "is 9x6 but 8x6"),
        ("bad yaml", "slices"),
    ],
)
def test_analyze_bad_input(tmp_path, capsys, case, problem):
    paths, _ = _adapters(tmp_path, num=3)
    argv = ["analyze", "--out", str(tmp_path / "rep"), *FAST]
    if case == "two experts":
        argv += paths[:2]
    elif case == "shape mismatch":
        rng = np.random.default_rng(0)
        save_peft_adapter(
            tmp_path / "odd",
            {
                "layers.0.self_attn.q_proj": (rng.normal(size=(9, 2)), rng.normal(size=(2, 6))),
                "layers.1.mlp.fc1": (rng.normal(size=(8, 2)), rng.normal(size=(2, 6))),
            },
            r=2,
            lora_alpha=16.0,
        )
        argv += [*paths, str(tmp_path / "odd")]
    else:
        (tmp_path / "m.yml").write_text("slices: []\nmodels: [{model: a}]\n")
        argv += ["--config", str(tmp_path / "m.yml")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and problem in err, err
