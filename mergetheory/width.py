r"""Gaussian width and statistical dimension by Monte Carlo: a fast and a naive path.

.. math::
    w(S) = \mathbb{E}_{g\sim\mathcal{N}(0,I_D)} \sup_{s\in S}\langle g, s\rangle, \qquad
    \delta(C) = \mathbb{E}\,\|\Pi_C(g)\|^2 .

Two estimators that agree in expectation (DESIGN.md section 4):

* **naive** (the reference): draw :math:`g \sim \mathcal{N}(0, I_D)` and evaluate the
  support function on the explicit vectors (:math:`z = Tg`, an orthonormal basis of the
  span built by Gram–Schmidt on the vectors, the cone projection :math:`T^\top\lambda^\star`
  formed in :math:`\mathbb{R}^D`, or the closed-form support of a reference set). Cost
  :math:`O(MnD)`.
* **fast**: every generated set depends on :math:`g` only through :math:`z = Tg \sim
  \mathcal{N}(0, G)`. Factor :math:`G = LL^\top` once (:func:`~mergetheory.sets.psd_cholesky`,
  robust to rank deficiency), draw :math:`h \sim \mathcal{N}(0, I_n)` and set
  :math:`z = Lh`. Hull: :math:`\max_i z_i`; hull with origin: :math:`\max(0, z)`;
  zonotope: :math:`\sum_i \max(0, z_i)`; ellipsoid: :math:`\|z\|`; span:
  :math:`\|P g\|^2 = z^\top G^+ z = \sum_{j\ \mathrm{pivot}} h_j^2`; cone:
  :math:`\|\Pi_C g\|^2 = \max_{\lambda\ge0} 2\lambda^\top z - \lambda^\top G\lambda` (NNLS).
  Cost :math:`O(n^2 D)` once for :math:`G`, then :math:`O(Mn^2)` (cone: a small
  active-set solve per sample).

Randomness: ``key`` is split into ``ceil(M / chunk_size)`` chunk keys and each chunk
draws its Gaussians in one 1-D call, so a result is reproducible for a fixed ``(key,
num_samples, chunk_size)`` (:func:`width_sampler` is the per-chunk function, for sharding).
In the fast path the draws are coordinate-major and prefix-consistent (coordinate ``j``
of a sample does not depend on ``n``), and :math:`L` is lower triangular, so the set built
from the first ``m`` generators sees exactly the same :math:`z_{1:m}` as any larger set:
:func:`nested_width` uses common random numbers, and its ``m``-th entry equals
:func:`gaussian_width` of the ``m``-prefix with the same key, ``num_samples`` and
``chunk_size``.

The Monte Carlo is a ``jax.lax.scan`` over chunks (a ``vmap`` inside each) that folds
every chunk into running moments (:class:`SampleMoments`, :func:`stream_moments`), so
memory is set by ``chunk_size``, not by ``M``: the per-sample values (``[c]`` or
``[c, N]``) of one chunk are alive at a time, and everything stays on device. ``jit`` is
applied at the public entry points only, with the shape-determining arguments static.

Cones (``Span``, ``PolyhedralCone``, ``NonnegativeOrthant``, ``CircularCone``) are run
with one program that draws :math:`\|\Pi_C g\|^2` and summarises both it and its square
root, so :func:`gaussian_width` and :func:`statistical_dimension` of the same cone compile
once. Compilation, not arithmetic, dominates small problems on XLA:CPU (a program with
the threefry draw costs ~0.6 s to compile, one with the NNLS loop ~2.5 s), hence also the
separately jitted Cholesky factor (shared by every family of size ``n``) and the chunk
keys split outside the Monte Carlo program.

Measured (2-core CPU shared with other jobs, so upper bounds; float32, ``n = 16``,
``D = 10^6``): Gram pass 0.20 s; fast hull width 0.27 us/sample (``M = 10^5`` in 27 ms);
naive hull width 39 ms/sample (the ``D``-dim Gaussian draw dominates); fast cone width
0.13 ms/sample; nested cone (16 NNLS per sample) 4 ms/sample.

Example:
  >>> hull0 = ConvexHullWithOrigin.from_task_vectors(task_vectors)   # [T, ...] pytree
  >>> est = gaussian_width(jax.random.key(0), hull0, num_samples=100_000)
  >>> est.mean, est.stderr
  >>> path = nested_width(jax.random.key(1), task_vectors, kind="hull0",
  ...                     num_samples=100_000)      # concavity: path.diff2 < 0 ?

Closed forms used as oracles live in :mod:`mergetheory.closed_forms`. References
(``paper/refs.bib``): Amelunxen, Lotz, McCoy, Tropp 2014; Vershynin 2018 (HDP, ch. 7).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._types import Key
from .sets import (
    GeneratedSet,
    ReferenceSet,
    cone_projection_sq_norm,
    default_rank_rtol,
    make_set,
    nnls_gram,
    psd_cholesky,
    span_pivot_mask,
    validate_gram,
)
from .tree import check_finite

__all__ = [
    "NestedWidthEstimate",
    "SampleMoments",
    "WidthEstimate",
    "gaussian_width",
    "nested_width",
    "statistical_dimension",
    "stream_moments",
    "summarize_samples",
    "width_sampler",
]

_METHODS = ("fast", "naive")
_CONVENTIONS = ("sup", "symmetric")
_QUANTITIES = ("width", "statdim")
_NESTED_KINDS = ("hull", "hull0", "points", "zonotope", "ellipsoid", "span", "cone")
_NAIVE_CHUNK_ELEMENTS = 1 << 23  # auto chunk: at most ~8M Gaussian entries per chunk
_FAST_CHUNK = 4096


class WidthEstimate(NamedTuple):
    """A Monte Carlo estimate with its standard error.

    Attributes:
      mean: scalar estimate (sample mean).
      stderr: scalar standard error, ``std(ddof=1) / sqrt(num_samples)``.
      num_samples: number of Monte Carlo samples ``M``.
    """

    mean: jax.Array
    stderr: jax.Array
    num_samples: int


class NestedWidthEstimate(NamedTuple):
    r"""Widths of the nested sets :math:`S_1 \subset S_2 \subset \dots \subset S_N`.

    :math:`S_m` is built from the first ``m`` generators; all use the same Gaussian draws,
    and differences are taken per sample path, so their standard errors are the paired
    ones (much smaller than those of independent estimates).

    Attributes:
      mean: ``[N]`` estimates of :math:`w(S_m)` (or :math:`\delta(S_m)`).
      stderr: ``[N]`` standard errors.
      diff1: ``[N-1]`` first differences :math:`w(S_{m+1}) - w(S_m)`.
      diff1_stderr: ``[N-1]`` paired standard errors.
      diff2: ``[N-2]`` second differences :math:`w(S_{m+2}) - 2w(S_{m+1}) + w(S_m)`.
      diff2_stderr: ``[N-2]`` paired standard errors.
      num_samples: ``M``.
    """

    mean: jax.Array
    stderr: jax.Array
    diff1: jax.Array
    diff1_stderr: jax.Array
    diff2: jax.Array
    diff2_stderr: jax.Array
    num_samples: int


# --------------------------------------------------------------------------------------
# one replicate
# --------------------------------------------------------------------------------------


def _coordinate_major_normal(key: Key, num: int, dim: int, dtype: Any) -> jax.Array:
    """``[num, dim]`` standard normals; entry ``(i, j)`` does not depend on ``dim``.

    Drawn coordinate-major as one 1-D array (``[dim * num]`` -> ``[dim, num]`` -> ``.T``):
    with ``jax_threefry_partitionable`` (the default) a 1-D draw is prefix-consistent, so
    the first ``m`` coordinates are the same for every ``dim >= m``. (A 1-D draw also
    compiles ~4x faster than a 2-D one on XLA:CPU.) Without that flag, coordinate ``j``
    is drawn from ``fold_in(key, j)``.
    """
    if jax.config.jax_threefry_partitionable:
        return jr.normal(key, (dim * num,), dtype).reshape(dim, num).T
    cols = jax.vmap(lambda j: jr.normal(jr.fold_in(key, j), (num,), dtype))(jnp.arange(dim))
    return cols.T


def _gram_schmidt_rows(points: jax.Array, rank_rtol: float) -> jax.Array:
    r"""Orthonormal rows ``Q`` with :math:`\mathrm{span}(Q_{1:m}) = \mathrm{span}(t_{1:m})`.

    Classical Gram–Schmidt with one re-orthogonalisation, on the explicit vectors; a row
    is zeroed when :math:`\|t_j^\perp\|^2 \le \mathrm{rtol}\,\|t_j\|^2` (dependent).
    """
    n = points.shape[0]
    dtype = points.dtype

    def body(j, q):
        v = points[j]
        v = v - q.T @ (q @ v)
        v = v - q.T @ (q @ v)
        nrm2 = jnp.dot(v, v)
        own = jnp.dot(points[j], points[j])
        ok = (nrm2 > rank_rtol * own) & (own > 0)
        row = jnp.where(ok, v / jnp.sqrt(jnp.where(ok, nrm2, 1.0)), 0.0).astype(dtype)
        return q.at[j].set(row)

    return jax.lax.fori_loop(0, n, body, jnp.zeros_like(points))


def _prefix_masks(n: int) -> jax.Array:
    """``[n, n]`` boolean: row ``m-1`` selects the first ``m`` generators."""
    return jnp.arange(n)[None, :] < jnp.arange(1, n + 1)[:, None]


def _generated_values(
    set_: GeneratedSet,
    *,
    method: str,
    quantity: str,
    nested: bool,
    rank_rtol: float,
    max_iter: int | None,
    factor: tuple[jax.Array, jax.Array] | None,
) -> tuple[Callable[[Key, int], jax.Array], Callable[[jax.Array], jax.Array]]:
    """``(draw, values)``: ``draw(key, num) -> [num, .]`` Gaussians; per-sample values."""
    kind = set_.kind
    gram = set_.gram
    n = gram.shape[0]
    dtype = gram.dtype

    if method == "fast":
        lower, pivots = psd_cholesky(gram) if factor is None else factor
        if kind == "span":
            span_mask = span_pivot_mask(gram, pivots, rank_rtol).astype(dtype)

        def draw(k, num):
            return _coordinate_major_normal(k, num, n, dtype)

        def to_z(h):
            return lower @ h

        def span_sq(h):
            return span_mask * h * h

        def cone_sq(z, h):
            del h
            if not nested:
                return cone_projection_sq_norm(gram, z, max_iter=max_iter)[0]
            masks = _prefix_masks(n).astype(dtype)
            return jax.vmap(
                lambda m: cone_projection_sq_norm(
                    gram * m[:, None] * m[None, :], z * m, max_iter=max_iter
                )[0]
            )(masks)

    else:
        points = set_.points
        dim = points.shape[1]
        pdtype = points.dtype
        basis = _gram_schmidt_rows(points, rank_rtol) if kind == "span" else None
        # naive cone: the same active-set solver, but on <t_i, t_j> and <t_i, g> formed
        # from the explicit vectors, with the projection T^T lambda built in R^D.
        pgram = points @ points.T if kind == "cone" else None

        def draw(k, num):
            return jr.normal(k, (num * dim,), pdtype).reshape(num, dim)

        def to_z(g):
            return points @ g

        def span_sq(g):
            q = basis @ g
            return q * q

        def cone_sq(z, g):
            def one(m):
                sub = pgram * m[:, None] * m[None, :]
                lam, converged = nnls_gram(sub, z * m, max_iter=max_iter, return_converged=True)
                proj = points.T @ lam
                return jnp.where(converged, jnp.dot(proj, proj), jnp.nan)  # NaN: raise later

            if not nested:
                return one(jnp.ones((n,), pdtype))
            return jax.vmap(one)(_prefix_masks(n).astype(pdtype))

    reduce_max = jax.lax.cummax if nested else (lambda a: jnp.max(a))
    reduce_sum = jnp.cumsum if nested else jnp.sum

    def values(x):
        if kind == "span":  # needs no z = T g (naive: the Gram-Schmidt basis does)
            sq = reduce_sum(span_sq(x))
            return sq if quantity == "statdim" else jnp.sqrt(sq)
        z = to_z(x)
        if kind in ("hull", "points"):
            return reduce_max(z)
        if kind == "hull0":
            return jnp.maximum(reduce_max(z), 0.0)
        if kind == "zonotope":
            return reduce_sum(jnp.maximum(z, 0.0))
        if kind == "ellipsoid":
            return jnp.sqrt(reduce_sum(z * z))
        if kind == "cone":
            sq = cone_sq(z, x)
            return sq if quantity == "statdim" else jnp.sqrt(sq)
        raise ValueError(f"unknown kind {kind!r}")  # pragma: no cover

    return draw, values


def _reference_values(
    set_: ReferenceSet, *, quantity: str
) -> tuple[Callable[[Key, int], jax.Array], Callable[[jax.Array], jax.Array]]:
    dtype = jnp.result_type(float)

    def draw(k, num):
        return jr.normal(k, (num * set_.dim,), dtype).reshape(num, set_.dim)

    if quantity == "statdim":
        return draw, set_.projection_sq_norm
    return draw, set_.support


def width_sampler(
    set_: GeneratedSet | ReferenceSet,
    *,
    chunk_size: int,
    method: str = "fast",
    quantity: str = "width",
    convention: str = "sup",
    nested: bool = False,
    rank_rtol: float | None = None,
    max_iter: int | None = None,
    factor: tuple[jax.Array, jax.Array] | None = None,
) -> Callable[[Key], jax.Array]:
    r"""One chunk of Monte Carlo replicates as a pure function ``chunk_key -> values``.

    The returned function draws ``chunk_size`` Gaussian vectors from one key and returns,
    per vector, :math:`\sup_{s\in S}\langle g, s\rangle` (``quantity="width"``; cones: of
    :math:`S\cap B_2`) or :math:`\|\Pi_C g\|^2` (``"statdim"``): shape ``[chunk_size]``,
    or ``[chunk_size, N]`` (the path over the prefix sets) when ``nested``. The
    preprocessing (Cholesky factor, Gram–Schmidt basis) runs once, when this function is
    called. The public estimators split ``key`` into ``ceil(M / chunk_size)`` chunk keys
    (``jax.random.split``), scan this function over them and keep the first ``M``
    values (:func:`stream_moments`); a sharded Monte Carlo can shard the chunk keys and
    reproduce them exactly.

    Args:
      set_: a generated set (:class:`~mergetheory.sets.ConvexHull`, ...) or a reference set.
      chunk_size: vectors per call.
      method: ``"fast"`` (Gram path) or ``"naive"`` (explicit vectors). Reference sets
        have only their explicit support function; ``method`` is ignored for them.
      quantity: ``"width"`` or ``"statdim"`` (cones only).
      convention: ``"sup"`` (:math:`\sup\langle g,s\rangle`) or ``"symmetric"``
        (:math:`\sup|\langle g,s\rangle| = \max(h_S(g), h_S(-g))`).
      nested: return the ``[N]`` path over the prefix sets (generated sets only).
      rank_rtol: rank tolerance for spans (default :func:`~mergetheory.sets.default_rank_rtol`).
      max_iter: NNLS outer iterations for cones (default ``3 n``).
      factor: optional precomputed ``psd_cholesky(set_.gram)`` (fast path).

    Returns:
      ``fn(chunk_key) -> Array`` of shape ``[chunk_size]`` or ``[chunk_size, N]``.
    """
    _check_choice("method", method, _METHODS)
    _check_choice("quantity", quantity, _QUANTITIES)
    _check_choice("convention", convention, _CONVENTIONS)
    if isinstance(set_, GeneratedSet):
        if quantity == "statdim" and not set_.is_cone:
            raise ValueError(f"{type(set_).__name__} is not a cone: no statistical dimension")
        if method == "naive" and set_.points is None:
            raise ValueError("method='naive' needs a set that keeps its generators (points)")
        if rank_rtol is None:
            rank_rtol = default_rank_rtol(set_.gram.dtype)
        draw, values = _generated_values(
            set_,
            method=method,
            quantity=quantity,
            nested=nested,
            rank_rtol=rank_rtol,
            max_iter=max_iter,
            factor=factor,
        )
    elif isinstance(set_, ReferenceSet):
        if nested:
            raise TypeError("nested widths need a generated set, not a reference set")
        if quantity == "statdim" and not set_.is_cone:
            raise ValueError(f"{type(set_).__name__} is not a cone: no statistical dimension")
        draw, values = _reference_values(set_, quantity=quantity)
    else:
        raise TypeError(f"width_sampler: expected a set from mergetheory.sets, got {type(set_)}")

    def one(x: jax.Array) -> jax.Array:
        v = values(x)
        if convention == "symmetric":
            v = jnp.maximum(v, values(-x))
        return v

    def sample_chunk(k: Key) -> jax.Array:
        return jax.vmap(one)(draw(k, chunk_size))

    return sample_chunk


# --------------------------------------------------------------------------------------
# summaries and the jitted Monte Carlo core
# --------------------------------------------------------------------------------------


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
        m2 = jax.tree_util.tree_map(lambda v, mu: masked_sum((v - mu) ** 2), values, mean)
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


def _path_statistics(vals: jax.Array, both: bool) -> tuple[jax.Array, ...]:
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


def _estimates(mean: tuple[Any, ...], stderr: tuple[Any, ...]) -> tuple[jax.Array, ...]:
    """``(mean, stderr)`` of every tracked statistic, interleaved in order (the fields of
    :class:`WidthEstimate` / :class:`NestedWidthEstimate`)."""
    return tuple(x for pair in zip(mean, stderr, strict=True) for x in pair)


@jax.jit
def _summaries_jit(vals: jax.Array) -> tuple[jax.Array, ...]:
    moments = SampleMoments.from_samples(_path_statistics(vals, both=False))
    return _estimates(moments.mean, moments.stderr())


def summarize_samples(values: jax.Array) -> WidthEstimate | NestedWidthEstimate:
    """Turn per-sample values into an estimate (``[M]`` -> width, ``[M, N]`` -> nested).

    Useful when the samples come from :func:`width_sampler` run elsewhere (e.g. sharded
    over devices). Nested differences are per sample path (paired).
    """
    v = jnp.asarray(values)
    if v.ndim not in (1, 2) or v.shape[0] < 2:
        raise ValueError(f"summarize_samples: expected [M>=2] or [M>=2, N], got {v.shape}")
    out = _summaries_jit(v)
    if v.ndim == 1:
        return WidthEstimate(*out, num_samples=int(v.shape[0]))
    return NestedWidthEstimate(*out, num_samples=int(v.shape[0]))


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_samples",
        "chunk_size",
        "method",
        "quantity",
        "convention",
        "nested",
        "rank_rtol",
        "max_iter",
        "reference",
    ),
)
def _monte_carlo(
    chunk_keys: Key,
    set_: GeneratedSet | None,
    factor: tuple[jax.Array, jax.Array] | None,
    *,
    reference: ReferenceSet | None,
    num_samples: int,
    chunk_size: int,
    method: str,
    quantity: str,
    convention: str,
    nested: bool,
    rank_rtol: float | None,
    max_iter: int | None,
) -> tuple[jax.Array, ...]:
    r"""Summaries of ``M`` samples from ``[C]`` chunk keys (``C = ceil(M / chunk_size)``).

    ``quantity="both"`` (cones) draws :math:`\|\Pi_C g\|^2` once and returns the
    summaries of its square root (the width) followed by its own (the statistical
    dimension): one compiled program serves both public estimators.
    """
    sample_chunk = width_sampler(
        reference if set_ is None else set_,
        chunk_size=chunk_size,
        method=method,
        quantity="statdim" if quantity == "both" else quantity,
        convention=convention,
        nested=nested,
        rank_rtol=rank_rtol,
        max_iter=max_iter,
        factor=factor,
    )
    moments = stream_moments(
        sample_chunk,
        chunk_keys,
        num_samples=num_samples,
        statistics=functools.partial(_path_statistics, both=quantity == "both"),
    )
    return _estimates(moments.mean, moments.stderr())


def _run(key: Key, set_: Any, factor: Any, static: dict[str, Any]) -> tuple[jax.Array, ...]:
    """Split ``key`` into chunk keys (a small program shared by all sets) and run.

    Cones (``Span``, ``PolyhedralCone``, ``NonnegativeOrthant``, ``CircularCone``) are
    run with ``quantity="both"`` so that their width and statistical dimension share one
    compiled program; the requested half of the summaries is returned.
    """
    num_chunks = -(-static["num_samples"] // static["chunk_size"])
    chunk_keys = jr.split(key, num_chunks)
    target = reference = static["reference"]
    if reference is None:
        target = set_
    if not target.is_cone:
        return _check_estimate(_monte_carlo(chunk_keys, set_, factor, **static), static)
    out = _monte_carlo(chunk_keys, set_, factor, **{**static, "quantity": "both"})
    _check_estimate(out, static)
    half = len(out) // 2
    return out[:half] if static["quantity"] == "width" else out[half:]


def _check_estimate(out: Any, static: dict[str, Any]) -> Any:
    """Raise on a non-finite estimate (outside transformations; tracers pass through).

    The inputs were checked finite, so NaN here means a per-sample failure: the cone
    projection's active-set solver did not converge within ``max_iter``.
    """
    leaves = jax.tree_util.tree_leaves(out)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return out
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in leaves):
        raise FloatingPointError(
            "width estimate is not finite: the cone projection (NNLS) did not converge "
            f"within max_iter={static['max_iter']} (None: 3n) on some samples; pass a "
            "larger max_iter (CLI: --max-iter)"
        )
    return out


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------


_psd_cholesky_jit = jax.jit(psd_cholesky)


def _check_key(key: Any) -> None:
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key: expected a single PRNG key, got a key array of shape {key.shape}"
            )
        return
    shape = getattr(key, "shape", None)
    dtype = getattr(key, "dtype", None)
    if shape == (2,) and dtype == jnp.uint32:
        return
    raise TypeError(
        "key: expected a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
        f"got {type(key).__name__}"
        + (f" of shape {shape} and dtype {dtype}" if shape is not None else "")
    )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _resolve_chunk(chunk_size: int | None, num_samples: int, set_: Any, method: str) -> int:
    if chunk_size is None:
        if isinstance(set_, ReferenceSet):
            dim = set_.dim
        elif method == "naive":
            dim = set_.dim
        else:
            dim = 0
        chunk = max(1, _NAIVE_CHUNK_ELEMENTS // dim) if dim else _FAST_CHUNK
    else:
        chunk = _check_int("chunk_size", chunk_size, 1)
    return min(chunk, num_samples)


def _prepare(
    key: Any,
    set_: Any,
    *,
    num_samples: Any,
    chunk_size: Any,
    method: str,
    quantity: str,
    convention: str,
    nested: bool,
    rank_rtol: float | None,
    max_iter: int | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Validate concrete inputs; return the set, its Cholesky factor and static kwargs.

    The factor is computed here by a separately jitted :func:`psd_cholesky`, so its
    (slow on XLA:CPU) compilation is shared by every set family and method of size ``n``.

    Contract relied on by :mod:`mergetheory.sharding` and :mod:`mergetheory.cli` (keep it
    stable): returns ``(set_, factor, static)`` where ``set_`` is the validated generated
    set (``None`` for a reference set; its ``points`` dropped on the fast path),
    ``factor`` is ``psd_cholesky(gram)`` on the fast path (else ``None``), and ``static``
    holds ``reference, num_samples, chunk_size, method, quantity, convention, nested,
    rank_rtol, max_iter`` (chunk size resolved, rank tolerance defaulted), ready for
    :func:`width_sampler` / ``_monte_carlo``.
    """
    factor = None
    _check_key(key)
    num_samples = _check_int("num_samples", num_samples, 2)
    _check_choice("method", method, _METHODS)
    _check_choice("quantity", quantity, _QUANTITIES)
    _check_choice("convention", convention, _CONVENTIONS)
    if max_iter is not None:
        max_iter = _check_int("max_iter", max_iter, 1)
    if rank_rtol is not None:
        rank_rtol = float(rank_rtol)
        if not 0.0 <= rank_rtol < 1.0:
            raise ValueError(f"rank_rtol must be in [0, 1), got {rank_rtol}")
    if isinstance(set_, GeneratedSet):
        gram = validate_gram(set_.gram, name=f"{type(set_).__name__}.gram")
        points = set_.points
        if method == "naive":
            if points is None:
                raise ValueError(
                    f"method='naive' needs the generators, but this {type(set_).__name__} "
                    "was built from a Gram matrix (use method='fast', or build it with "
                    "from_task_vectors(..., keep_points=True))"
                )
            if points.ndim != 2 or points.shape[0] != gram.shape[0]:
                raise ValueError(
                    f"points shape {points.shape} does not match Gram shape {gram.shape}"
                )
            check_finite(points, name=f"{type(set_).__name__}.points")
        set_ = type(set_)(gram=gram, points=points if method == "naive" else None)
        if method == "fast":
            factor = _psd_cholesky_jit(gram)
        if rank_rtol is None:
            rank_rtol = default_rank_rtol(gram.dtype)
        if quantity == "statdim" and not set_.is_cone:
            raise ValueError(
                f"the statistical dimension is defined for cones (Span, PolyhedralCone, "
                f"NonnegativeOrthant, CircularCone), not {type(set_).__name__}"
            )
    elif isinstance(set_, ReferenceSet):
        if nested:
            raise TypeError("nested widths need a generated set, not a reference set")
        if quantity == "statdim" and not set_.is_cone:
            raise ValueError(f"{type(set_).__name__} is not a cone: no statistical dimension")
    else:
        raise TypeError(
            "set_ must be a mergetheory.sets set (ConvexHull, Span, PolyhedralCone, L2Ball, "
            f"...), got {type(set_).__name__}"
        )
    chunk = _resolve_chunk(chunk_size, num_samples, set_, method)
    reference = None
    if isinstance(set_, ReferenceSet):
        reference, set_ = set_, None  # hashable NamedTuple of scalars: a static argument
    static = dict(
        reference=reference,
        num_samples=num_samples,
        chunk_size=chunk,
        method=method,
        quantity=quantity,
        convention=convention,
        nested=nested,
        rank_rtol=rank_rtol,
        max_iter=max_iter,
    )
    return set_, factor, static


