r"""Reference sets in :math:`\mathbb{R}^D` with explicit support functions.

:class:`L1Ball`, :class:`L2Ball`, :class:`LinfBall`, :class:`NonnegativeOrthant` and
:class:`CircularCone` own their support function :math:`h(g)` (and, for cones, the
squared projection norm :math:`\|\Pi_C g\|^2`) on an explicit Gaussian vector
:math:`g \in \mathbb{R}^D`. Their widths are known in closed form
(:mod:`mergetheory.geometry.closed_forms`), so they serve as oracles for the naive
Monte Carlo path. They are NamedTuples of Python scalars, hashable, and the estimators
treat them as static (so ``dim`` may set shapes).

Example:
  >>> L2Ball(3).support(jnp.array([3.0, 4.0, 0.0]))   # 5.0

References (``paper/refs.bib``): Amelunxen, Lotz, McCoy, Tropp 2014 (section 3.4, circular
cones); Vershynin 2018 (HDP, ch. 7).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CircularCone",
    "L1Ball",
    "L2Ball",
    "LinfBall",
    "NonnegativeOrthant",
    "ReferenceSet",
]


class ReferenceSet:
    r"""Mixin for sets in :math:`\mathbb{R}^D` with an explicit support function.

    The concrete reference sets are NamedTuples of Python scalars (``dim`` first); the
    estimators treat them as static (they are hashable), so ``dim`` may set shapes. They
    serve as oracles for the naive estimator.
    """

    __slots__ = ()
    is_cone: ClassVar[bool] = False

    # equal only to the same class: L1Ball(3) and LinfBall(3) are equal tuples, and the
    # estimators' compiled programs are cached on the (static) reference set
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self), tuple(self)))

    def support(self, g: jax.Array) -> jax.Array:
        r"""Support function :math:`h(g) = \sup_{t} \langle g, t\rangle`.

        For cones, that of :math:`C\cap B_2`, i.e. :math:`\|\Pi_C g\|`.
        """
        raise NotImplementedError

    def projection_sq_norm(self, g: jax.Array) -> jax.Array:
        r""":math:`\|\Pi_C g\|^2` (cones only)."""
        raise TypeError(f"{type(self).__name__} is not a cone")


def _check_dim(name: str, dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"{name}: dim must be an int >= 1, got {dim!r}")
    return int(dim)


def _check_radius(name: str, radius: Any) -> float:
    r = float(radius)
    if not (np.isfinite(r) and r >= 0):
        raise ValueError(f"{name}: radius must be finite and >= 0, got {radius!r}")
    return r


class _BallFields(NamedTuple):
    dim: int
    radius: float = 1.0


class _Ball(ReferenceSet, _BallFields):
    """A norm ball ``(dim, radius)`` with checked fields; subclasses give the support."""

    __slots__ = ()

    def __new__(cls, dim: int, radius: float = 1.0):  # noqa: D102
        return _BallFields.__new__(
            cls, _check_dim(cls.__name__, dim), _check_radius(cls.__name__, radius)
        )


class L2Ball(_Ball):
    r"""Euclidean ball of radius ``radius`` in :math:`\mathbb{R}^D`: :math:`h(g) = r\|g\|_2`."""

    __slots__ = ()

    def support(self, g):  # noqa: D102
        return self.radius * jnp.sqrt(jnp.sum(g * g))


class L1Ball(_Ball):
    r"""Cross-polytope :math:`\{\|t\|_1 \le r\}`: :math:`h(g) = r\|g\|_\infty`."""

    __slots__ = ()

    def support(self, g):  # noqa: D102
        return self.radius * jnp.max(jnp.abs(g))


class LinfBall(_Ball):
    r"""Cube :math:`\{\|t\|_\infty \le r\}`: :math:`h(g) = r\|g\|_1`."""

    __slots__ = ()

    def support(self, g):  # noqa: D102
        return self.radius * jnp.sum(jnp.abs(g))


class _DimFields(NamedTuple):
    dim: int


class NonnegativeOrthant(ReferenceSet, _DimFields):
    r"""The orthant :math:`\mathbb{R}^D_+`: :math:`\Pi(g) = g_+`, :math:`\delta = D/2`."""

    __slots__ = ()
    is_cone: ClassVar[bool] = True

    def __new__(cls, dim: int):  # noqa: D102
        return _DimFields.__new__(cls, _check_dim(cls.__name__, dim))

    def projection_sq_norm(self, g):  # noqa: D102
        gp = jnp.maximum(g, 0.0)
        return jnp.sum(gp * gp)

    def support(self, g):  # noqa: D102
        return jnp.sqrt(self.projection_sq_norm(g))


class _ConeFields(NamedTuple):
    dim: int
    angle: float = float(np.pi / 4)


class CircularCone(ReferenceSet, _ConeFields):
    r"""Circular cone :math:`\{x : x_1 \ge \|x\|\cos\alpha\}` of half-angle ``angle``.

    ALMT 2014, section 3.4. With :math:`r = \|x_{2:D}\|`, the projection has norm
    :math:`\|x\|` inside the cone and :math:`\max(0, x_1\cos\alpha + r\sin\alpha)` outside.
    """

    __slots__ = ()
    is_cone: ClassVar[bool] = True

    def __new__(cls, dim: int, angle: float = float(np.pi / 4)):  # noqa: D102
        a = float(angle)
        if not 0.0 <= a <= np.pi / 2:
            raise ValueError(f"CircularCone: angle must be in [0, pi/2], got {angle!r}")
        return _ConeFields.__new__(cls, _check_dim(cls.__name__, dim), a)

    def projection_sq_norm(self, g):  # noqa: D102
        x1 = g[0]
        r = jnp.sqrt(jnp.sum(g[1:] * g[1:]))
        nrm2 = x1 * x1 + r * r
        c, s = float(np.cos(self.angle)), float(np.sin(self.angle))
        inside = x1 >= jnp.sqrt(nrm2) * c
        edge = jnp.maximum(x1 * c + r * s, 0.0)
        return jnp.where(inside, nrm2, edge * edge)

    def support(self, g):  # noqa: D102
        return jnp.sqrt(self.projection_sq_norm(g))
