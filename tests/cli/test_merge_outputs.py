"""``mergetheory merge`` writes the inputs' format: PEFT adapter folders (factor-wise), orbax."""

import json

import ml_dtypes
import numpy as np
import pytest

from mergetheory.cli import main
from mergetheory.io import load_peft_adapter, save_peft_adapter
from mergetheory.io.peft import PEFT_CONFIG_NAME

MODULES = {"model.layers.0.q_proj": (8, 6), "model.layers.0.v_proj": (5, 6)}


def _adapters(tmp, alphas=(8.0, 8.0, 16.0), dtype=np.float32, seed=0):
    """Three rank-2 adapters; returns their paths and the scaled factors (s B, A)."""
    rng = np.random.default_rng(seed)
    paths, factors = [], []
    for i, alpha in enumerate(alphas):
        mods = {
            m: (rng.normal(size=(d, 2)).astype(dtype), rng.normal(size=(2, k)).astype(dtype))
            for m, (d, k) in MODULES.items()
        }
        paths.append(str(save_peft_adapter(tmp / f"ad{i}", mods, r=2, lora_alpha=alpha)))
        s = alpha / 2
        factors.append(
            {m: (s * b.astype(np.float64), a.astype(np.float64)) for m, (b, a) in mods.items()}
        )
    return paths, factors


def _module(factors, path):
    node = factors
    for part in path.split("."):
        node = node[part]
    return node


def test_average_factorwise_by_hand(tmp_path, capsys):
    paths, factors = _adapters(tmp_path)
    out = tmp_path / "merged"
    assert main(["merge", "--operator", "average", "--out", str(out), *paths]) == 0, (
        capsys.readouterr().err
    )
    assert "PEFT adapter" in capsys.readouterr().out
    merged = load_peft_adapter(out)
    for m in MODULES:
        f = _module(merged.factors, m)
        want_b = np.mean([fs[m][0] for fs in factors], axis=0)  # scalings folded into B
        want_a = np.mean([fs[m][1] for fs in factors], axis=0)
        np.testing.assert_allclose(float(f.scaling) * np.asarray(f.B, np.float64), want_b, 1e-6)
        np.testing.assert_allclose(np.asarray(f.A, np.float64), want_a, rtol=1e-6)
        assert np.asarray(f.B).dtype == np.float32  # the adapters' dtype is kept
    cfg = json.loads((out / PEFT_CONFIG_NAME).read_text())
    assert cfg["r"] == 2 and cfg["peft_type"] == "LORA"


def test_bf16_ties_keeps_dtype_and_runs_per_factor(tmp_path, capsys):
    paths, factors = _adapters(tmp_path, dtype=ml_dtypes.bfloat16, alphas=(4.0, 4.0, 4.0))
    out = tmp_path / "merged"
    argv = ["merge", "--operator", "ties", "--density", "1.0", "--out", str(out), *paths]
    assert main(argv) == 0, capsys.readouterr().err
    merged = load_peft_adapter(out)
    f = _module(merged.factors, "model.layers.0.q_proj")
    assert np.asarray(f.B).dtype == ml_dtypes.bfloat16
    # density 1: TIES is the disjoint mean of each factor: per entry, the mean over the
    # experts whose sign agrees with the sign of the sum
    b = np.stack([fs["model.layers.0.q_proj"][0] for fs in factors])
    sign = np.where(b.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(b) == sign
    want = np.where(agree, b, 0).sum(0) / np.maximum(agree.sum(0), 1)
    got = float(f.scaling) * np.asarray(f.B, np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)  # bf16 output


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--base", "BASE"], "PEFT adapters are deltas"),
        (["--operator", "base_knowledge_weighted"], "needs --base-accuracy"),
        (["MIXED"], "mixes PEFT adapters and dense models"),
    ],
)
def test_peft_merge_bad_input(tmp_path, capsys, extra, problem):
    paths, _ = _adapters(tmp_path)
    np.savez(tmp_path / "dense.npz", w=np.zeros((2, 2)))
    extra = [str(tmp_path / "dense.npz") if e in ("BASE", "MIXED") else e for e in extra]
    op = [] if "--operator" in extra else ["--operator", "average"]
    argv = ["merge", *op, "--out", str(tmp_path / "m"), *paths, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and "\n" not in err, err


def test_orbax_inputs_give_an_orbax_output(tmp_path, capsys):
    from mergetheory.io import load_orbax, save_orbax

    rng = np.random.default_rng(5)
    trees = [{"layer": {"w": rng.normal(size=(3, 2))}, "b": rng.normal(size=2)} for _ in range(3)]
    paths = [str(save_orbax(tmp_path / f"ck{i}", t)) for i, t in enumerate(trees)]
    out = tmp_path / "merged_ckpt"
    assert main(["merge", "--operator", "average", "--out", str(out), *paths]) == 0, (
        capsys.readouterr().err
    )
    merged = load_orbax(out)
    np.testing.assert_allclose(
        merged["layer"]["w"], np.mean([t["layer"]["w"] for t in trees], 0), 1e-12
    )
    np.testing.assert_allclose(merged["b"], np.mean([t["b"] for t in trees], 0), rtol=1e-12)
    assert main(["merge", "--operator", "average", "--out", str(out), *paths]) == 2
    assert "exists; an orbax output must be a new folder" in capsys.readouterr().err
