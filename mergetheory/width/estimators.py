r"""Gaussian width and statistical dimension by Monte Carlo: the public estimators.

.. math::
    w(S) = \mathbb{E}_{g\sim\mathcal{N}(0,I_D)} \sup_{s\in S}\langle g, s\rangle, \qquad
    \delta(C) = \mathbb{E}\,\|\Pi_C(g)\|^2 .

Two estimators that agree in expectation (docs/width_engine.md), both generic over sets
(each set owns its support function, :mod:`mergetheory.geometry`):

* **fast**: every generated set depends on :math:`g` only through :math:`z = Tg \sim
  \mathcal{N}(0, G)`. Factor :math:`G = LL^\top` once
  (:func:`~mergetheory.linalg.psd_cholesky`), draw :math:`h \sim \mathcal{N}(0, I_n)` and
  set :math:`z = Lh`. Cost :math:`O(n^2 D)` once for :math:`G`, then :math:`O(Mn^2)`
  (cone: a small active-set solve per sample).
* **naive** (the reference): :math:`g \sim \mathcal{N}(0, I_D)` on the explicit vectors,
  cost :math:`O(MnD)`.

Randomness: ``key`` is split into ``ceil(M / chunk_size)`` chunk keys and each chunk
draws its Gaussians in one call (:func:`~mergetheory.width.sampler.width_sampler`), so a
result is reproducible for a fixed ``(key, num_samples, chunk_size)``. In the fast path
the draws are prefix-consistent and :math:`L` is lower triangular, so
:func:`nested_width` uses common random numbers and its ``m``-th entry equals
:func:`gaussian_width` of the ``m``-prefix with the same key, ``num_samples`` and
``chunk_size``. The chunks are streamed into running moments by
:func:`~mergetheory.width.engine.run_monte_carlo` (memory set by ``chunk_size``).

Example:
  >>> hull0 = ConvexHullWithOrigin.from_task_vectors(task_vectors)   # [T, ...] pytree
  >>> est = gaussian_width(jax.random.key(0), hull0, num_samples=100_000)
  >>> est.mean, est.stderr
  >>> path = nested_width(jax.random.key(1), task_vectors, kind="hull0",
  ...                     num_samples=100_000)      # concavity: path.diff2 < 0 ?

Closed forms used as oracles live in :mod:`mergetheory.geometry.closed_forms`. References
(``paper/refs.bib``): Amelunxen, Lotz, McCoy, Tropp 2014; Vershynin 2018 (HDP, ch. 7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._types import Key
from ..geometry import GeneratedSet, ReferenceSet, make_set
from ..linalg import default_rank_rtol, psd_cholesky, validate_gram
from ..tree import check_finite
from .engine import AxisName, MonteCarloConfig, run_monte_carlo
from .moments import SampleMoments, path_statistics
from .sampler import CONVENTIONS, METHODS, QUANTITIES, check_choice, width_sampler

__all__ = [
    "NESTED_KINDS",
    "NestedWidthEstimate",
    "WidthConfig",
    "WidthEstimate",
    "check_estimate",
    "gaussian_width",
    "nested_width",
    "prepare_width",
    "run_width",
    "statistical_dimension",
    "summarize_samples",
]

NESTED_KINDS = ("hull", "hull0", "points", "zonotope", "ellipsoid", "span", "cone")
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

    def to_numpy(self) -> NestedWidthEstimate:
        """The same estimate as float64 NumPy arrays on the host (``num_samples`` an int)."""
        arrays = (np.asarray(x, np.float64) for x in self[:-1])
        return NestedWidthEstimate(*arrays, num_samples=int(self.num_samples))


class WidthConfig(NamedTuple):
    """Static configuration of a width estimate (from :func:`prepare_width`).

    Attributes:
      reference: the reference set (``None`` for a generated set, passed as an array).
      num_samples: ``M``.
      chunk_size: samples per chunk (resolved).
      method: ``"fast"`` or ``"naive"``.
      quantity: ``"width"`` or ``"statdim"``.
      convention: ``"sup"`` or ``"symmetric"``.
      nested: the ``[N]`` path over the prefix sets.
      rank_rtol: rank tolerance (defaulted for generated sets).
      max_iter: NNLS outer iterations for cones (``None``: ``3 n``).
    """

    reference: ReferenceSet | None
    num_samples: int
    chunk_size: int
    method: str
    quantity: str
    convention: str
    nested: bool
    rank_rtol: float | None
    max_iter: int | None


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


def prepare_width(
    key: Any,
    set_: Any,
    num_samples: Any,
    chunk_size: Any,
    method: str,
    quantity: str,
    convention: str,
    nested: bool,
    rank_rtol: float | None,
    max_iter: int | None,
) -> tuple[GeneratedSet | None, Any, WidthConfig]:
    """Validate concrete inputs; return the set, its Cholesky factor and the config.

    The factor is computed here by a separately jitted
    :func:`~mergetheory.linalg.psd_cholesky`, so its compilation is shared by every set
    family and method of size ``n``.

    Args:
      key, set_, num_samples, chunk_size, method, convention, rank_rtol, max_iter: as in
        :func:`gaussian_width`.
      quantity: ``"width"`` or ``"statdim"``.
      nested: the path over the prefix sets (:func:`nested_width`).

    Returns:
      ``(set_, factor, config)``: the validated generated set (``None`` for a reference
      set, which goes into ``config.reference``; its ``points`` dropped on the fast path),
      ``psd_cholesky(gram)`` on the fast path (else ``None``) and a :class:`WidthConfig`
      (chunk size resolved, rank tolerance defaulted), ready for :func:`run_width`.
    """
    factor = None
    _check_key(key)
    num_samples = _check_int("num_samples", num_samples, 2)
    check_choice("method", method, METHODS)
    check_choice("quantity", quantity, QUANTITIES)
    check_choice("convention", convention, CONVENTIONS)
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
            "set_ must be a mergetheory.geometry set (ConvexHull, Span, PolyhedralCone, L2Ball, "
            f"...), got {type(set_).__name__}"
        )
    chunk = _resolve_chunk(chunk_size, num_samples, set_, method)
    reference = None
    if isinstance(set_, ReferenceSet):
        reference, set_ = set_, None  # hashable NamedTuple of scalars: a jit static
    config = WidthConfig(
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
    return set_, factor, config


@dataclasses.dataclass(frozen=True)
class _WidthChunks:
    """Hashable ``(set_, factor) -> (chunk_key -> values)``: :func:`width_sampler`."""

    config: WidthConfig

    def __call__(self, set_: Any, factor: Any) -> Callable[[Key], Any]:
        c = self.config
        return width_sampler(
            c.reference if set_ is None else set_,
            chunk_size=c.chunk_size,
            method=c.method,
            quantity=c.quantity,
            convention=c.convention,
            nested=c.nested,
            rank_rtol=c.rank_rtol,
            max_iter=c.max_iter,
            factor=factor,
        )


@dataclasses.dataclass(frozen=True)
class _PathStatistics:
    """Hashable :func:`~mergetheory.width.moments.path_statistics` with ``both`` bound."""

    both: bool

    def __call__(self, values: jax.Array) -> tuple[jax.Array, ...]:
        return path_statistics(values, both=self.both)


def _estimates(mean: tuple[Any, ...], stderr: tuple[Any, ...]) -> tuple[jax.Array, ...]:
    """``(mean, stderr)`` of every tracked statistic, interleaved in order (the fields of
    :class:`WidthEstimate` / :class:`NestedWidthEstimate`)."""
    return tuple(x for pair in zip(mean, stderr, strict=True) for x in pair)


def _finalize(moments: SampleMoments) -> tuple[jax.Array, ...]:
    return _estimates(moments.mean, moments.stderr())


def check_estimate(out: Any, max_iter: int | None) -> Any:
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
            f"within max_iter={max_iter} (None: 3n) on some samples; pass a "
            "larger max_iter (CLI: --max-iter)"
        )
    return out


def run_width(
    key: Key,
    set_: GeneratedSet | None,
    factor: Any,
    config: WidthConfig,
    *,
    mesh: Mesh | None = None,
    axis_name: AxisName | None = None,
    on_block: Callable[[int], Any] | None = None,
    chunks_per_block: int | None = None,
) -> WidthEstimate | NestedWidthEstimate:
    """The estimate for a prepared set, through :func:`~mergetheory.width.run_monte_carlo`.

    Cones are run with both summaries (of :math:`\\|\\Pi_C g\\|` and of its square) from one
    compiled program, so :func:`gaussian_width` and :func:`statistical_dimension` of the
    same cone compile once; the requested half is returned.

    Args:
      key: PRNG key.
      set_, factor, config: from :func:`prepare_width`.
      mesh: shard the chunks over a device mesh (``axis_name``: its axes to use).
      on_block: progress callback per block of ``chunks_per_block`` chunks.
      chunks_per_block: chunks per block (``on_block`` only).

    Returns:
      :class:`WidthEstimate`, or :class:`NestedWidthEstimate` when ``config.nested``.

    Raises:
      FloatingPointError: the estimate is not finite (NNLS did not converge).
    """
    target = set_ if config.reference is None else config.reference
    both = target.is_cone
    # cones: one program for both quantities (the config's own quantity is not static)
    chunks = _WidthChunks(config._replace(quantity="statdim") if both else config)
    sampler = jax.tree_util.Partial(chunks, set_, factor)
    mc = MonteCarloConfig(
        num_samples=config.num_samples,
        chunk_size=config.chunk_size,
        statistics=_PathStatistics(both),
        axis_name=axis_name,
        chunks_per_block=chunks_per_block,
        finalize=_finalize,
    )
    out = run_monte_carlo(key, sampler, mc, mesh=mesh, on_block=on_block)
    out = check_estimate(out, config.max_iter)
    if both:
        half = len(out) // 2
        out = out[:half] if config.quantity == "width" else out[half:]
    if config.nested:
        return NestedWidthEstimate(*out, num_samples=config.num_samples)
    return WidthEstimate(*out, config.num_samples)


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

    For cones (:class:`~mergetheory.geometry.Span`, :class:`~mergetheory.geometry.PolyhedralCone`,
    orthant, circular cone) the width is that of :math:`C \cap B_2`,
    :math:`\mathbb{E}\|\Pi_C g\|`.

    Args:
      key: PRNG key.
      set_: a set from :mod:`mergetheory.geometry`.
      num_samples: Monte Carlo samples ``M >= 2``.
      chunk_size: samples per vectorised chunk (memory bound); default: 4096 on the fast
        path, ``~8M / D`` on the naive path. It is part of the random stream: results
        are reproducible for a fixed ``(key, num_samples, chunk_size)``.
      method: ``"fast"`` (:math:`z \sim \mathcal{N}(0, G)`, cost :math:`O(Mn^2)`) or
        ``"naive"`` (:math:`g \sim \mathcal{N}(0, I_D)`, cost :math:`O(MnD)`, needs points).
      convention: ``"sup"`` or ``"symmetric"`` (:math:`\mathbb{E}\sup|\langle g,s\rangle|`).
      rank_rtol: rank tolerance for spans; see :func:`~mergetheory.linalg.default_rank_rtol`.
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
      >>> # est.mean ~ 1.5388 = E max(Z_1..Z_10) (Sources S2)
    """
    set_, factor, config = prepare_width(
        key, set_, num_samples, chunk_size, method, "width", convention, False, rank_rtol, max_iter
    )
    return run_width(key, set_, factor, config)


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

    For :class:`~mergetheory.geometry.PolyhedralCone` the projection is the NNLS problem
    :math:`\min_{\lambda\ge0}\lambda^\top G\lambda - 2\lambda^\top z` and
    :math:`\|\Pi_C g\|^2 = 2\lambda^{\star\top} z - \lambda^{\star\top}G\lambda^\star`; for
    :class:`~mergetheory.geometry.Span`, :math:`\delta = \mathrm{rank}\,G` (the estimate is
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
    cone, factor, config = prepare_width(
        key, cone, num_samples, chunk_size, method, "statdim", "sup", False, rank_rtol, max_iter
    )
    return run_width(key, cone, factor, config)


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
    paired. This is what a concavity test of :math:`m \mapsto w(S_m)` needs (claim C3, Sources S1).

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
      >>> # est.mean ~ E0_1..E0_12 and est.diff2 < 0 (Sources S2)
    """
    check_choice("kind", kind, NESTED_KINDS)
    if isinstance(generators, ReferenceSet):
        raise TypeError("nested_width needs generators (task vectors or a generated set)")
    if isinstance(generators, GeneratedSet):
        set_ = generators.as_kind(kind)
    else:
        set_ = make_set(kind, generators, keep_points=(method == "naive"))
    set_, factor, config = prepare_width(
        key, set_, num_samples, chunk_size, method, quantity, convention, True, rank_rtol, max_iter
    )
    return run_width(key, set_, factor, config)


@jax.jit
def _summaries_jit(vals: jax.Array) -> tuple[jax.Array, ...]:
    moments = SampleMoments.from_samples(path_statistics(vals, both=False))
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
