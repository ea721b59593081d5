"""experiments.real_merging end to end with --quick on the tiny vision zoo (trained here)."""

import json

import numpy as np
import pytest

from experiments import real_merging


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    assert real_merging.main(["--quick", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    data = np.load(tmp_path / "real_merging.npz")
    meta = json.loads((tmp_path / "real_merging.json").read_text())
    summary = meta.get("summary") or meta["config"]["summary"]
    cfg = real_merging.QUICK
    s, n = cfg.num_paths, cfg.max_experts
    paths = data["vision_paths"]
    assert paths.shape == (s, int(summary["vision_num_tasks"]))
    assert (tmp_path / "zoo").is_dir()  # the zoo is cached under <out-dir>/zoo
    for es in ("full", "lora"):
        perf = data[f"vision_{es}_average_perf_merged"]
        assert perf.shape == (s, n)
        # merging one expert with the average gives that expert back (1 = the expert)
        np.testing.assert_allclose(perf[:, 0], 1.0, atol=0.02)
        # hull0 widths along a path are non-decreasing (nested sets, common random numbers)
        w = data[f"vision_{es}_width"]
        assert w.shape == (s, n) and np.all(np.diff(w, axis=1) >= -1e-9)
        # TA's scale comes from the val grid where tuned (n = 1, 3, N) and lies between
        # the neighbouring tuned values elsewhere (log-linear interpolation)
        sc = data[f"vision_{es}_task_arithmetic_tuned_scale"]
        tuned = np.array([1, 3, n]) - 1
        assert set(sc[tuned]) <= set(cfg.tune_grid)
        lo = np.minimum(sc[tuned[:-1]], sc[tuned[1:]])
        hi = np.maximum(sc[tuned[:-1]], sc[tuned[1:]])
        assert lo[0] <= sc[1] <= hi[0] and lo[1] <= sc[3] <= hi[1]
        assert np.all(np.isnan(data[f"vision_{es}_ties_tuned_scale"]))
    assert "vision_lora_rht_ab_perf_all" in data and "vision_full_rht_ab_perf_all" not in data
    for key in (
        "vision_full_average_nstar_gain_ratio_pred",
        "vision_full_average_nstar_gain_ratio_obs",
        "vision_full_rht_vs_ties_perf_merged",
        "vision_full_rht_at_norm_vs_ties_at_norm_perf_all",
        "vision_kinematic_nstar",
        "vision_m_eff",
        "vision_full_average_law_max_abs_error",
    ):
        assert key in summary, key
    d = int(summary["vision_num_params"])
    assert data["vision_hessian_nodes"].shape == (cfg.hessian_probes, cfg.hessian_steps)
    assert 0 < float(summary["vision_m_eff"].split()[0]) < d
    # one scoring thread gives the same numbers bit for bit (the default scores two merged
    # models at a time, on two threads, while the next operator merges)
    assert cfg.eval_workers == real_merging.RealMergingConfig().eval_workers == 2
    serial = cfg._replace(operators=("average", "task_arithmetic", "ties"), eval_workers=1)
    again, _ = real_merging.run(serial, out_dir=tmp_path, progress=False)
    for es in ("full", "lora"):
        for label in ("average", "task_arithmetic", "ties"):
            for what in ("metric", "perf_all", "tuned_scale"):
                name = f"vision_{es}_{label}_{what}"
                np.testing.assert_array_equal(again[name], data[name], err_msg=name)
