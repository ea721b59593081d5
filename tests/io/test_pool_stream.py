"""The streaming Gram pass: exact sign counts by column blocks, one expert's copy at a time."""

import ml_dtypes
import numpy as np

from mergetheory.io import pool as pool_mod
from mergetheory.io import save_safetensors
from mergetheory.io.pool import open_expert, stream_pool_statistics


def test_blockwise_sign_counts_and_gram_equal_the_direct_ones(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    shapes = {"a": (5, 7), "b": (13,)}
    base = {k: rng.normal(size=s).astype(ml_dtypes.bfloat16) for k, s in shapes.items()}
    save_safetensors(tmp_path / "base.safetensors", base)
    experts = []
    for i in range(4):
        ex = {k: (v.astype(np.float64) + rng.normal(size=v.shape)) for k, v in base.items()}
        ex["b"][:3] = base["b"][:3]  # some zero task-vector coordinates
        experts.append({k: v.astype(ml_dtypes.bfloat16) for k, v in ex.items()})
        save_safetensors(tmp_path / f"e{i}.safetensors", experts[-1])
    x = np.stack(
        [
            np.concatenate(
                [
                    e[k].astype(np.float64).ravel() - base[k].astype(np.float64).ravel()
                    for k in sorted(shapes)
                ]
            )
            for e in experts
        ]
    )
    direct = np.array([[np.sum(xi * xj < 0) for xj in x] for xi in x])
    monkeypatch.setattr(pool_mod, "SIGN_BLOCK", 4)  # several blocks per tensor
    opened = [open_expert(tmp_path / f"e{i}.safetensors") for i in range(4)]
    stats = stream_pool_statistics(opened, open_expert(tmp_path / "base.safetensors"))
    np.testing.assert_array_equal(stats.opposite, direct)
    np.testing.assert_allclose(stats.gram, x @ x.T, rtol=1e-13)
    assert stats.num_params == x.shape[1]
