"""merge.svd.thin_svd: the same numbers as jnp.linalg.svd, and no deadlock under vmap."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from mergetheory.merge.svd import thin_svd


@pytest.mark.parametrize("shape", [(6, 4), (3, 6, 4), (2, 3, 4, 6)])
def test_thin_svd_matches_the_library_call(shape):
    x = jr.normal(jr.key(0), shape)
    want = jnp.linalg.svd(x, full_matrices=False)
    got = jax.jit(thin_svd)(x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_thin_svd_under_vmap_matches_the_library_call():
    x = jr.normal(jr.key(1), (5, 3, 7, 4))
    want = jax.vmap(jax.vmap(lambda a: jnp.linalg.svd(a, full_matrices=False)))(x)
    got = jax.jit(jax.vmap(jax.vmap(thin_svd)))(x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-12)
    # a reconstruction check that does not lean on the library call
    u, s, vt = got
    np.testing.assert_allclose(np.asarray((u * s[..., None, :]) @ vt), np.asarray(x), atol=1e-10)


_DEADLOCK = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, jax.random as jr
    from mergetheory.merge import MERGE_OPERATORS
    # 24 matrix leaves, as in a small transformer: one batched SVD per leaf under vmap
    shapes = [(64, 64)] * 16 + [(64, 256), (256, 64)] * 4
    tv = {f"w{i}": 0.01 * jr.normal(jr.key(i), (4, 3) + s) for i, s in enumerate(shapes)}
    keys = jr.split(jr.key(99), 4)
    for name in ("tsv_m", "iso_c"):
        fn = MERGE_OPERATORS[name].fn
        out = jax.jit(jax.vmap(lambda d, k: fn(d, k, alpha=1.0)))(tv, keys)
        jax.block_until_ready(out)
    print("done")
    """
)


def test_svd_operators_do_not_deadlock_under_vmap():
    # jaxlib's batched CPU SVD waits on XLA's pool threads; with one batched SVD per leaf
    # ready at once the program used to hang on 2 cores (docs/real_merging.md)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _DEADLOCK], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired:
        pytest.fail("jit(vmap(tsv_m / iso_c)) on a 24-leaf tree did not finish in 240 s")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("done")
