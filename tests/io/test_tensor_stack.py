"""Large tensors of a pool by row blocks: same numbers in every format, bounded memory."""

import tracemalloc

import numpy as np
import pytest

from mergetheory.io import save_safetensors
from mergetheory.io import stack as stack_mod
from mergetheory.io.common import CheckpointError
from mergetheory.io.pool import TaskVectorTensors, open_expert, stream_pool_statistics
from mergetheory.io.stack import RowSpill, TensorStack, block_bounds, row_ranges

SHAPES = {"emb": (10, 7), "long": (40,), "small": (2, 3), "scalar": ()}
NUM = 4


def _pool(rng):
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    experts = []
    for _ in range(NUM):
        ex = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()}
        ex["emb"][:2] = base["emb"][:2]  # zero task-vector coordinates (sign counts)
        experts.append(ex)
    return base, experts


def _write(folder, fmt, models):
    import flax.serialization

    paths = []
    for i, m in enumerate(models):
        p = folder / f"m{i}.{fmt}"
        if fmt == "orbax":
            from mergetheory.io import save_orbax

            p = save_orbax(folder / f"m{i}", m)
        elif fmt == "safetensors":
            save_safetensors(p, m)
        elif fmt == "npz":
            np.savez(p, **m)
        else:
            p.write_bytes(flax.serialization.msgpack_serialize(m))
        paths.append(p)
    return paths


def _direct(base, experts):
    x = np.stack(
        [
            np.concatenate(
                [
                    e[k].astype(np.float64).ravel() - base[k].astype(np.float64).ravel()
                    for k in sorted(SHAPES)
                ]
            )
            for e in experts
        ]
    )
    return x @ x.T, np.array([[np.sum(xi * xj < 0) for xj in x] for xi in x])


@pytest.mark.parametrize(
    ("shape", "block", "expected"),
    [
        ((10, 7), 24, [(0, 21), (21, 42), (42, 63), (63, 70)]),  # 3 rows a block
        ((10, 7), 70, [(0, 70)]),  # fits: one block
        ((40,), 24, [(0, 24), (24, 40)]),
        ((3, 30), 24, [(0, 30), (30, 60), (60, 90)]),  # a row above the block: one row
        ((), 24, [(0, 1)]),
    ],
)
def test_block_bounds(shape, block, expected):
    assert block_bounds(shape, block) == expected


