"""The bridge experiment compiles the PADDED operators once, at n = N: check the premise.

Merging an n-subset must equal merging it padded to N experts with zero task vectors of
weight 0 (what ``experiments.real_merging`` does for ``PADDED``), for every n.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from experiments.real_merging import OPERATORS, PADDED, TUNED
from mergetheory.merge import MERGE_OPERATORS

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


@pytest.mark.parametrize("reg", PADDED)
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
