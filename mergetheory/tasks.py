r"""Synthetic task-vector samplers: one ``*Spec`` NamedTuple per family, one entry point.

:func:`sample_task_vectors` ``(key, spec, shapes, dtype)`` draws a task-vector set, i.e. a
pytree with the structure of ``shapes`` whose every leaf has a leading task axis
``[T, ...]`` (docs/). ``shapes`` is any pytree of leaf shapes: tuples of
ints (``{"w": (64, 32), "b": (32,)}``), ``jax.ShapeDtypeStruct`` leaves (the output of
``jax.eval_shape(model.init, ...)`` for a Flax model) or arrays (their shape is used).

Families (``D`` = total number of coordinates of one task vector, summed over leaves;
:math:`\sigma = \text{norm}/\sqrt{D}`):

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

**Norm convention.** Every family is scaled so that :math:`E\|\tau_t\|_2^2 = \text{norm}^2`
for the *whole-tree* norm of each task vector, i.e. ``norm`` is the root-mean-square norm
(for :class:`HeavyTailedSpec` with ``nu <= 2``, where the variance is infinite, ``norm`` is
a scale parameter instead). With ``exact_norm=True`` (dense families) each task vector is
afterwards rescaled to have whole-tree norm exactly ``norm``; this rescaling by a positive
per-task factor leaves directions, signs, supports and pairwise cosines unchanged.

**Transformations.** Spec fields that set shapes or control flow (``num_tasks``,
``rank``, ``exact_norm``) are static; all continuous fields (``rho``, ``norm``,
``fraction``, ...) are traced, so a sweep over ``rho`` is a ``vmap``::

    jax.vmap(lambda r: sample_task_vectors(key, CorrelatedSpec(8, r), shapes))(rhos)

and building a spec inside ``jit`` / ``vmap`` from traced values is fine (range checks run
only on concrete values). The samplers are jitted once per (family, static fields, leaf
shapes, dtype); changing a continuous field does not retrace.

Randomness: dense families draw on the flat ``[T, D]`` layout (leaves concatenated in
flatten order) with a constant number of RNG calls and cut the result into leaves, so the
sample depends on the key, the spec and the leaf shapes in flatten order; compile time
does not grow with the number of leaves. :class:`LoRASpec` also draws all factors at once.

Reference: the families model the properties that ``ilharco2023editing`` (task
arithmetic), ``yadav2023ties`` (sign conflicts, sparsity) and ``hu2022lora`` (LoRA)
discuss; keys for ``paper/refs.bib``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from ._types import Key, TaskVectors
from .lora import LoraFactors

__all__ = [
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
    "sample_task_vectors",
    "shape_tree",
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

_STATIC_FIELDS = ("num_tasks", "rank", "exact_norm")


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


def _validate(spec: Any) -> None:
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
# per-family samplers on the flat [T, D] layout (run under jit; `p` = traced fields)
# --------------------------------------------------------------------------------------
# Each family makes a constant number of RNG calls on the whole flat [T, D] array, then the
# result is cut into leaves: XLA:CPU compiles every RNG call separately (about a second
# each), so per-leaf draws would make compile time grow with the number of leaves.


def _flat_gaussian(key, p, num, size, dtype):
    return jr.normal(key, (num, size), dtype)


def _flat_correlated(key, p, num, size, dtype):
    z = jr.normal(key, (num + 1, size), dtype)  # row 0: shared component c
    rho = p["rho"]
    return jnp.sqrt(rho) * z[:1] + jnp.sqrt(1.0 - rho) * z[1:]


def _flat_sparse(key, p, num, size, dtype):
    ku, kv = jr.split(key)
    f, o = p["fraction"], p["overlap"]
    u = jr.uniform(ku, (num + 2, size), dtype)  # rows: shared?, common coin, own coins
    mask = jnp.where(u[:1] < o, u[1:2] < f, u[2:] < f)
    vals = jr.normal(kv, (num, size), dtype) / jnp.sqrt(f)
    return jnp.where(mask, vals, jnp.zeros((), dtype))


def _flat_heavy(key, p, num, size, dtype):
    nu = p["nu"]
    x = jr.t(key, nu, (num, size), dtype)
    kappa = jnp.where(nu > 2.0, jnp.sqrt(jnp.maximum(nu - 2.0, 0.0) / nu), jnp.ones((), dtype))
    return kappa * x


def _flat_sign(key, p, num, size, dtype):
    ku, kg = jr.split(key)
    u = jr.uniform(ku, (num + 1, size), dtype)  # row 0: shared sign, rows 1..: flips
    shared = jnp.where(u[:1] < 0.5, -jnp.ones((), dtype), jnp.ones((), dtype))
    sign = jnp.where(u[1:] < p["flip_prob"], -shared, shared)
    return sign * jnp.abs(jr.normal(kg, (num, size), dtype))


_FLAT_SAMPLERS = {
    GaussianSpec: _flat_gaussian,
    CorrelatedSpec: _flat_correlated,
    SparseSpec: _flat_sparse,
    HeavyTailedSpec: _flat_heavy,
    SignConflictSpec: _flat_sign,
}


def _dense(key, p, static, leaf_shapes, dtype, spec_type):
    num = static["num_tasks"]
    sizes = [math.prod(s) for s in leaf_shapes]
    total = sum(sizes)
    flat = _FLAT_SAMPLERS[spec_type](key, p, num, max(total, 1), dtype)[:, :total]
    sigma = p["norm"] / jnp.sqrt(jnp.asarray(max(total, 1), dtype))
    if static["exact_norm"]:
        nrm = jnp.sqrt(jnp.sum(flat * flat, axis=1, keepdims=True))
        flat = flat * jnp.where(nrm > 0, p["norm"] / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    else:
        flat = sigma * flat
    offsets = np.cumsum([0, *sizes])
    return [
        flat[:, offsets[i] : offsets[i + 1]].reshape((num, *shape))
        for i, shape in enumerate(leaf_shapes)
    ]


def _lora(key, p, static, leaf_shapes, dtype):
    num, rank = static["num_tasks"], static["rank"]
    mats = [s for s in leaf_shapes if len(s) == 2]
    total2 = sum(d * k for d, k in mats)
    scaling = p["alpha"] / rank
    # entries N(0, v) with v^2 = norm^2 / (s^2 r D_2); one RNG call for all factors
    var = p["norm"] / (scaling * jnp.sqrt(jnp.asarray(rank * max(total2, 1), dtype)))
    sizes = [x for d, k in mats for x in (d * rank, rank * k)]
    flat = jnp.sqrt(var) * jr.normal(key, (num, max(sum(sizes), 1)), dtype)
    offsets = np.cumsum([0, *sizes])
    scale_vec = jnp.full((num,), scaling, dtype)
    out, j = [], 0
    for s in leaf_shapes:
        if len(s) != 2:
            out.append(None)
            continue
        b = flat[:, offsets[j] : offsets[j + 1]].reshape(num, s[0], rank)
        a = flat[:, offsets[j + 1] : offsets[j + 2]].reshape(num, rank, s[1])
        out.append(LoraFactors(b, a, scale_vec))
        j += 2
    return out


@functools.partial(jax.jit, static_argnames=("spec_type", "static", "leaf_shapes", "dtype"))
def _sample_leaves(key, dynamic, *, spec_type, static, leaf_shapes, dtype):
    p = {k: jnp.asarray(v).astype(dtype) for k, v in dynamic.items()}
    static = dict(static)
    if spec_type is LoRASpec:
        return _lora(key, p, static, leaf_shapes, dtype)
    return _dense(key, p, static, leaf_shapes, dtype, spec_type)


# --------------------------------------------------------------------------------------
# entry point
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


def sample_task_vectors(
    key: Key, spec: TaskSpec, shapes: Any, dtype: Any = jnp.float32
) -> TaskVectors:
    r"""Draw ``spec.num_tasks`` synthetic task vectors shaped like ``shapes``.

    Args:
      key: PRNG key (``jax.random.key`` or a raw ``uint32[2]`` key).
      spec: one of :class:`GaussianSpec`, :class:`CorrelatedSpec`, :class:`SparseSpec`,
        :class:`HeavyTailedSpec`, :class:`SignConflictSpec`, :class:`LoRASpec`.
      shapes: pytree of leaf shapes (tuples of ints, ``jax.ShapeDtypeStruct`` or arrays),
        e.g. ``{"w": (64, 32), "b": (32,)}`` or ``jax.eval_shape(model.init, key, x)``.
      dtype: floating dtype of every leaf (``ShapeDtypeStruct`` dtypes are ignored).

    Returns:
      A pytree with the structure of ``shapes`` and leaves ``[T, *shape]``; for
      :class:`LoRASpec`, :class:`~mergetheory.lora.LoraFactors` on 2-D leaves and
      ``None`` elsewhere.

    Raises:
      ValueError: for out-of-range spec fields (``rho`` outside ``[0, 1]``, ``nu <= 0``,
        ``fraction`` outside ``(0, 1]``, ...) or malformed shapes.
      TypeError: for an unknown spec type or a non-floating dtype.

    Example:
      >>> tv = sample_task_vectors(jr.key(0), CorrelatedSpec(4, rho=0.5),
      ...                          {"w": (64, 32), "b": (32,)})
      >>> tv["w"].shape, tv["b"].shape
      ((4, 64, 32), (4, 32))
    """
    _validate(spec)
    dtype = jax.dtypes.canonicalize_dtype(jnp.dtype(dtype))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be floating, got {dtype}")
    leaf_shapes, treedef = shape_tree(shapes)
    fields = spec._asdict()
    if isinstance(spec, LoRASpec) and spec.alpha is None:
        fields["alpha"] = float(spec.rank)
    static = tuple((k, v) for k, v in fields.items() if k in _STATIC_FIELDS)
    static = tuple((k, bool(v) if k == "exact_norm" else int(v)) for k, v in static)
    dynamic = {k: v for k, v in fields.items() if k not in _STATIC_FIELDS}
    leaves = _sample_leaves(
        key,
        dynamic,
        spec_type=type(spec),
        static=static,
        leaf_shapes=tuple(leaf_shapes),
        dtype=dtype,
    )
    return jtu.tree_unflatten(treedef, leaves)
