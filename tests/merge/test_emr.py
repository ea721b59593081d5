"""Tests for mergetheory.merge.emr (EMR-Merging)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np

# the package attribute `emr` is the operator function, so import the module by name
emr_mod = importlib.import_module("mergetheory.merge.emr")

emr_merge = emr_mod.emr_merge


def _tv(seed, num):
    # NumPy draws: jax.random would compile a sampler per shape, which dominates here
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((num, 6, 5))),
        "b": jnp.asarray(rng.standard_normal((num, 3))),
    }


def _dis(tv, updates):
    """(1/T) sum_t ||tau_t - u_t||^2; ``updates`` maps leaf name -> [T, ...] array."""
    return sum(np.sum((np.asarray(x) - updates[k]) ** 2) for k, x in tv.items()) / len(tv["w"])


def test_single_task_is_reconstructed_exactly():
    tv = _tv(0, 1)
    tv["w"] = tv["w"].at[0, 0, :2].set(0.0)  # zeros must survive too
    for rescaler in ("paper", "code"):
        out = emr_merge(tv, rescaler=rescaler)
        np.testing.assert_array_equal(out.rescalers, [1.0])
        rec = emr_mod.emr_task_update(out, 0)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[0]), rec, tv)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b[0]), out.unified, tv)


def test_elect_mask_rescale_against_numpy(key):
    tv = _tv(1, 4)
    out = emr_merge(tv)
    leaves = {k: np.asarray(v) for k, v in tv.items()}
    uni = {}
    for k, x in leaves.items():
        gamma = np.where(x.sum(0) > 0, 1.0, -1.0)
        uni[k] = gamma * np.max(np.where(x * gamma > 0, np.abs(x), 0.0), axis=0)
        np.testing.assert_array_equal(out.unified[k], uni[k])
        np.testing.assert_array_equal(out.masks[k], x * uni[k] > 0)
    num = sum(np.abs(x).reshape(4, -1).sum(1) for x in leaves.values())
    den = sum(
        np.where(x * uni[k] > 0, np.abs(uni[k]), 0).reshape(4, -1).sum(1) for k, x in leaves.items()
    )
    np.testing.assert_allclose(out.rescalers, num / den, rtol=1e-12)
    # the code's variant: sums of per-tensor means; it differs since the tensor sizes differ
    num_c = sum(np.abs(x).reshape(4, -1).mean(1) for x in leaves.values())
    den_c = sum(
        np.where(x * uni[k] > 0, np.abs(uni[k]), 0).reshape(4, -1).mean(1)
        for k, x in leaves.items()
    )
    code = emr_merge(tv, rescaler="code").rescalers
    np.testing.assert_allclose(code, num_c / den_c, rtol=1e-12)
    assert np.max(np.abs(code - out.rescalers)) > 1e-3
    # registry form: the unified vector alone
    reg = emr_mod.emr(tv, key)
    jax.tree.map(np.testing.assert_array_equal, reg, out.unified)


def test_sign_rules_differ_only_on_zero_sums():
    tv = {"w": jnp.array([[1.0, 2.0, 0.0], [-1.0, 1.0, 0.0]])}
    code = emr_merge(tv, sign_rule="code").unified["w"]
    paper = emr_merge(tv, sign_rule="paper").unified["w"]
    np.testing.assert_array_equal(code, [-1.0, 2.0, 0.0])  # zero sum elects -1 in the code
    np.testing.assert_array_equal(paper, [0.0, 2.0, 0.0])


def test_eq4_mask_never_increases_distance():
    """Eq. 4 of the paper: Dis_M <= Dis, on random data with many sign conflicts."""
    for i in range(3):
        tv = _tv(10 + i, 5)
        out = emr_merge(tv)
        uni = {k: np.asarray(u)[None] for k, u in out.unified.items()}
        masked = {k: np.where(out.masks[k], uni[k], 0.0) for k in tv}
        assert _dis(tv, masked) <= _dis(tv, uni)


def test_eq5_counterexample():
    """Eq. 5 (Dis_{M,lambda} <= Dis_M) fails: tau_1 = (1, -1), tau_2 = (0.5, 2)."""
    tv = {"w": jnp.array([[1.0, -1.0], [0.5, 2.0]])}
    out = emr_merge(tv)
    np.testing.assert_array_equal(out.unified["w"], [1.0, 2.0])
    np.testing.assert_array_equal(out.masks["w"][0], [True, False])
    np.testing.assert_allclose(out.rescalers[0], 2.0)
    tau1 = np.array([1.0, -1.0])
    dis_m = np.sum((tau1 - np.array([1.0, 0.0])) ** 2)
    dis_ml = np.sum((tau1 - np.asarray(emr_mod.emr_task_update(out, 0)["w"])) ** 2)
    assert (dis_m, dis_ml) == (1.0, 2.0)


def test_task_update_traced_index_and_trace_once():
    tv = _tv(2, 3)
    traces = []

    @jax.jit
    def run(tv, t):
        traces.append(1)
        return emr_mod.emr_task_update(emr_mod.emr_merge(tv), t)

    out = emr_merge(tv)
    for t in range(3):
        got = run(tv, t)
        want = jax.tree.map(
            lambda u, m, t=t: out.rescalers[t] * jnp.where(m[t], u, 0.0), out.unified, out.masks
        )
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), got, want)
    assert len(traces) == 1