# --------------------------------------------------------------------------------------
# public estimators
# --------------------------------------------------------------------------------------


def gaussian_width(
    key: Key,
    set_: GeneratedSet | ReferenceSet,
    *,
    num_samples: int,
    chunk_size: int | None = None,
    method: str = "fast",
    convention: str = "sup",
    rank_rtol: float | None = None,
    max_iter: int | None = None,
) -> WidthEstimate:
    r"""Monte Carlo Gaussian width :math:`w(S) = \mathbb{E}\sup_{s\in S}\langle g, s\rangle`.

    For cones (:class:`~mergetheory.sets.Span`, :class:`~mergetheory.sets.PolyhedralCone`,
    orthant, circular cone) the width is that of :math:`C \cap B_2`,
    :math:`\mathbb{E}\|\Pi_C g\|`.

    Args:
      key: PRNG key.
      set_: a set from :mod:`mergetheory.sets`.
      num_samples: Monte Carlo samples ``M >= 2``.
      chunk_size: samples per vectorised chunk (memory bound); default: 4096 on the fast
        path, ``~8M / D`` on the naive path. It is part of the random stream: results
        are reproducible for a fixed ``(key, num_samples, chunk_size)``.
      method: ``"fast"`` (:math:`z \sim \mathcal{N}(0, G)`, cost :math:`O(Mn^2)`) or
        ``"naive"`` (:math:`g \sim \mathcal{N}(0, I_D)`, cost :math:`O(MnD)`, needs points).
      convention: ``"sup"`` or ``"symmetric"`` (:math:`\mathbb{E}\sup|\langle g,s\rangle|`).
      rank_rtol: rank tolerance for spans; see :func:`~mergetheory.sets.default_rank_rtol`.
      max_iter: NNLS outer iterations for cones (default ``3 n``).

    Returns:
      :class:`WidthEstimate` ``(mean, stderr, num_samples)``.

    Raises:
      ValueError / TypeError: bad key, ``num_samples < 2``, unknown method, non-finite
        or non-PSD Gram matrix, naive path without points.
      FloatingPointError: a non-finite estimate: the cone projection (NNLS) did not
        converge within ``max_iter`` on some samples (checked outside ``jit`` only;
        under a transformation the NaN is returned). The same holds for
        :func:`statistical_dimension`, :func:`nested_width` and the sharded estimator.

    Example:
      >>> hull = ConvexHull.from_task_vectors(jnp.eye(10))
      >>> est = gaussian_width(jax.random.key(0), hull, num_samples=10_000)
      >>> # est.mean ~ 1.5388 = E max(Z_1..Z_10) (THEORY.md section 4)
    """
    set_, factor, static = _prepare(
        key,
        set_,
        num_samples=num_samples,
        chunk_size=chunk_size,
        method=method,
        quantity="width",
        convention=convention,
        nested=False,
        rank_rtol=rank_rtol,
        max_iter=max_iter,
    )
    mean, stderr = _run(key, set_, factor, static)
    return WidthEstimate(mean, stderr, static["num_samples"])