@pytest.mark.parametrize("shape", [(10, 7), (1, 50), (40,), (3, 30), (5, 0), (0, 4), (6, 2, 3)])
@pytest.mark.parametrize("budget", [1, 6, 7, 24, 30, 70, 1000])
def test_row_ranges_tile_the_rows_within_the_budget(shape, budget):
    got = row_ranges(shape, budget)
    rows, row = shape[0], int(np.prod(shape[1:]))
    # contiguous, in order, covering every row once
    assert got[0][0] == 0 and got[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(got, got[1:], strict=False))
    if rows * row <= budget:
        assert got == [(0, rows)]  # fits: one range
    else:
        # as many rows per block as fit (one at least); only the last block is shorter
        per = max(1, budget // row)
        assert [hi - lo for lo, hi in got[:-1]] == [per] * (len(got) - 1)
        assert 0 < got[-1][1] - got[-1][0] <= per


def test_large_tensors_give_the_same_numbers_in_every_format(tmp_path, monkeypatch):
    base, experts = _pool(np.random.default_rng(0))
    gram, opposite = _direct(base, experts)
    monkeypatch.setattr(stack_mod, "GRAM_BLOCK", 24)  # emb and long by row blocks
    results = []
    for fmt in ("safetensors", "npz", "msgpack", "orbax"):
        (tmp_path / fmt).mkdir()
        b, *paths = _write(tmp_path / fmt, fmt, [base, *experts])
        stats = stream_pool_statistics([open_expert(p) for p in paths], open_expert(b))
        np.testing.assert_array_equal(stats.opposite, opposite)
        np.testing.assert_allclose(stats.gram, gram, rtol=1e-13)
        assert stats.num_params == 70 + 40 + 6 + 1
        results.append(stats.gram)
    for g in results[1:]:
        np.testing.assert_array_equal(g, results[0])


def test_a_held_and_a_read_stack_give_the_same_rows_and_blocks(tmp_path, monkeypatch):
    base, experts = _pool(np.random.default_rng(1))
    monkeypatch.setattr(stack_mod, "GRAM_BLOCK", 24)
    b, *paths = _write(tmp_path, "safetensors", [base, *experts])
    opened = [open_expert(p) for p in paths]
    read = TensorStack("emb", experts=opened, base=open_expert(b), shape=(10, 7))
    x = np.stack([e["emb"].astype(np.float64) - base["emb"] for e in experts])
    held = TensorStack("emb", x)
    assert not read.held and held.held and read.shape == held.shape == (NUM, 10, 7)
    assert read.bounds() == held.bounds() == block_bounds((10, 7), 24)
    for i in range(NUM):
        np.testing.assert_array_equal(read.row(i), x[i])
        np.testing.assert_array_equal(held.row(i), x[i])
    for (lo, hi), rb, hb in zip(read.bounds(), read.blocks(), held.blocks(), strict=True):
        np.testing.assert_array_equal(rb, x.reshape(NUM, -1)[:, lo:hi])
        np.testing.assert_array_equal(hb, rb)


@pytest.mark.parametrize(("where", "model"), [("expert", 2), ("base", 0)])
def test_nan_in_a_large_tensor_names_it(tmp_path, monkeypatch, where, model):
    base, experts = _pool(np.random.default_rng(2))
    models = [base, *experts]
    models[model]["emb"][9, 6] = np.nan  # in the last row block
    monkeypatch.setattr(stack_mod, "GRAM_BLOCK", 24)
    b, *paths = _write(tmp_path, "safetensors", models)
    with pytest.raises(CheckpointError, match="tensor 'emb': NaN / Inf") as err:
        stream_pool_statistics([open_expert(p) for p in paths], open_expert(b))
    assert "\n" not in str(err.value), where


def test_row_spill_round_trip_and_bad_rows():
    x = np.random.default_rng(3).normal(size=(3, 50))
    with RowSpill(3, 50) as spill:
        for row in x:
            spill.write(row)
        for lo, hi in [(0, 50), (7, 19), (49, 50)]:
            np.testing.assert_array_equal(spill.block(lo, hi), x[:, lo:hi])
        with pytest.raises(ValueError, match="row 3"):
            spill.write(x[0])  # a 4th row of 3
    with RowSpill(2, 50) as spill, pytest.raises(ValueError, match="49 entries, expected 50"):
        spill.write(x[0, :49])


def test_the_gram_pass_holds_row_blocks_not_the_stack(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    shape, size = (256, 1024), 256 * 1024
    models = [rng.normal(size=shape).astype(np.float32) for _ in range(NUM + 1)]
    for i, m in enumerate(models):
        save_safetensors(tmp_path / f"m{i}.safetensors", {"w": m})
    opened = [open_expert(tmp_path / f"m{i}.safetensors") for i in range(NUM + 1)]
    monkeypatch.setattr(stack_mod, "GRAM_BLOCK", 1 << 14)  # 64 KiB an expert and block
    stack_bytes = NUM * size * 8  # the float64 [n, size] stack of the whole tensor
    tracemalloc.start()
    try:
        stats = stream_pool_statistics(opened[1:], opened[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < stack_bytes / 4, (peak, stack_bytes)
    x = np.stack([m.astype(np.float64) - models[0] for m in models[1:]]).reshape(NUM, -1)
    np.testing.assert_allclose(stats.gram, x @ x.T, rtol=1e-12)


def test_task_vector_tensors_hold_small_tensors_and_read_large_ones(tmp_path, monkeypatch):
    base, experts = _pool(np.random.default_rng(5))
    monkeypatch.setattr(stack_mod, "GRAM_BLOCK", 24)
    b, *paths = _write(tmp_path, "safetensors", [base, *experts])
    tensors = TaskVectorTensors([open_expert(p) for p in paths], open_expert(b))
    held = {name: x.held for name, x in tensors}
    assert held == {"emb": False, "long": False, "small": True, "scalar": True}
