r"""Streaming sample moments: the reduction every Monte Carlo estimate ends in.

Chunks of per-sample values are summarised one at a time (count, mean, centred sum of
squares) and merged exactly with Chan, Golub and LeVeque's pairwise update, so memory is
set by the chunk size, not by the number of samples, and shards on different devices
merge the same way (:func:`pool_moments`).

Example:
  >>> m = SampleMoments.from_samples(jnp.arange(4.0))
  >>> m.mean, m.stderr()      # 1.5, sqrt(5/3 / 4)

Reference: Chan, Golub, LeVeque 1983 (pairwise variance updates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "SampleMoments",
    "path_statistics",
    "pool_moments",
    "stream_moments",
]


def _count_dtype() -> Any:
    return jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is on


def _moment_dtype(dtype: Any) -> Any:
    """Floating dtype the moments of ``dtype`` samples are kept in (ints, bools -> float)."""
    return jnp.dtype(dtype) if jnp.issubdtype(dtype, jnp.inexact) else _count_dtype()


class SampleMoments(NamedTuple):
    r"""Running count, mean and centred sum of squares of Monte Carlo samples.

    The streaming form of the estimators: chunks of samples are summarised one at a time
    and merged (Chan, Golub and LeVeque's pairwise update), so memory is set by the chunk
    size, not by the number of samples, and shards on different devices merge the same
    way. ``mean`` and ``m2`` may be pytrees (one entry per tracked statistic).

    Attributes:
      count: number of samples :math:`m` (a float scalar, float64 under x64).
      mean: :math:`\bar x` (pytree of arrays).
      m2: :math:`\sum_i (x_i - \bar x)^2` (same structure as ``mean``).
    """

    count: jax.Array
    mean: Any
    m2: Any

    @classmethod
    def from_samples(cls, values: Any, valid: jax.Array | None = None) -> SampleMoments:
        """Moments of the samples along the leading axis of every leaf (``valid``: mask)."""
        num = jax.tree_util.tree_leaves(values)[0].shape[0]
        mask = jnp.ones((num,), bool) if valid is None else valid
        count = jnp.sum(mask).astype(_count_dtype())

        def masked_sum(v: jax.Array) -> jax.Array:
            w = mask.reshape(mask.shape + (1,) * (v.ndim - 1))
            return jnp.sum(jnp.where(w, v, 0), axis=0)

        values = jax.tree_util.tree_map(lambda v: v.astype(_moment_dtype(v.dtype)), values)
        mean = jax.tree_util.tree_map(
            lambda v: masked_sum(v) / jnp.maximum(count, 1).astype(v.dtype), values
        )
        m2 = jax.tree_util.tree_map(
            lambda v, mu: masked_sum((v - jnp.expand_dims(mu, 0)) ** 2), values, mean
        )
        return cls(count, mean, m2)

    def merge(self, other: SampleMoments) -> SampleMoments:
        """Moments of the union of the two sample sets (exact, any order)."""
        total = self.count + other.count
        frac = other.count / jnp.maximum(total, 1)
        delta = jax.tree_util.tree_map(lambda a, b: b - a, self.mean, other.mean)
        mean = jax.tree_util.tree_map(lambda a, d: a + d * frac.astype(d.dtype), self.mean, delta)
        m2 = jax.tree_util.tree_map(
            lambda qa, qb, d: qa + qb + d**2 * (self.count * frac).astype(d.dtype),
            self.m2,
            other.m2,
            delta,
        )
        return SampleMoments(total, mean, m2)

    def stderr(self) -> Any:
        r"""Standard error of the mean, :math:`\sqrt{m_2 / ((m - 1) m)}` (unbiased variance)."""
        m = self.count
        return jax.tree_util.tree_map(
            lambda q: jnp.sqrt(q / ((m - 1) * m).astype(q.dtype)), self.m2
        )


def path_statistics(vals: jax.Array, both: bool) -> tuple[jax.Array, ...]:
    """Per-sample statistics tracked by the estimators, in the order of their summaries.

    ``[c]`` values -> ``(vals,)``; nested ``[c, N]`` -> ``(vals, d1, d2)`` with the paired
    first and second differences along ``N``; ``both`` (cones) prepends the same for
    ``sqrt(vals)`` (the width) to those of ``vals`` (the statistical dimension).
    """
    out: list[jax.Array] = []
    for v in (jnp.sqrt(vals), vals) if both else (vals,):
        out.append(v)
        if v.ndim == 2:
            d1 = v[:, 1:] - v[:, :-1]
            out += [d1, d1[:, 1:] - d1[:, :-1]]
    return tuple(out)


def stream_moments(
    sample_chunk: Callable[[Any], Any],
    chunk_keys: Any,
    *,
    num_samples: int,
    first_sample: Any = 0,
    statistics: Callable[[jax.Array], Any] = lambda v: (v,),
) -> SampleMoments:
    """Run ``sample_chunk`` over ``chunk_keys`` with ``lax.scan``, merging moments as it goes.

    Chunk ``j`` holds samples ``first_sample + j c .. + c - 1`` (``c`` its length); those
    at index ``>= num_samples`` are masked out (padding of the last chunk). Only one
    chunk of samples is alive at a time.

    Args:
      sample_chunk: ``key -> [c, ...]`` per-sample values (e.g. :func:`width_sampler`;
        any pytree of ``[c, ...]`` leaves).
      chunk_keys: ``[C]`` keys (or any ``[C, ...]`` array the chunk function takes).
      num_samples: total number of samples that count.
      first_sample: global index of the first sample of ``chunk_keys[0]`` (may be traced).
      statistics: ``values -> pytree of [c, ...]`` per-sample statistics to track.

    Returns:
      :class:`SampleMoments` of ``statistics(values)``.
    """
    shapes = jax.eval_shape(lambda k: statistics(sample_chunk(k)), chunk_keys[0])
    first = jax.tree_util.tree_leaves(shapes)[0]
    chunk = first.shape[0]
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape[1:], _moment_dtype(s.dtype)), shapes)
    init = SampleMoments(jnp.zeros((), _count_dtype()), zeros, zeros)

    itype = jax.dtypes.canonicalize_dtype(jnp.int64)  # int32 unless x64 is on
    if max(num_samples, chunk_keys.shape[0] * chunk) > jnp.iinfo(itype).max:
        raise ValueError(
            f"num_samples = {num_samples} ({chunk_keys.shape[0]} chunks of {chunk}) overflows "
            f"{itype} sample indices; enable jax_enable_x64"
        )
    # indices relative to first_sample: no overflow for padded chunks past num_samples
    remaining = num_samples - jnp.asarray(first_sample, itype)

    def body(acc: SampleMoments, xs: tuple[Any, jax.Array]) -> tuple[SampleMoments, None]:
        key, j = xs
        local = j * chunk + jnp.arange(chunk, dtype=itype)
        part = SampleMoments.from_samples(statistics(sample_chunk(key)), local < remaining)
        return acc.merge(part), None

    index = jnp.arange(chunk_keys.shape[0], dtype=itype)
    acc, _ = jax.lax.scan(body, init, (chunk_keys, index))
    return acc


def pool_moments(moments: SampleMoments, axis_name: Any) -> SampleMoments:
    r"""Pool every device's :class:`SampleMoments` over ``axis_name`` (inside ``shard_map``).

    Exact pooling: :math:`\bar x = \sum_p m_p \bar x_p / m` and
    :math:`M_2 = \sum_p M_{2,p} + m_p (\bar x_p - \bar x)^2`.
    """
    count = moments.count
    total = jax.lax.psum(count, axis_name)
    mean = jax.tree_util.tree_map(
        lambda mu: jax.lax.psum(mu * count.astype(mu.dtype), axis_name) / total.astype(mu.dtype),
        moments.mean,
    )
    m2 = jax.tree_util.tree_map(
        lambda q, mu, g: jax.lax.psum(q + count.astype(q.dtype) * (mu - g) ** 2, axis_name),
        moments.m2,
        moments.mean,
        mean,
    )
    return SampleMoments(total, mean, m2)