def statistical_dimension(
    key: Key,
    cone: GeneratedSet | ReferenceSet,
    *,
    num_samples: int,
    chunk_size: int | None = None,
    method: str = "fast",
    rank_rtol: float | None = None,
    max_iter: int | None = None,
) -> WidthEstimate:
    r"""Monte Carlo statistical dimension :math:`\delta(C) = \mathbb{E}\|\Pi_C(g)\|^2`.

    For :class:`~mergetheory.sets.PolyhedralCone` the projection is the NNLS problem
    :math:`\min_{\lambda\ge0}\lambda^\top G\lambda - 2\lambda^\top z` and
    :math:`\|\Pi_C g\|^2 = 2\lambda^{\star\top} z - \lambda^{\star\top}G\lambda^\star`; for
    :class:`~mergetheory.sets.Span`, :math:`\delta = \mathrm{rank}\,G` (the estimate is
    :math:`\chi^2_r / M`-noisy around it). ALMT 2014: :math:`w(C\cap S^{D-1})^2 \le
    \delta(C) \le w(C\cap S^{D-1})^2 + 1`.

    Args:
      key: PRNG key.
      cone: ``Span``, ``PolyhedralCone``, ``NonnegativeOrthant`` or ``CircularCone``.
      num_samples: ``M >= 2``.
      chunk_size: see :func:`gaussian_width`.
      method: ``"fast"`` or ``"naive"``.
      rank_rtol: rank tolerance for spans.
      max_iter: NNLS outer iterations (default ``3 n``).

    Returns:
      :class:`WidthEstimate` of :math:`\delta(C)`.

    Example:
      >>> orthant = PolyhedralCone.from_task_vectors(jnp.eye(8))
      >>> statistical_dimension(jax.random.key(0), orthant, num_samples=4000).mean  # ~ 4
    """
    cone, factor, static = _prepare(
        key,
        cone,
        num_samples=num_samples,
        chunk_size=chunk_size,
        method=method,
        quantity="statdim",
        convention="sup",
        nested=False,
        rank_rtol=rank_rtol,
        max_iter=max_iter,
    )
    mean, stderr = _run(key, cone, factor, static)
    return WidthEstimate(mean, stderr, static["num_samples"])


