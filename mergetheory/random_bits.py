r"""Counter-based random numbers from a JAX key: uint32 bits and standard normals.

:func:`hash_uniform_bits` gives uint32 bits :math:`h(h(i \oplus s_0) + s_1)` for the flat
index :math:`i`, with :math:`h` C. Wellons' ``lowbias32`` integer hash and :math:`(s_0,
s_1)` the key's two words; :func:`hash_normal` turns them into standard normals by the
inverse CDF. Both cost about one memory pass on XLA:CPU, where ``jax.random``'s threefry
costs 10-50x more (``docs/merge_kernels.md``), and give the same numbers on every backend
and any sharding (each entry depends on its index and the key only). The DARE masks
(:mod:`mergetheory.merge.dare_mask`) and the LoRA sampler
(:func:`mergetheory.lora.sample_lora_factors`) draw from here. Use keys derived with
``fold_in`` / ``split`` (well-mixed words); one key gives at most :math:`2^{32}` draws.

Reference: C. Wellons, "Prospecting for hash functions" (2018), ``lowbias32``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._types import Key

__all__ = [
    "hash_normal",
    "hash_uniform_bits",
    "hash_uniform_bits_offset",
    "hash_uniform_bits_reference",
]


def _mix32(x: jax.Array) -> jax.Array:
    """C. Wellons' ``lowbias32`` integer hash (a bijection of uint32, full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _key_words(key: Key) -> tuple[jax.Array, jax.Array]:
    """Two uint32 seed words from a typed or raw (``uint32[2]``) PRNG key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jr.key_data(key)
    else:
        data = jnp.asarray(key)
    data = data.astype(jnp.uint32).reshape(-1)
    s0, s1 = data[0], data[-1]
    for i in range(1, data.shape[0] - 1):  # wider keys (rbg): fold the middle words in
        s0 = _mix32(s0 ^ data[i])
    return s0, s1


def hash_uniform_bits_offset(key: Key, shape: tuple[int, ...], offset: int) -> jax.Array:
    """:func:`hash_uniform_bits` with the counter starting at ``offset`` (for row-wise draws)."""
    num = int(np.prod(shape, dtype=np.int64))
    s0, s1 = _key_words(key)
    idx = jax.lax.iota(jnp.uint32, num).reshape(shape)
    if offset:
        idx = idx + jnp.uint32(offset)
    return _hash(idx, s0, s1)


def _hash(idx: jax.Array, s0: jax.Array, s1: jax.Array) -> jax.Array:
    return _mix32(_mix32(idx ^ s0) + s1)


def hash_uniform_bits(key: Key, shape: tuple[int, ...]) -> jax.Array:
    r"""Counter-based uint32 random bits: :math:`h(h(i \oplus s_0) + s_1)`, :math:`i` = flat index.

    :math:`h` is the ``lowbias32`` hash (C. Wellons), :math:`(s_0, s_1)` the key's two
    words. It costs about one memory pass on XLA:CPU where ``jax.random.bits`` costs far
    more (``docs/merge_kernels.md``). Use keys derived with ``fold_in`` / ``split``
    (well-mixed words), as the operators do.

    Example:
      >>> hash_uniform_bits(jax.random.key(0), (2, 3)).dtype
      dtype('uint32')
    """
    num = int(np.prod(shape, dtype=np.int64))
    if num >= 2**32:
        raise ValueError(f"hash_uniform_bits: {num} >= 2**32 draws from one key")
    return hash_uniform_bits_offset(key, shape, 0)


def _mix32_np(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def hash_uniform_bits_reference(key: Key, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`hash_uniform_bits` in plain NumPy uint32 arithmetic (reference for tests)."""
    data = np.asarray(jr.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    data = data.astype(np.uint32).reshape(-1)
    s0, s1 = data[0], data[-1]
    with np.errstate(over="ignore"):
        for i in range(1, data.shape[0] - 1):
            s0 = _mix32_np(s0 ^ data[i])
        idx = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint32).reshape(shape)
        return _mix32_np(_mix32_np(idx ^ s0) + s1)


_SECOND_STREAM = (0x9E3779B9, 0x85EBCA6B)  # key-word offsets of the low words (float64)


def hash_normal(key: Key, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    r"""Standard normals from :func:`hash_uniform_bits` by the inverse CDF.

    Entry :math:`i` is :math:`\sqrt 2\, \mathrm{erf}^{-1}(u_i)` with :math:`u_i` on a
    symmetric grid of the open interval :math:`(-1, 1)`: :math:`u = (m + 1/2)\, 2^{1-p} - 1`,
    :math:`m` the top :math:`p` bits of the hash (:math:`p = 23` for float32 and narrower
    dtypes, computed in float32 then cast; :math:`p = 52` for float64, from two hash
    streams), so :math:`|u| < 1` exactly, the law is symmetric, and the tails reach about
    :math:`5.3\sigma` (float32) / :math:`8.2\sigma` (float64), as with ``jax.random.normal``
    (the same transform on threefry bits).

    Args:
      key: PRNG key (typed or raw ``uint32[2]``).
      shape: output shape; at most :math:`2^{32} - 1` entries.
      dtype: floating dtype of the output.

    Returns:
      ``shape`` array of ``dtype``.

    Example:
      >>> hash_normal(jax.random.key(0), (2, 3)).shape
      (2, 3)
    """
    dtype = jax.dtypes.canonicalize_dtype(dtype)  # float64 -> float32 unless x64
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"hash_normal: dtype must be floating, got {dtype}")
    num = int(np.prod(shape, dtype=np.int64))
    if num >= 2**32:
        raise ValueError(f"hash_normal: {num} >= 2**32 draws from one key")
    s0, s1 = _key_words(key)
    idx = jax.lax.iota(jnp.uint32, num).reshape(shape)
    hi = _hash(idx, s0, s1)
    if dtype.itemsize <= 4:
        m = (hi >> 9).astype(jnp.float32)  # 23 bits: m + 1/2 is exact in float32
        u = (m + 0.5) * jnp.float32(2.0**-22) - 1.0
        return (jnp.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)).astype(dtype)
    t0, t1 = (jnp.uint32(c) for c in _SECOND_STREAM)
    lo = _hash(idx, _mix32(s0 ^ t0), s1 + t1)
    m = (hi.astype(jnp.uint64) << 20) | (lo >> 12).astype(jnp.uint64)  # 52 bits
    u = (m.astype(dtype) + 0.5) * jnp.asarray(2.0**-51, dtype) - 1.0
    return jnp.asarray(np.sqrt(2.0), dtype) * jax.lax.erf_inv(u)
