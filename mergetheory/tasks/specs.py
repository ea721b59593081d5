r"""Task-vector specs: one ``*Spec`` NamedTuple per family, their closed forms, validation.

A spec says *what* to sample (:func:`mergetheory.tasks.sample_task_vectors` says how):

* :class:`GaussianSpec`: :math:`\tau_t \sim N(0, \sigma^2 I_D)` i.i.d.;
* :class:`CorrelatedSpec`: :math:`\tau_t = \sqrt{\rho}\, c + \sqrt{1-\rho}\,
  \varepsilon_t` with :math:`c, \varepsilon_t \sim N(0, \sigma^2 I_D)`;
* :class:`SparseSpec`: :math:`\tau_t = m_t \odot g_t`, support masks with
  :math:`P(m_{tp} = 1) = f` (coupled across tasks by ``overlap``), values
  :math:`N(0, \sigma^2/f)`;
* :class:`HeavyTailedSpec`: i.i.d. Student-t entries with ``nu`` degrees of freedom;
* :class:`SignConflictSpec`: :math:`\tau_t = s \odot |g_t| \odot (1 - 2 F_t)`, a shared
  sign pattern ``s`` flipped with probability ``q``: :math:`F_{tp} \sim
  \mathrm{Bernoulli}(q)`;
* :class:`LoRASpec`: factored experts :math:`\Delta W_t = (\alpha/r) B_t A_t` per 2-D leaf.

(``D`` = total number of coordinates of one task vector, summed over leaves;
:math:`\sigma = \text{norm}/\sqrt{D}`.)

**Norm convention.** Every family is scaled so that :math:`E\|\tau_t\|_2^2 = \text{norm}^2`
for the *whole-tree* norm of each task vector, i.e. ``norm`` is the root-mean-square norm
(for :class:`HeavyTailedSpec` with ``nu <= 2``, where the variance is infinite, ``norm`` is
a scale parameter instead). With ``exact_norm=True`` (dense families) each task vector is
afterwards rescaled to have whole-tree norm exactly ``norm``; this rescaling by a positive
per-task factor leaves directions, signs, supports and pairwise cosines unchanged.

Spec fields that set shapes or control flow (:data:`STATIC_FIELDS`: ``num_tasks``,
``rank``, ``exact_norm``) are static; all continuous fields (``rho``, ``norm``,
``fraction``, ...) are traced. :func:`validate_spec` checks ranges on concrete values
only, so a spec built inside ``jit`` / ``vmap`` from traced values is fine.
:func:`shape_tree` normalises the pytree of leaf shapes a set is drawn for.

Reference: the families model the properties that ``ilharco2023editing`` (task
arithmetic), ``yadav2023ties`` (sign conflicts, sparsity) and ``hu2022lora`` (LoRA)
discuss; keys for ``paper/refs.bib``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.tree_util as jtu
import numpy as np

__all__ = [
    "FAMILIES",
    "STATIC_FIELDS",
    "CorrelatedSpec",
    "GaussianSpec",
    "HeavyTailedSpec",
    "LoRASpec",
    "SignConflictSpec",
    "SparseSpec",
    "TaskSpec",
    "expected_sign_agreement",
    "expected_sign_conflict",
    "expected_support_overlap",
    "family_spec",
    "shape_tree",
    "validate_spec",
]


# --------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------


class GaussianSpec(NamedTuple):
    r"""Isotropic Gaussian task vectors: :math:`\tau_t \sim N(0, (\text{norm}^2/D) I_D)`.

    Independent across tasks, so :math:`E\langle\tau_i,\tau_j\rangle = 0` for
    :math:`i \ne j` and :math:`E\|\tau_t\|^2 = \text{norm}^2`. With ``exact_norm`` the
    direction is uniform on the sphere and :math:`\|\tau_t\| = \text{norm}` exactly.

    Attributes:
      num_tasks: ``T`` (static).
      norm: root-mean-square whole-tree norm of one task vector (traced).
      exact_norm: rescale every task vector to norm exactly ``norm`` (static).
    """

    num_tasks: int
    norm: float = 1.0
    exact_norm: bool = False


class CorrelatedSpec(NamedTuple):
    r"""Task vectors with a shared component: equicorrelated Gaussians.

    .. math::

       \tau_t = \sqrt{\rho}\, c + \sqrt{1 - \rho}\, \varepsilon_t, \qquad
       c, \varepsilon_1, \dots, \varepsilon_T \overset{iid}{\sim} N(0, \sigma^2 I_D),
       \quad \sigma^2 = \text{norm}^2 / D,

    so every coordinate pair has :math:`\mathrm{corr}(\tau_{ip}, \tau_{jp}) = \rho` for
    :math:`i \ne j`, :math:`E\|\tau_t\|^2 = \text{norm}^2` and the pairwise cosine
    :math:`\cos(\tau_i, \tau_j) \to \rho` as :math:`D \to \infty` (fluctuation
    :math:`O(1/\sqrt{D})`). ``rho = 0`` is :class:`GaussianSpec`; ``rho = 1`` makes all
    task vectors equal.

    Attributes:
      num_tasks: ``T`` (static).
      rho: pairwise correlation in ``[0, 1]`` (traced).
      norm: root-mean-square whole-tree norm of one task vector (traced).
      exact_norm: rescale every task vector to norm exactly ``norm`` (static); cosines
        are unchanged.
    """

    num_tasks: int
    rho: float
    norm: float = 1.0
    exact_norm: bool = False


class SparseSpec(NamedTuple):
    r"""Sparse task vectors with a random support of expected fraction ``fraction``.

    Coordinate ``p`` is in the support of task ``t`` with probability ``f = fraction``.
    Supports are coupled through ``overlap`` ``= o``: for each coordinate a shared coin
    :math:`Z_p \sim \mathrm{Bernoulli}(o)` decides whether membership is *shared*
    (all tasks use one coin :math:`S_p \sim \mathrm{Bernoulli}(f)`) or *independent*
    (each task its own :math:`S_{tp} \sim \mathrm{Bernoulli}(f)`). Hence

    * :math:`P(p \in \mathrm{supp}\,\tau_t) = f` (the support size is Binomial, its
      fraction is ``f`` in expectation),
    * :math:`P(p \in \mathrm{supp}\,\tau_i \cap \mathrm{supp}\,\tau_j) = o f + (1 - o) f^2`
      (see :func:`expected_support_overlap`),
    * the correlation of the two membership indicators is exactly ``o``:
      ``o = 0`` independent supports, ``o = 1`` one common support.

    Values on the support are i.i.d. :math:`N(0, \text{norm}^2 / (f D))`, independent
    across tasks, so :math:`E\|\tau_t\|^2 = \text{norm}^2`.

    Attributes:
      num_tasks: ``T`` (static).
      fraction: expected support fraction ``f`` in ``(0, 1]`` (traced).
      overlap: support coupling ``o`` in ``[0, 1]`` (traced).
      norm: root-mean-square whole-tree norm (traced).
      exact_norm: rescale every task vector to norm exactly ``norm`` (static).
    """

    num_tasks: int
    fraction: float
    overlap: float = 0.0
    norm: float = 1.0
    exact_norm: bool = False


class HeavyTailedSpec(NamedTuple):
    r"""I.i.d. heavy-tailed entries: Student-t with ``nu`` degrees of freedom.

    Entries are :math:`\tau_{tp} = \sigma\, \kappa_\nu X_{tp}`, :math:`X \sim t_\nu`,
    :math:`\sigma = \text{norm}/\sqrt{D}`, with

    * ``nu > 2``: :math:`\kappa_\nu = \sqrt{(\nu - 2)/\nu}`, so :math:`\mathrm{Var}\,
      \tau_{tp} = \sigma^2` and :math:`E\|\tau_t\|^2 = \text{norm}^2`; the tail index is
      ``nu`` (:math:`P(|X| > x) \sim C x^{-\nu}`);
    * ``0 < nu <= 2``: the variance is infinite; :math:`\kappa_\nu = 1`, so :math:`\sigma`
      is the scale of a standard :math:`t_\nu` (``nu = 1`` is Cauchy with scale
      :math:`\sigma`: the median of :math:`|\tau_{tp}|` is :math:`\sigma`) and ``norm``
      is a scale parameter, not an expected norm.

    Attributes:
      num_tasks: ``T`` (static).
      nu: degrees of freedom / tail index, ``> 0`` (traced).
      norm: root-mean-square norm for ``nu > 2``, scale otherwise (traced).
      exact_norm: rescale every task vector to norm exactly ``norm`` (static).
    """

    num_tasks: int
    nu: float
    norm: float = 1.0
    exact_norm: bool = False


class SignConflictSpec(NamedTuple):
    r"""Task vectors whose signs disagree with a shared sign pattern at rate ``flip_prob``.

    .. math::

       \tau_{tp} = s_p\, |g_{tp}|\, (1 - 2 F_{tp}), \qquad
       s_p \sim \mathrm{Rademacher},\ g_{tp} \sim N(0, \sigma^2),\
       F_{tp} \sim \mathrm{Bernoulli}(q),

    all independent, :math:`\sigma^2 = \text{norm}^2 / D`. Expert ``t`` disagrees with the
    shared pattern on a fraction ``q`` of coordinates (in expectation), and two experts
    agree in sign with probability :math:`(1-q)^2 + q^2 = 1 - 2q(1-q)`
    (:func:`expected_sign_agreement`): 1 at ``q = 0``, 1/2 at ``q = 1/2`` (independent
    signs). Magnitudes are independent of signs, and :math:`E\|\tau_t\|^2 =
    \text{norm}^2`.

    Attributes:
      num_tasks: ``T`` (static).
      flip_prob: ``q`` in ``[0, 1]`` (traced).
      norm: root-mean-square whole-tree norm (traced).
      exact_norm: rescale every task vector to norm exactly ``norm`` (static).
    """

    num_tasks: int
    flip_prob: float
    norm: float = 1.0
    exact_norm: bool = False


class LoRASpec(NamedTuple):
    r"""Factored LoRA experts on every 2-D leaf: :math:`\Delta W_t = (\alpha / r) B_t A_t`.

    For a leaf of shape ``(d, k)`` the sample is a
    :class:`mergetheory.lora.LoraFactors` ``(B [T, d, r], A [T, r, k], scaling [T])``
    with PEFT's scaling :math:`s = \alpha / r` (``lora_alpha / r``; default
    ``alpha = r``, i.e. ``s = 1``) stored per expert. Entries of ``B`` and ``A`` are
    i.i.d. :math:`N(0, v)` with :math:`v^2 = \text{norm}^2 / (s^2 r D_2)`, where
    :math:`D_2` is the total size of the 2-D leaves, so that
    :math:`E\sum_{\text{leaves}}\|s B_t A_t\|_F^2 = \text{norm}^2` (in expectation only).
    ``(d, k)`` is the leaf's own shape, so ``B @ A`` has the shape of the leaf (PEFT's
    ``[out, in]`` for torch weights, ``[in, out]`` for Flax kernels). Leaves that are not
    2-D (biases, conv kernels) get ``None`` (no adapter). Use
    :func:`mergetheory.lora.densify` to form the dense ``[T, d, k]`` updates.

    Attributes:
      num_tasks: ``T`` (static).
      rank: LoRA rank ``r`` (static).
      alpha: PEFT ``lora_alpha``; ``None`` means ``alpha = rank`` (traced).
      norm: root-mean-square norm of the dense update (traced).
    """

    num_tasks: int
    rank: int
    alpha: float | None = None
    norm: float = 1.0


TaskSpec = (
    GaussianSpec | CorrelatedSpec | SparseSpec | HeavyTailedSpec | SignConflictSpec | LoRASpec
)
"""Any of the sampler specs."""

STATIC_FIELDS = ("num_tasks", "rank", "exact_norm")
"""Spec fields that set shapes or control flow: static under ``jit`` (the rest are traced)."""


# --------------------------------------------------------------------------------------
# closed-form helpers
# --------------------------------------------------------------------------------------


def expected_sign_agreement(flip_prob: Any) -> Any:
    r"""Probability that two experts of a :class:`SignConflictSpec` agree in sign.

    :math:`P(\mathrm{sgn}\,\tau_{ip} = \mathrm{sgn}\,\tau_{jp}) = (1-q)^2 + q^2 = 1 - 2q(1-q)`.
    """
    return 1.0 - 2.0 * flip_prob * (1.0 - flip_prob)


def expected_sign_conflict(num_tasks: Any, rho: Any) -> Any:
    r"""Expected sign-conflict rate of a :class:`CorrelatedSpec` set (``exact_norm=False``).

    Each coordinate of :math:`(\tau_1, \dots, \tau_T)` is equicorrelated Gaussian, so
    :math:`\mathrm{corr}(\tau_{tp}, \sum_s \tau_{sp}) = \sqrt{(1 + (T-1)\rho)/T}` and by
    Sheppard's formula the probability that an expert's sign differs from the elected
    sign :math:`\mathrm{sgn}\sum_s \tau_{sp}` (the rate measured by
    :func:`mergetheory.diagnostics.sign_conflict`) is

    .. math:: P = \frac{1}{\pi} \arccos \sqrt{\frac{1 + (T - 1)\rho}{T}},

    e.g. 1/4 for two independent experts, 0 at :math:`\rho = 1`, and
    :math:`\to \arccos(\sqrt{\rho})/\pi` as :math:`T \to \infty`.

    Args:
      num_tasks: ``T`` (scalar or array).
      rho: correlation (scalar or array, broadcast against ``num_tasks``).

    Returns:
      The expected rate, as a NumPy value.
    """
    t = np.asarray(num_tasks, dtype=np.float64)
    r = np.asarray(rho, dtype=np.float64)
    return np.arccos(np.sqrt(np.clip((1.0 + (t - 1.0) * r) / t, 0.0, 1.0))) / np.pi


def expected_support_overlap(fraction: Any, overlap: Any) -> Any:
    r"""Expected fraction of coordinates in the support of two tasks of a :class:`SparseSpec`.

    :math:`P(p \in \mathrm{supp}\,\tau_i \cap \mathrm{supp}\,\tau_j) = o f + (1 - o) f^2`.
    """
    return overlap * fraction + (1.0 - overlap) * fraction * fraction


# --------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_shape_leaf(x: Any) -> bool:
    if isinstance(x, tuple):
        return all(_is_int(i) for i in x)
    return hasattr(x, "shape") and hasattr(x, "dtype")


def shape_tree(shapes: Any) -> tuple[list[tuple[int, ...]], Any]:
    """Normalise a pytree of leaf shapes to ``(list of int tuples, treedef)``.

    A leaf is a tuple of ints (``(64, 32)``; ``()`` for a scalar), or anything with
    ``.shape`` and ``.dtype`` (``jax.ShapeDtypeStruct``, arrays). Tuples that contain
    non-ints are containers. Bare ints are rejected (write ``(64,)``).

    Args:
      shapes: the pytree of shapes.

    Returns:
      ``(leaf_shapes, treedef)`` with ``leaf_shapes`` in flatten order.

    Raises:
      ValueError: for bare-int / unknown leaves or negative dimensions, naming the path.
    """
    flat, treedef = jtu.tree_flatten_with_path(shapes, is_leaf=_is_shape_leaf)
    out = []
    for path, leaf in flat:
        where = jtu.keystr(tuple(path)) or "<root>"
        if isinstance(leaf, tuple):
            shape = tuple(int(i) for i in leaf)
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            shape = tuple(int(i) for i in leaf.shape)
        elif _is_int(leaf):
            raise ValueError(
                f"shapes{where}: got the bare int {leaf}; give every leaf shape as a tuple "
                f"of ints, e.g. ({leaf},) (a list of ints is read as a container)"
            )
        else:
            raise ValueError(
                f"shapes{where}: leaf of type {type(leaf).__name__} is not a shape; expected "
                "a tuple of ints, a jax.ShapeDtypeStruct or an array"
            )
        if any(d < 0 for d in shape):
            raise ValueError(f"shapes{where}: negative dimension in {shape}")
        out.append(shape)
    if not out:
        raise ValueError("shapes: the pytree has no leaves")
    return out, treedef


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _concrete_float(x: Any) -> float | None:
    """``float(x)`` for concrete scalars, None for tracers (checked at eager entry only)."""
    if isinstance(x, jax.core.Tracer):
        return None
    arr = np.asarray(x)
    if arr.shape != ():
        raise ValueError(f"expected a scalar, got an array of shape {arr.shape}")
    return float(arr)


def _check_range(spec: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> None:
    val = _concrete_float(getattr(spec, name))
    if val is None:
        return
    ok = (lo < val if lo_open else lo <= val) and val <= hi
    if not ok:  # also catches NaN
        lb = "(" if lo_open else "["
        raise ValueError(f"{type(spec).__name__}.{name} must lie in {lb}{lo}, {hi}], got {val}")


def validate_spec(spec: Any) -> None:
    """Check a spec's type and the ranges of its concrete fields (tracers are skipped).

    Raises:
      TypeError: for an unknown spec type.
      ValueError: naming the spec field and its allowed range.
    """
    name = type(spec).__name__
    if not isinstance(
        spec,
        GaussianSpec | CorrelatedSpec | SparseSpec | HeavyTailedSpec | SignConflictSpec | LoRASpec,
    ):
        raise TypeError(
            f"unknown spec type {name}; expected one of GaussianSpec, CorrelatedSpec, "
            "SparseSpec, HeavyTailedSpec, SignConflictSpec, LoRASpec"
        )
    if not _is_int(spec.num_tasks) or spec.num_tasks < 1:
        raise ValueError(f"{name}.num_tasks must be a Python int >= 1, got {spec.num_tasks!r}")
    if hasattr(spec, "exact_norm") and not isinstance(spec.exact_norm, bool | np.bool_):
        raise ValueError(f"{name}.exact_norm must be a Python bool, got {spec.exact_norm!r}")
    _check_range(spec, "norm", 0.0, math.inf)
    if isinstance(spec, CorrelatedSpec):
        _check_range(spec, "rho", 0.0, 1.0)
    elif isinstance(spec, SparseSpec):
        _check_range(spec, "fraction", 0.0, 1.0, lo_open=True)
        _check_range(spec, "overlap", 0.0, 1.0)
    elif isinstance(spec, HeavyTailedSpec):
        _check_range(spec, "nu", 0.0, math.inf, lo_open=True)
    elif isinstance(spec, SignConflictSpec):
        _check_range(spec, "flip_prob", 0.0, 1.0)
    elif isinstance(spec, LoRASpec):
        if not _is_int(spec.rank) or spec.rank < 1:
            raise ValueError(f"LoRASpec.rank must be a Python int >= 1, got {spec.rank!r}")
        if spec.alpha is not None:
            _check_range(spec, "alpha", 0.0, math.inf, lo_open=True)


# --------------------------------------------------------------------------------------
# by family name
# --------------------------------------------------------------------------------------


FAMILIES = ("gaussian", "correlated", "sparse", "heavy", "lora")
"""Sampler families by name, as experiments and their configs spell them."""


def family_spec(family: str, param: Any, num: int, *, exact_norm: bool = False) -> TaskSpec:
    """The spec of a sampler family by name: one place for experiments' ``(family, param)``.

    Args:
      family: one of :data:`FAMILIES`: ``"gaussian"`` (``param`` ignored),
        ``"correlated"`` (``param`` = ``rho``), ``"sparse"`` (``fraction``), ``"heavy"``
        (``nu``), ``"lora"`` (``rank``).
      param: the family's parameter.
      num: number of tasks ``T``.
      exact_norm: rescale every dense task vector to unit norm (ignored for ``"lora"``).

    Returns:
      The spec, to pass to :func:`sample_task_vectors`.

    Example:
      >>> family_spec("correlated", 0.5, 4)
      CorrelatedSpec(num_tasks=4, rho=0.5, exact_norm=False)
    """
    if family == "gaussian":
        return GaussianSpec(num, exact_norm=exact_norm)
    if family == "correlated":
        return CorrelatedSpec(num, float(param), exact_norm=exact_norm)
    if family == "sparse":
        return SparseSpec(num, float(param), exact_norm=exact_norm)
    if family == "heavy":
        return HeavyTailedSpec(num, float(param), exact_norm=exact_norm)
    if family == "lora":
        return LoRASpec(num, int(param))
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
