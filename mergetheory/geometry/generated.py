r"""Generated sets: families known through the Gram matrix of their generators.

Every set built from ``n`` task vectors :math:`t_1, \dots, t_n \in \mathbb{R}^D` (rows of
:math:`T \in \mathbb{R}^{n \times D}`) has a support function
:math:`h_S(g) = \sup_{s \in S} \langle g, s\rangle` that depends on :math:`g` only through
:math:`z = T g`, and :math:`z \sim \mathcal{N}(0, G)` for :math:`g \sim \mathcal{N}(0, I_D)`,
with :math:`G = T T^\top` the Gram matrix (docs/width_engine.md). Each family owns its
maths (:meth:`GeneratedSet.support_from_z`, and for cones
:meth:`GeneratedCone.projection_sq_from_z`), as ott-jax's geometries own their cost:

* ``ConvexHull`` (kind ``hull``): :math:`\mathrm{conv}\{t_i\}`, :math:`h = \max_i z_i`.
* ``ConvexHullWithOrigin`` (``hull0``): :math:`\mathrm{conv}\{0, t_i\}`, all
  weighted-average merges, :math:`h = \max(0, \max_i z_i)`.
* ``PointSet`` (``points``): the finite set :math:`\{t_i\}` (e.g. an operator image),
  :math:`h = \max_i z_i`.
* ``Zonotope`` (``zonotope``): :math:`\{\sum_i \lambda_i t_i : \lambda\in[0,1]^n\}`,
  :math:`h = \sum_i \max(0, z_i)`.
* ``Ellipsoid`` (``ellipsoid``): :math:`\{T^\top u : \|u\|_2 \le 1\}`, :math:`h = \|z\|_2`.
* ``Span`` (``span``): :math:`\mathrm{span}\{t_i\}`; width of :math:`\cap B_2`,
  :math:`\|P g\|^2 = z^\top G^+ z`.
* ``PolyhedralCone`` (``cone``): :math:`\mathrm{cone}\{t_i\}`; width of :math:`\cap B_2`,
  :math:`\|\Pi_C g\|^2`, an NNLS problem in z (:func:`mergetheory.linalg.nnls_gram`).

``Span`` and ``PolyhedralCone`` are cones: their Gaussian width is reported for the cone
intersected with the unit ball, :math:`w(C \cap B_2) = \mathbb{E}\|\Pi_C g\|`, and their
statistical dimension is :math:`\delta(C) = \mathbb{E}\|\Pi_C g\|^2`.

Each generated set holds ``gram`` ``[n, n]`` and, optionally, the flat generators
``points`` ``[n, D]`` (needed only by the naive reference estimator). Build them with
``Kind.from_task_vectors(tv)`` (a pytree of ``[T, ...]`` leaves or a flat ``[T, D]``
array) or ``Kind.from_gram(G)``, or with :func:`make_set`. The classes are NamedTuples,
hence pytrees whose tree structure records the concrete class, so they pass through
``jit`` unchanged (docs/width_engine.md says why not dataclasses).

The estimators of :mod:`mergetheory.width` evaluate a set on Gaussian draws through two
methods every family implements: :meth:`GeneratedSet.sampling_state` (the per-set
preprocessing, once per program) and :meth:`GeneratedSet.sample_value` (one draw: the
whitened :math:`h` with :math:`z = Lh` on the ``"fast"`` path, the explicit
:math:`g \in \mathbb{R}^D` on the ``"naive"`` one).

Example:
  >>> hull = ConvexHull.from_task_vectors(jnp.eye(3))
  >>> hull.support_from_z(jnp.array([0.5, -1.0, 2.0]))   # 2.0

References (``paper/refs.bib``): Amelunxen, Lotz, McCoy, Tropp 2014 ("Living on the
edge"); Vershynin 2018 (HDP, ch. 7).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import Gram, TaskVectors, is_lora_factors
from ..linalg import (
    cone_projection_sq_norm,
    default_rank_rtol,
    gram_schmidt_rows,
    is_concrete,
    nnls_gram,
    psd_cholesky,
    span_pivot_mask,
    validate_gram,
)
from ..lora import densify, lora_gram_matrix, split_factors, validate_mixed_task_vectors
from ..tree import accumulation_dtype, gram_matrix, ravel_tasks
from .reference import ReferenceSet

__all__ = [
    "SET_KINDS",
    "ConvexHull",
    "ConvexHullWithOrigin",
    "Ellipsoid",
    "GeneratedCone",
    "GeneratedSet",
    "PointSet",
    "PolyhedralCone",
    "Span",
    "Zonotope",
    "make_set",
    "prefix_masks",
]


def prefix_masks(n: int) -> jax.Array:
    """``[n, n]`` boolean: row ``m-1`` selects the first ``m`` generators."""
    return jnp.arange(n)[None, :] < jnp.arange(1, n + 1)[:, None]


def _reduce_max(a: jax.Array, nested: bool) -> jax.Array:
    return jax.lax.cummax(a) if nested else jnp.max(a)


def _reduce_sum(a: jax.Array, nested: bool) -> jax.Array:
    return jnp.cumsum(a) if nested else jnp.sum(a)


# --------------------------------------------------------------------------------------
# construction from task vectors
# --------------------------------------------------------------------------------------


@jax.jit
def _ravel_generators(task_vectors: Any) -> jax.Array:
    """Flat ``[T, D]`` generators (LoRA factors densified), at least float32."""
    dense = jtu.tree_map(
        lambda n: densify(n) if is_lora_factors(n) else n, task_vectors, is_leaf=is_lora_factors
    )
    dtype = accumulation_dtype(*(x.dtype for x in jtu.tree_leaves(dense)))
    flat, _ = ravel_tasks(jtu.tree_map(lambda x: x.astype(dtype), dense))
    return flat


_gram_jit = jax.jit(gram_matrix, static_argnames=("precision",))


def _generators_gram(task_vectors: Any, name: str, precision: Any) -> jax.Array:
    """Validated Gram matrix of dense leaves and/or :class:`~mergetheory.lora.LoraFactors`.

    Dense leaves go through the streamed :func:`mergetheory.tree.gram_matrix`; factored
    nodes through :func:`mergetheory.lora.lora_gram_matrix` (``B A`` never formed); a
    pytree mixing both gets the sum (inner products add over leaves).
    """
    validate_mixed_task_vectors(task_vectors, name=name)
    dense, factors = split_factors(task_vectors)
    grams = []
    if jtu.tree_leaves(factors, is_leaf=is_lora_factors):
        grams.append(lora_gram_matrix(factors, precision=precision, check=False))
    if jtu.tree_leaves(dense):
        grams.append(_gram_jit(dense, precision=precision))
    dtype = accumulation_dtype(*(g.dtype for g in grams))
    gram = sum((g.astype(dtype) for g in grams[1:]), grams[0].astype(dtype))
    return validate_gram(gram, name=f"{name}.gram")  # e.g. overflow in a huge-norm input


def _flatten_generators(
    task_vectors: Any, name: str, precision: Any = "highest", keep_points: bool | None = True
) -> tuple[jax.Array | None, jax.Array]:
    """Task vectors (pytree, flat ``[T, D]`` array or LoRA factors) -> ``(flat, gram)``.

    ``flat`` is ``None`` unless ``keep_points`` (``None``: keep for dense inputs only).
    Half-precision inputs are widened to float32.
    """
    if isinstance(task_vectors, GeneratedSet):
        raise TypeError(f"{name}: got a set; pass its task vectors or use make_set")
    if isinstance(task_vectors, np.ndarray):
        task_vectors = jnp.asarray(task_vectors)
    gram = _generators_gram(task_vectors, name, precision)
    if keep_points is None:
        nodes = jtu.tree_leaves(task_vectors, is_leaf=is_lora_factors)
        keep_points = not any(map(is_lora_factors, nodes))
    flat = _ravel_generators(task_vectors) if keep_points else None
    return flat, gram


# --------------------------------------------------------------------------------------
# the families
# --------------------------------------------------------------------------------------


class _GeneratedFields(NamedTuple):
    gram: jax.Array
    points: jax.Array | None = None


class GeneratedSet(_GeneratedFields):
    r"""Abstract base: a set generated by ``n`` vectors, known through its Gram matrix.

    A NamedTuple (hence a pytree whose tree structure records the concrete class); the
    concrete families below add no fields, only their ``kind`` and
    their maths (:meth:`support_from_z`, :meth:`sample_value`).

    Attributes:
      gram: ``[n, n]`` Gram matrix :math:`G_{ij} = \langle t_i, t_j\rangle`.
      points: ``[n, D]`` flat generators, or ``None`` when built from a Gram matrix (the
        naive estimator then is unavailable).
    """

    __slots__ = ()
    kind: ClassVar[str] = ""
    is_cone: ClassVar[bool] = False

    def __new__(cls, gram, points=None):  # noqa: D102
        if cls is GeneratedSet:
            raise TypeError("GeneratedSet is abstract; use ConvexHull, Span, ...")
        return super().__new__(cls, gram, points)

    @property
    def num_generators(self) -> int:
        """``n``, the number of generators."""
        return int(self.gram.shape[0])

    @property
    def dim(self) -> int | None:
        """Ambient dimension ``D`` when the generators are kept, else ``None``."""
        return None if self.points is None else int(self.points.shape[1])

    @classmethod
    def from_task_vectors(
        cls,
        task_vectors: TaskVectors,
        *,
        keep_points: bool | None = None,
        precision: Any = "highest",
    ):
        r"""Build the set from task vectors: a pytree, a flat ``[T, D]`` array, or LoRA factors.

        The Gram pass is streamed leaf by leaf (:func:`mergetheory.tree.gram_matrix`);
        :class:`~mergetheory.lora.LoraFactors` nodes (``B [T, d, r]``, ``A [T, r, k]``)
        enter through their factored Gram matrix, ``B A`` never formed. Half-precision
        inputs (float16, bfloat16) are widened to float32.

        Args:
          task_vectors: pytree whose leaves share the leading task axis; any node may be a
            :class:`~mergetheory.lora.LoraFactors`.
          keep_points: keep the flat ``[T, D]`` generators (for the naive estimator).
            ``None`` (default): keep them for dense inputs, not for LoRA factors (they
            would be densified). Set ``False`` for large ``D``: only the ``[T, T]`` Gram
            matrix is kept.
          precision: matmul precision of the Gram pass.

        Returns:
          An instance of ``cls``.

        Example:
          >>> hull = ConvexHull.from_task_vectors({"w": jnp.eye(3)})
        """
        flat, gram = _flatten_generators(task_vectors, cls.__name__, precision, keep_points)
        return cls(gram=gram, points=flat)

    @classmethod
    def from_gram(cls, gram: Gram):
        r"""Build the set from a precomputed ``[n, n]`` Gram matrix (validated).

        Use this with the factored-LoRA or sharded Gram pass; only the fast estimator is
        then available.
        """
        return cls(gram=validate_gram(gram, name=f"{cls.__name__}.from_gram"), points=None)

    def prefix(self, num: int):
        """The same family generated by the first ``num`` generators."""
        if not 1 <= num <= self.num_generators:
            raise ValueError(f"prefix: num={num} not in [1, {self.num_generators}]")
        pts = None if self.points is None else self.points[:num]
        return type(self)(gram=self.gram[:num, :num], points=pts)

    # ---- the set's maths, from z = T g ------------------------------------------------

    def support_from_z(self, z: jax.Array, *, nested: bool = False) -> jax.Array:
        r"""Support function :math:`h_S(g)` from :math:`z = Tg` (cones: of :math:`C\cap B_2`).

        Args:
          z: ``[n]`` inner products of one Gaussian vector with the generators.
          nested: return the ``[n]`` path :math:`m \mapsto h_{S_m}(g)` over the prefix
            sets :math:`S_m` built from the first ``m`` generators.

        Returns:
          scalar, or ``[n]`` when ``nested``.
        """
        raise NotImplementedError

    def subset_support_from_z(self, z: jax.Array, mask: jax.Array) -> jax.Array:
        r"""Support :math:`h_{S_A}(g)` of the set generated by the subset ``mask`` ``[n]``.

        All subsets evaluated on the same ``z`` share their Gaussian draw exactly (common
        random numbers). A hull of the empty subset has support ``-inf``.
        """
        raise NotImplementedError

    # ---- evaluation on Gaussian draws (the width estimators) --------------------------

    def sampling_state(
        self,
        method: str,
        *,
        rank_rtol: float,
        factor: tuple[jax.Array, jax.Array] | None = None,
    ) -> Any:
        """Per-set preprocessing for :meth:`sample_value`, computed once per program.

        ``"fast"``: the factor :math:`(L, d)` of :func:`~mergetheory.linalg.psd_cholesky`
        (``factor`` if given); ``"naive"``: whatever the family needs from its points.
        """
        if method == "fast":
            return psd_cholesky(self.gram) if factor is None else factor
        return None

    def sample_value(
        self,
        x: jax.Array,
        state: Any,
        *,
        method: str,
        nested: bool = False,
        squared: bool = False,
        max_iter: int | None = None,
    ) -> jax.Array:
        r"""Per-draw value: :math:`h_S(g)`, or for cones :math:`\|\Pi_C g\|^2` if ``squared``.

        Args:
          x: one draw: ``[n]`` whitened :math:`h` with :math:`z = Lh` (``"fast"``) or
            ``[D]`` explicit :math:`g` (``"naive"``, needs ``points``).
          state: :meth:`sampling_state` for the same ``method``.
          method: ``"fast"`` or ``"naive"``.
          nested: the ``[n]`` path over the prefix sets.
          squared: the squared projection norm (cones only).
          max_iter: NNLS outer iterations (cones).
        """
        del squared, max_iter
        z = state[0] @ x if method == "fast" else self.points @ x
        return self.support_from_z(z, nested=nested)

    def as_kind(self, kind: str) -> GeneratedSet:
        """The set of family ``kind`` generated by the same vectors."""
        if kind not in SET_KINDS:
            raise ValueError(f"unknown set kind {kind!r}; expected one of {sorted(SET_KINDS)}")
        return SET_KINDS[kind](gram=self.gram, points=self.points)


class ConvexHull(GeneratedSet):
    r"""Convex hull :math:`\mathrm{conv}\{t_1..t_n\}`; :math:`h(g) = \max_i z_i`."""

    __slots__ = ()
    kind: ClassVar[str] = "hull"

    def support_from_z(self, z, *, nested=False):  # noqa: D102
        return _reduce_max(z, nested)

    def subset_support_from_z(self, z, mask):  # noqa: D102
        return jnp.max(jnp.where(mask, z, -jnp.inf))


class ConvexHullWithOrigin(GeneratedSet):
    r"""All weighted-average merges :math:`\mathrm{conv}\{0, t_1..t_n\}`.

    :math:`h(g) = \max(0, \max_i z_i)`; equivalently
    :math:`\{\sum_i\lambda_i t_i : \lambda \ge 0, \sum_i \lambda_i \le 1\}`.
    """

    __slots__ = ()
    kind: ClassVar[str] = "hull0"

    def support_from_z(self, z, *, nested=False):  # noqa: D102
        return jnp.maximum(_reduce_max(z, nested), 0.0)

    def subset_support_from_z(self, z, mask):  # noqa: D102
        return jnp.maximum(jnp.max(jnp.where(mask, z, -jnp.inf)), 0.0)


class PointSet(GeneratedSet):
    r"""A finite point set :math:`\{t_1..t_n\}` (width equals its hull's).

    Built by :func:`~mergetheory.geometry.operator_image` from a merge operator's outputs,
    or directly.
    """

    __slots__ = ()
    kind: ClassVar[str] = "points"

    # the support of a finite set is that of its convex hull
    support_from_z = ConvexHull.support_from_z
    subset_support_from_z = ConvexHull.subset_support_from_z


class Zonotope(GeneratedSet):
    r"""Zonotope :math:`\{\sum_i\lambda_i t_i : \lambda\in[0,1]^n\}`.

    :math:`h(g) = \sum_i \max(0, z_i)`, so :math:`w = \sum_i \|t_i\| / \sqrt{2\pi}` exactly
    (:func:`mergetheory.geometry.closed_forms.zonotope_width`).
    """

    __slots__ = ()
    kind: ClassVar[str] = "zonotope"

    def support_from_z(self, z, *, nested=False):  # noqa: D102
        return _reduce_sum(jnp.maximum(z, 0.0), nested)

    def subset_support_from_z(self, z, mask):  # noqa: D102
        return jnp.sum(mask.astype(z.dtype) * jnp.maximum(z, 0.0))


class Ellipsoid(GeneratedSet):
    r"""Ellipsoid :math:`\{T^\top u : \|u\|_2 \le 1\}` generated by the rows of ``T``.

    :math:`h(g) = \|Tg\|_2 = \|z\|_2`. With orthonormal axes :math:`U` and semi-axes
    :math:`a`, ``T = diag(a) U`` and :math:`G = \mathrm{diag}(a^2)`
    (:meth:`from_semi_axes`).
    """

    __slots__ = ()
    kind: ClassVar[str] = "ellipsoid"

    def support_from_z(self, z, *, nested=False):  # noqa: D102
        return jnp.sqrt(_reduce_sum(z * z, nested))

    def subset_support_from_z(self, z, mask):  # noqa: D102
        return jnp.sqrt(jnp.sum(mask.astype(z.dtype) * z * z))

    @classmethod
    def from_semi_axes(cls, semi_axes: Any, axes: Any | None = None) -> Ellipsoid:
        r"""Ellipsoid with semi-axes ``a`` ``[k]`` along orthonormal ``axes`` ``[k, D]``.

        Without ``axes`` the ellipsoid lives in :math:`\mathbb{R}^k` with coordinate axes.
        E.g. a Hessian sublevel set :math:`\{\Delta: \tfrac12\Delta^\top H\Delta\le\epsilon\}`
        has :math:`a_j = \sqrt{2\epsilon/\lambda_j}` (Sources S3, candidate 4).
        """
        concrete = is_concrete(semi_axes) and (axes is None or is_concrete(axes))
        xp = np if concrete else jnp  # host-side construction: no eager compiles
        a = xp.asarray(semi_axes)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"from_semi_axes: semi_axes must be [k], got shape {a.shape}")
        if concrete and not bool(np.all(np.isfinite(a) & (a >= 0))):
            raise ValueError("from_semi_axes: semi_axes must be finite and >= 0")
        if axes is None:
            pts = xp.diag(a)
        else:
            u = xp.asarray(axes)
            if u.ndim != 2 or u.shape[0] != a.shape[0]:
                raise ValueError(f"from_semi_axes: axes must be [k={a.shape[0]}, D], got {u.shape}")
            pts = a[:, None] * u
        return cls.from_task_vectors(pts)


class GeneratedCone(GeneratedSet):
    r"""Abstract base of the generated cones (``Span``, ``PolyhedralCone``).

    A cone owns its squared projection norm :math:`\|\Pi_C g\|^2` from
    :math:`z = Tg` (:meth:`projection_sq_from_z`); its support is that of
    :math:`C \cap B_2`, :math:`\|\Pi_C g\|`.
    """

    __slots__ = ()
    is_cone: ClassVar[bool] = True

    def projection_sq_from_z(
        self,
        z: jax.Array,
        *,
        mask: jax.Array | None = None,
        rank_rtol: float | None = None,
        max_iter: int | None = None,
    ) -> jax.Array:
        r""":math:`\|\Pi_C g\|^2` from :math:`z = Tg` (``mask``: of the subset's cone)."""
        raise NotImplementedError

    def support_from_z(self, z, *, nested=False):  # noqa: D102
        if nested:
            masks = prefix_masks(z.shape[0])
            sq = jax.vmap(lambda m: self.projection_sq_from_z(z, mask=m))(masks)
        else:
            sq = self.projection_sq_from_z(z)
        return jnp.sqrt(jnp.maximum(sq, 0.0))

    def subset_support_from_z(self, z, mask):  # noqa: D102
        return jnp.sqrt(jnp.maximum(self.projection_sq_from_z(z, mask=mask), 0.0))

    def _masked(self, z: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        if mask is None:
            return self.gram, z
        m = mask.astype(z.dtype)
        return self.gram * m[:, None] * m[None, :], z * m


class Span(GeneratedCone):
    r"""The linear span :math:`L = \mathrm{span}\{t_i\}` (a cone).

    Gaussian width is that of :math:`L\cap B_2`: :math:`\mathbb{E}\|P_L g\| =
    \mathbb{E}\sqrt{z^\top G^+ z} = \mathbb{E}\chi_r`, :math:`r = \mathrm{rank}\,G`;
    statistical dimension :math:`\delta(L) = r`.
    """

    __slots__ = ()
    kind: ClassVar[str] = "span"

    def projection_sq_from_z(self, z, *, mask=None, rank_rtol=None, max_iter=None):
        r""":math:`z^\top G^+ z` (pseudo-inverse cut at ``rank_rtol``, default
        :func:`~mergetheory.linalg.default_rank_rtol`)."""
        del max_iter
        gm, zm = self._masked(z, mask)
        rtol = default_rank_rtol(z.dtype) if rank_rtol is None else rank_rtol
        return zm @ jnp.linalg.pinv(gm, rtol=rtol, hermitian=True) @ zm

    def sampling_state(self, method, *, rank_rtol, factor=None):
        r"""``"fast"``: ``(L, pivot mask)``, :math:`\|Pg\|^2 = \sum_{j\ \mathrm{pivot}} h_j^2`;
        ``"naive"``: the Gram–Schmidt basis of the prefix spans."""
        if method == "fast":
            lower, pivots = psd_cholesky(self.gram) if factor is None else factor
            return lower, span_pivot_mask(self.gram, pivots, rank_rtol).astype(self.gram.dtype)
        return gram_schmidt_rows(self.points, rank_rtol)

    def sample_value(self, x, state, *, method, nested=False, squared=False, max_iter=None):  # noqa: D102
        del max_iter
        if method == "fast":
            q = state[1] * x * x
        else:
            q = state @ x
            q = q * q
        sq = _reduce_sum(q, nested)
        return sq if squared else jnp.sqrt(sq)


class PolyhedralCone(GeneratedCone):
    r"""Polyhedral cone :math:`C = \{T^\top\lambda : \lambda \ge 0\}` of the generators.

    Gaussian width is that of :math:`C \cap B_2`, :math:`\mathbb{E}\|\Pi_C g\|`;
    statistical dimension :math:`\delta(C) = \mathbb{E}\|\Pi_C g\|^2`. The projection is
    the NNLS problem :func:`~mergetheory.linalg.nnls_gram` in ``n`` coordinates.
    """

    __slots__ = ()
    kind: ClassVar[str] = "cone"

    def projection_sq_from_z(self, z, *, mask=None, rank_rtol=None, max_iter=None):
        r""":math:`\max_{\lambda\ge0} 2\lambda^\top z - \lambda^\top G\lambda` (NaN if the
        NNLS did not converge; :func:`~mergetheory.linalg.cone_projection_sq_norm`)."""
        gm, zm = self._masked(z, mask)
        return cone_projection_sq_norm(gm, zm, max_iter=max_iter, rtol=rank_rtol)[0]

    def sampling_state(self, method, *, rank_rtol, factor=None):
        """``"fast"``: the factor; ``"naive"``: the Gram matrix of the explicit points."""
        if method == "fast":
            return super().sampling_state(method, rank_rtol=rank_rtol, factor=factor)
        return self.points @ self.points.T

    def sample_value(self, x, state, *, method, nested=False, squared=False, max_iter=None):  # noqa: D102
        n = self.gram.shape[0]
        if method == "fast":
            z = state[0] @ x
            if not nested:
                sq = cone_projection_sq_norm(self.gram, z, max_iter=max_iter)[0]
            else:
                masks = prefix_masks(n).astype(z.dtype)
                sq = jax.vmap(
                    lambda m: cone_projection_sq_norm(
                        self.gram * m[:, None] * m[None, :], z * m, max_iter=max_iter
                    )[0]
                )(masks)
        else:
            # the same active-set solver on <t_i, t_j> and <t_i, g> formed from the
            # explicit vectors, with the projection T^T lambda built in R^D
            points = self.points
            z = points @ x

            def one(m):
                sub = state * m[:, None] * m[None, :]
                lam, converged = nnls_gram(sub, z * m, max_iter=max_iter, return_converged=True)
                proj = points.T @ lam
                return jnp.where(converged, jnp.dot(proj, proj), jnp.nan)  # NaN: raise later

            if not nested:
                sq = one(jnp.ones((n,), points.dtype))
            else:
                sq = jax.vmap(one)(prefix_masks(n).astype(points.dtype))
        return sq if squared else jnp.sqrt(sq)


SET_KINDS: dict[str, type[GeneratedSet]] = {
    cls.kind: cls
    for cls in (
        ConvexHull,
        ConvexHullWithOrigin,
        PointSet,
        Zonotope,
        Ellipsoid,
        Span,
        PolyhedralCone,
    )
}
"""Generated-set families by ``kind`` name."""


def make_set(kind: str, generators: Any, *, keep_points: bool | None = None) -> GeneratedSet:
    """Build a generated set of family ``kind`` (see :data:`SET_KINDS`).

    Args:
      kind: ``"hull"``, ``"hull0"``, ``"points"``, ``"zonotope"``, ``"ellipsoid"``,
        ``"span"`` or ``"cone"``.
      generators: task-vector pytree ``[T, ...]``, flat ``[T, D]`` array, pytree of
        :class:`~mergetheory.lora.LoraFactors`, or an existing :class:`GeneratedSet`
        (its Gram matrix and points are reused).
      keep_points: keep flat generators for the naive estimator (``None``: for dense
        inputs only; see :meth:`GeneratedSet.from_task_vectors`).

    Example:
      >>> cone = make_set("cone", jnp.eye(4))
    """
    if kind not in SET_KINDS:
        raise ValueError(f"unknown set kind {kind!r}; expected one of {sorted(SET_KINDS)}")
    if isinstance(generators, GeneratedSet):
        return generators.as_kind(kind)
    if isinstance(generators, ReferenceSet):
        raise TypeError("make_set: reference sets have no generators")
    return SET_KINDS[kind].from_task_vectors(generators, keep_points=keep_points)