def nested_width(
    key: Key,
    generators: Any,
    *,
    kind: str = "hull",
    quantity: str = "width",
    num_samples: int,
    chunk_size: int | None = None,
    method: str = "fast",
    convention: str = "sup",
    rank_rtol: float | None = None,
    max_iter: int | None = None,
) -> NestedWidthEstimate:
    r"""Widths of the nested sets built from the first ``m`` generators, ``m = 1..N``.

    :math:`S_m = \mathrm{kind}(t_1..t_m)`, all evaluated on the same Gaussian draws
    (common random numbers): each sample path :math:`m \mapsto h_{S_m}(g)` is monotone, and
    the first and second differences are computed per path, so their standard errors are
    paired. This is what a concavity test of :math:`m \mapsto w(S_m)` needs (THEORY.md C3).

    With ``method="fast"`` the ``m``-th entry equals :func:`gaussian_width` of the set
    built from the first ``m`` generators with the same key and ``num_samples`` (up to
    round-off), because the lower-triangular factor and the Gaussian draws are
    prefix-consistent; the same holds for ``method="naive"``.

    Args:
      key: PRNG key.
      generators: task-vector pytree ``[N, ...]``, flat ``[N, D]`` array, or a generated
        set (only its Gram matrix and points are used; ``kind`` picks the family).
      kind: ``"hull"``, ``"hull0"``, ``"span"``, ``"cone"``, ``"zonotope"`` (also
        ``"points"``, ``"ellipsoid"``). Order matters: generators enter in order.
      quantity: ``"width"`` or ``"statdim"`` (``span`` / ``cone`` only).
      num_samples: ``M >= 2``.
      chunk_size: see :func:`gaussian_width`.
      method: ``"fast"`` or ``"naive"``.
      convention: ``"sup"`` or ``"symmetric"``.
      rank_rtol: rank tolerance for spans.
      max_iter: NNLS outer iterations for cones.

    Returns:
      :class:`NestedWidthEstimate` with ``[N]``, ``[N-1]``, ``[N-2]`` fields.

    Example:
      >>> est = nested_width(jax.random.key(0), jnp.eye(12), kind="hull0",
      ...                    num_samples=20_000)
      >>> # est.mean ~ E0_1..E0_12 and est.diff2 < 0 (THEORY.md section 4)
    """
    _check_choice("kind", kind, _NESTED_KINDS)
    if isinstance(generators, ReferenceSet):
        raise TypeError("nested_width needs generators (task vectors or a generated set)")
    if isinstance(generators, GeneratedSet):
        set_ = generators.as_kind(kind)
    else:
        set_ = make_set(kind, generators, keep_points=(method == "naive"))
    set_, factor, static = _prepare(
        key,
        set_,
        num_samples=num_samples,
        chunk_size=chunk_size,
        method=method,
        quantity=quantity,
        convention=convention,
        nested=True,
        rank_rtol=rank_rtol,
        max_iter=max_iter,
    )
    out = _run(key, set_, factor, static)
    return NestedWidthEstimate(*out, num_samples=static["num_samples"])
