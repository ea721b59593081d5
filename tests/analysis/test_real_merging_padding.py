"""The bridge experiment compiles the PADDED operators once, at n = N: check the premise.

And it merges the THRESHOLDED ones from thresholds computed once per expert: check that
this is the registry operator bit for bit.

Merging an n-subset must equal merging it padded to N experts with zero task vectors of
weight 0 (what ``experiments.real_merging`` does for ``PADDED``), for every n.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from experiments.real_merging import (
    OPERATORS,
    PADDED,
    PADDED_SUM,
    THRESHOLDED,
    TRIPLETS,
    TUNED,
    merge_paths,
    same_model,
)
from mergetheory.analysis import rescale_to_norm
from mergetheory.lora import LoraFactors
from mergetheory.merge import MERGE_OPERATORS, lora_delta, lora_factorwise

N = 4


def _tree(key):
    k1, k2 = jr.split(key)
    return {"w": jr.normal(k1, (N, 12, 7), jnp.float32), "b": jr.normal(k2, (N, 7), jnp.float32)}


def _padded(tv, n):
    """The first ``n`` task vectors, zeros after; and the 0/1 mask."""
    mask = (jnp.arange(N) < n).astype(jnp.float32)
    return jax.tree.map(lambda x: x * mask.reshape((-1,) + (1,) * (x.ndim - 1)), tv), mask


def _head(tv, n):
    return jax.tree.map(lambda x: x[:n], tv)


@pytest.mark.parametrize("reg", [r for r in PADDED if r != "base_knowledge_weighted"])
def test_padded_merge_equals_subset_merge(reg):
    tv = _tree(jr.key(0))
    hp = next(h for r, h, _ in OPERATORS.values() if r == reg)
    fn = MERGE_OPERATORS[reg].fn
    key = jr.key(1)
    for n in range(1, N + 1):
        padded, mask = _padded(tv, n)
        got = fn(padded, key, weights=mask, **hp)
        want = fn(_head(tv, n), key, **hp)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            # RHT normalises the weights (1/n as mask / sum(mask)): float32 round-off
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * float(jnp.abs(w).max()))


@pytest.mark.parametrize("reg", ["tsv_m", "iso_c", "base_knowledge_weighted"])
def test_not_padded_operators_do_depend_on_padding(reg):
    # the reason these three compile once per n: padding changes their result
    tv = _tree(jr.key(0))
    fn = MERGE_OPERATORS[reg].fn
    n = 2
    padded, mask = _padded(tv, n)
    kw = {"base_accuracy": jnp.linspace(0.2, 0.8, N)} if reg == "base_knowledge_weighted" else {}
    got = fn(padded, jr.key(1), weights=mask, **kw)
    kw = {k: v[:n] for k, v in kw.items()}
    want = fn(_head(tv, n), jr.key(1), **kw)
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    diff = max(float(jnp.abs(g - w).max()) for g, w in pairs)
    assert diff > 1e-3


@pytest.mark.parametrize("reg", sorted(TUNED))
def test_tuned_operators_are_linear_in_their_scale(reg):
    # tuning merges once at scale 1 and multiplies the output: exact for these operators
    tv = _tree(jr.key(2))
    fn = MERGE_OPERATORS[reg].fn
    one = fn(tv, jr.key(3), **{TUNED[reg]: 1.0})
    lam = 0.35
    got = fn(tv, jr.key(3), **{TUNED[reg]: lam})
    for g, o in zip(jax.tree.leaves(got), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(g, jnp.float32(lam) * o, rtol=1e-6, atol=1e-7)


def _factors(key, rank=3):
    kb, ka = jr.split(key)
    return (
        {"q": jr.normal(kb, (N, 12, rank), jnp.float32)},
        {"q": jr.normal(ka, (N, rank, 7), jnp.float32)},
    )


@pytest.mark.parametrize("label", ["ties", "ties@norm", "rht[AB]", "base_knowledge"])
def test_two_stage_merges_equal_the_registry_operator(label):
    # the experiment merges TIES / RHT from each expert's threshold, computed once
    # (expert_thresholds + merge_paths): the same bits as the registry operator on the
    # padded subset (RHT: up to float32 round-off), and the registry operator on the subset
    # itself up to RHT's 1/n. Base-knowledge weighting: Task Arithmetic with the subset's
    # weights padded with zeros, against the registry operator on the subset.
    reg, hp, mode = OPERATORS[label]
    assert reg in THRESHOLDED or reg == "base_knowledge_weighted"
    knowledge = np.linspace(0.3, 0.9, N)
    fn = MERGE_OPERATORS[reg].fn
    factorwise = mode == "factorwise"
    data = _factors(jr.key(4)) if factorwise else _tree(jr.key(4))
    paths = np.array([[2, 0, 3, 1]])
    sq = np.arange(1.0, N + 1.0, dtype=np.float32)  # the leaves' dtype (strict promotion)
    got = merge_paths(
        label,
        data,
        paths,
        jr.key(5),
        sq_norms=sq,
        knowledge=knowledge,
        lora_paths=("q",) if factorwise else None,
    )

    def registry(sub, **kw):
        if not factorwise:
            return fn(sub, jr.key(6), **hp, **kw)
        bs, as_ = sub
        factors = {"q": LoraFactors(B=bs["q"], A=as_["q"], scaling=1.0)}
        return lora_delta(lora_factorwise(fn, factors, jr.key(6), **hp, **kw))

    for n in range(1, N + 1):
        for s in range(paths.shape[0]):
            sub = jax.tree.map(lambda x, s=s: x[paths[s]], data)
            g_leaves = [x[s] for x in jax.tree.leaves(got[n - 1])]
            if reg == "base_knowledge_weighted":
                want = fn(_head(sub, n), jr.key(6), base_accuracy=knowledge[paths[s, :n]], **hp)
                _close(g_leaves, jax.tree.leaves(want), 1e-6)
                continue
            padded, mask = _padded(sub, n)
            want_padded = registry(padded, weights=mask)
            want = registry(_head(sub, n))
            if mode == "norm":
                budget = np.sqrt(sq[paths[s, :n]]).mean()
                want_padded = rescale_to_norm(want_padded, budget)
                want = rescale_to_norm(want, budget)
            if reg == "ties":  # the same kernels: the same bits
                for g, wp in zip(g_leaves, jax.tree.leaves(want_padded), strict=True):
                    np.testing.assert_array_equal(g, wp)
            else:  # RHT's x / rho fuses differently under jit(vmap): 1 ulp
                _close(g_leaves, jax.tree.leaves(want_padded), 2e-7)
            _close(g_leaves, jax.tree.leaves(want), 1e-6)


def _close(got, want, rtol):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(jnp.abs(w).max()))


@pytest.mark.parametrize("reg", ["tsv_m", "iso_c"])
def test_svd_merges_without_per_subset_work_equal_the_registry_operator(reg):
    # TRIPLETS (TSV-M): each expert's SVD computed once (tsv_m_triplets), every subset
    # merged from its experts' triplets. PADDED_SUM (Iso-C): merged padded (the SVD of a
    # left-to-right sum, zeros appended), the non-matrix leaves' mean over the mask. Both
    # bit for bit the registry operator under jit(vmap) over the paths (how the experiment
    # merged before), and to round-off the eager one per subset
    assert TRIPLETS == ("tsv_m",) and PADDED_SUM == ("iso_c",)
    data = _tree(jr.key(7))
    paths = np.array([[2, 0, 3, 1], [1, 3, 0, 2]])
    fn = MERGE_OPERATORS[reg].fn
    got = merge_paths(
        reg, data, paths, jr.key(5), sq_norms=np.ones(N, np.float32), knowledge=np.ones(N)
    )
    batched = jax.jit(jax.vmap(lambda d: fn(d, jr.key(6), alpha=1.0)))
    for n in range(1, N + 1):
        sub = jax.tree.map(lambda x, n=n: x[paths[:, :n]], data)
        for g, w in zip(jax.tree.leaves(got[n - 1]), jax.tree.leaves(batched(sub)), strict=True):
            np.testing.assert_array_equal(g, w)
        for s in range(paths.shape[0]):
            want = fn(jax.tree.map(lambda x, s=s: x[s], sub), jr.key(6))
            _close([x[s] for x in jax.tree.leaves(got[n - 1])], jax.tree.leaves(want), 1e-5)


@pytest.mark.parametrize("label", sorted(OPERATORS))
def test_paths_holding_the_same_experts_merge_into_one_model(label):
    # the experiment scores path 0's merge for every path where same_model holds (n = T):
    # the premise is that the paths' merges agree up to float32 round-off (summation order)
    factorwise = OPERATORS[label][2] == "factorwise"
    data = _factors(jr.key(8)) if factorwise else _tree(jr.key(8))
    paths = np.array([[2, 0, 3, 1], [1, 3, 0, 2], [3, 2, 1, 0]])
    kw = {"sq_norms": np.arange(1.0, N + 1.0, dtype=np.float32)}
    kw.update(knowledge=np.linspace(0.3, 0.9, N), lora_paths=("q",) if factorwise else None)
    got = merge_paths(label, data, paths, jr.key(5), **kw)
    assert not same_model(label, paths[:, :2])  # {0, 2}, {1, 3}, {2, 3}
    if label == "dare_ties":  # a key per path: different models
        assert not same_model(label, paths)
        return
    assert same_model(label, paths) and same_model(label, paths[:1, :2])
    for x in jax.tree.leaves(got[N - 1]):
        for s in range(1, paths.shape[0]):
            np.testing.assert_allclose(x[s], x[0], rtol=1e-5, atol=1e-6 * float(jnp.abs(x).max()))
