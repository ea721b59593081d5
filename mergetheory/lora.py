r"""Factored (LoRA) expert sets: inner products without forming ``B @ A``.

A *factored expert set* is a pytree whose leaves (per adapted module) are
:class:`LoraFactors` ``(B [T, d, r], A [T, r, k], scaling)``: the dense update of expert
``i`` in that module is :math:`\Delta W_i = s_i B_i A_i \in \mathbb{R}^{d \times k}`
(PEFT convention: ``d = out_features``, ``k = in_features``, ``lora_B: [d, r]``,
``lora_A: [r, k]``, ``s = lora_alpha / r``).

Everything the width engine needs is the Gram matrix of the experts (docs/width_engine.md),
and for factored experts it is cheap:

.. math::

   G_{ij} = \sum_{\ell} s_i s_j \langle B_i A_i, B_j A_j \rangle_F
          = \sum_{\ell} s_i s_j \operatorname{tr}\big((B_i^\top B_j)(A_j A_i^\top)\big)
          = \sum_{\ell} s_i s_j \sum_{a, b} (B_i^\top B_j)_{ab} (A_i A_j^\top)_{ab},

i.e. the elementwise product of the two ``[T, T, r, r]`` cross-Grams of the factors,
summed over the rank indices. Cost per module :math:`O(T^2 r^2 (d + k))` flops and
:math:`O(T^2 r^2)` memory beyond the factors, against :math:`O(T d k r)` flops and
:math:`O(T d k)` memory to densify. For ten rank-16 experts laid out like gemma-2-2b
(about ``2e9`` dense parameters, 8 GB float32, *per expert*) the factors hold about ``2e7``
numbers per expert and the Gram pass is a few dense GEMMs (see ``benchmarks/width.py``).

Layouts handled by :func:`lora_gram_matrix`:

* per-module leaves ``B [T, d, r]``, ``A [T, r, k]`` (ranks may differ between modules;
  experts of different rank within one module are zero-padded to a common ``r``, which
  leaves every product unchanged);
* *stacked* leaves ``B [L, T, d, r]``, ``A [L, T, r, k]`` holding ``L`` layers of the same
  shape (scan-over-layers models); the layer axis is streamed with :func:`jax.lax.scan`,
  so memory stays at one layer's ``[T, T, r, r]`` cross-Grams.

``scaling`` is a scalar or a per-expert ``[T]`` vector (``[L, T]`` for stacked leaves is
*not* supported: use one scalar or ``[T]`` vector shared by the stacked layers).

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (``hu2022lora``
in ``paper/refs.bib``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from ._types import Gram, Key, LoraFactors, is_lora_factors
from .random_bits import hash_normal
from .tree import TaskVectorError, accumulation_dtype, check_finite, validate_task_vectors

__all__ = [
    "LoraFactors",
    "LoraShape",
    "densify",
    "gemma2_2b_lora_shapes",
    "lora_dense_size",
    "lora_gram_matrix",
    "lora_num_tasks",
    "sample_lora_factors",
    "split_factors",
    "validate_mixed_task_vectors",
]


class LoraShape(NamedTuple):
    """Shape of one adapted module: ``B [d_out, rank]``, ``A [rank, d_in]``.

    Attributes:
      d_out: output features ``d`` (rows of the dense update).
      d_in: input features ``k`` (columns of the dense update).
      rank: LoRA rank ``r``.
      num_layers: if not None, the module is stacked over this many identical layers
        (leaves ``[L, T, d, r]`` / ``[L, T, r, k]``).
    """

    d_out: int
    d_in: int
    rank: int
    num_layers: int | None = None


def _factor_leaves(factors: Any) -> list[tuple[str, LoraFactors]]:
    flat = jtu.tree_flatten_with_path(factors, is_leaf=is_lora_factors)[0]
    out = []
    for path, leaf in flat:
        name = jtu.keystr(tuple(path)) or "<root>"
        if not is_lora_factors(leaf):
            raise TaskVectorError(
                f"factors{name}: leaf is {type(leaf).__name__}, expected LoraFactors"
            )
        out.append((name, leaf))
    if not out:
        raise TaskVectorError("factors: the pytree has no LoraFactors leaves")
    return out


def _check_one(name: str, f: LoraFactors) -> tuple[int, bool]:
    """Validate one module's factors; return ``(T, stacked)``."""
    b, a = f.B, f.A
    for nm, x in (("B", b), ("A", a)):
        if not hasattr(x, "shape") or not jnp.issubdtype(x.dtype, jnp.floating):
            raise TaskVectorError(f"factors{name}.{nm}: expected a floating array")
    if b.ndim != a.ndim or b.ndim not in (3, 4):
        raise TaskVectorError(
            f"factors{name}: B has shape {b.shape} and A {a.shape}; expected B [T, d, r] "
            "and A [T, r, k] (or stacked [L, T, d, r] and [L, T, r, k])"
        )
    if b.shape[:-2] != a.shape[:-2]:
        raise TaskVectorError(f"factors{name}: leading axes differ, B {b.shape} vs A {a.shape}")
    if b.shape[-1] != a.shape[-2]:
        raise TaskVectorError(
            f"factors{name}: rank mismatch, B has r = {b.shape[-1]} but A has r = {a.shape[-2]}"
        )
    stacked = b.ndim == 4
    num = b.shape[1] if stacked else b.shape[0]
    s = jnp.shape(f.scaling)
    if s not in ((), (num,)):
        raise TaskVectorError(
            f"factors{name}: scaling has shape {s}; expected a scalar or [T] = [{num}]"
        )
    return int(num), stacked


def lora_num_tasks(factors: Any) -> int:
    """Number of experts ``T`` of a factored expert set (validated across modules).

    Args:
      factors: pytree of :class:`LoraFactors`.

    Returns:
      ``T``.

    Raises:
      TaskVectorError: on malformed leaves or disagreeing ``T``, naming the leaf path.
    """
    num = None
    first = None
    for name, f in _factor_leaves(factors):
        t, _ = _check_one(name, f)
        if num is None:
            num, first = t, name
        elif t != num:
            raise TaskVectorError(f"factors{name}: {t} experts but factors{first} has {num}")
    assert num is not None
    if num == 0:
        raise TaskVectorError("factors: the expert axis is empty (T = 0)")
    return num


def split_factors(task_vectors: Any) -> tuple[Any, Any]:
    """``(dense, factors)``: the pytree's dense leaves and its :class:`LoraFactors` nodes.

    Both keep the tree structure, with ``None`` where the other part is, so paths in error
    messages stay those of the input.
    """
    dense = jtu.tree_map(
        lambda n: None if is_lora_factors(n) else n, task_vectors, is_leaf=is_lora_factors
    )
    factors = jtu.tree_map(
        lambda n: n if is_lora_factors(n) else None, task_vectors, is_leaf=is_lora_factors
    )
    return dense, factors


def validate_mixed_task_vectors(task_vectors: Any, *, name: str = "task_vectors") -> int:
    """Validate a pytree of dense ``[T, ...]`` leaves and/or :class:`LoraFactors`; return ``T``.

    Dense leaves are checked by :func:`mergetheory.tree.validate_task_vectors`, factored
    nodes by :func:`lora_num_tasks` and :func:`mergetheory.tree.check_finite` (all name the
    offending path); the two parts must agree on ``T``.
    """
    dense, factors = split_factors(task_vectors)
    nums = []
    if jtu.tree_leaves(dense):
        nums.append(validate_task_vectors(dense, name=name))
    if jtu.tree_leaves(factors, is_leaf=is_lora_factors):
        nums.append(lora_num_tasks(factors))
        check_finite(factors, name=name)
    if not nums:
        raise TaskVectorError(f"{name}: the pytree has no array leaves")
    if len(set(nums)) > 1:
        raise TaskVectorError(
            f"{name}: the dense leaves have T = {nums[0]} tasks but the LoRA factors "
            f"have T = {nums[1]}"
        )
    return nums[0]


def _module_gram(b: jax.Array, a: jax.Array, precision: Any) -> jax.Array:
    r"""One module's Gram: :math:`\sum_{ab}(B_i^\top B_j)_{ab}(A_iA_j^\top)_{ab}`."""
    # Both contractions are single GEMMs of shape [T r, d] x [d, T r] (resp. k).
    # accumulated in at least float32 (half-precision factors would overflow / lose digits)
    acc = functools.partial(
        jnp.einsum,
        precision=precision,
        preferred_element_type=accumulation_dtype(jnp.result_type(b.dtype, a.dtype)),
    )
    p = acc("idr,jds->irjs", b, b)
    q = acc("irk,jsk->irjs", a, a)
    return acc("irjs,irjs->ij", p, q)


def _scaled(g: jax.Array, scaling: Any) -> jax.Array:
    s = jnp.asarray(scaling).astype(g.dtype)
    if s.ndim == 0:
        return (s * s) * g
    return s[:, None] * g * s[None, :]


@functools.partial(jax.jit, static_argnames=("precision",))
def _lora_gram(factors: Any, precision: Any) -> jax.Array:
    acc = None
    for _, f in _factor_leaves(factors):
        if f.B.ndim == 4:

            def body(carry, ba, precision=precision):
                return carry + _module_gram(ba[0], ba[1], precision), None

            num = f.B.shape[1]
            dtype = accumulation_dtype(jnp.result_type(f.B.dtype, f.A.dtype))
            g, _ = jax.lax.scan(body, jnp.zeros((num, num), dtype), (f.B, f.A))
        else:
            g = _module_gram(f.B, f.A, precision)
        g = _scaled(g, f.scaling)
        acc = g if acc is None else acc + g
    return 0.5 * (acc + acc.T)


def lora_gram_matrix(factors: Any, *, precision: Any = "highest", check: bool = True) -> Gram:
    r"""Gram matrix of the dense updates of ``T`` LoRA experts, from the factors alone.

    .. math::

       G_{ij} = \sum_{\text{modules}} s_i s_j
                \operatorname{tr}\big((B_i^\top B_j)(A_j A_i^\top)\big)
              = \sum_{\text{modules}} \langle s_i B_i A_i,\, s_j B_j A_j \rangle_F .

    ``B_i A_i`` is never formed: per module two ``[T r, T r]`` cross-Grams are computed
    (cost :math:`O(T^2 r^2 (d + k))`) and contracted over the rank indices. Modules are
    streamed one after the other (stacked ``[L, ...]`` leaves with :func:`jax.lax.scan`).

    Args:
      factors: pytree of :class:`LoraFactors` (e.g. ``{"q_proj": LoraFactors(B, A, s)}``).
      precision: matmul precision (``"highest"`` keeps float32 accuracy on accelerators).
      check: validate shapes and (for concrete arrays) finiteness first.

    Returns:
      ``[T, T]`` symmetric PSD matrix in the factors' result dtype (at least float32);
      the same matrix as ``tree.gram_matrix(densify(factors))``.

    Example:
      >>> f = sample_lora_factors(jr.key(0), {"q": LoraShape(8, 6, 2)}, num_tasks=3)
      >>> lora_gram_matrix(f).shape
      (3, 3)
    """
    if check:
        lora_num_tasks(factors)
        check_finite(factors, name="factors")
    return _lora_gram(factors, precision)


def densify(factors: Any) -> Any:
    r"""Dense task vectors :math:`\Delta W_i = s_i B_i A_i` (for tests and small models).

    Args:
      factors: pytree of :class:`LoraFactors`.

    Returns:
      The same pytree with every :class:`LoraFactors` replaced by a ``[T, d, k]`` array;
      stacked factors become ``[T, L, d, k]`` (task axis first, as every task-vector set
      has it), so the result is a valid input of :func:`mergetheory.tree.gram_matrix`.
    """
    lora_num_tasks(factors)

    def one(f: LoraFactors) -> jax.Array:
        if f.B.ndim == 4:
            w = jnp.einsum("ltdr,ltrk->tldk", f.B, f.A, precision="highest")
            s = jnp.asarray(f.scaling).astype(w.dtype)
            return w * (s if s.ndim == 0 else s[:, None, None, None])
        w = jnp.einsum("tdr,trk->tdk", f.B, f.A, precision="highest")
        s = jnp.asarray(f.scaling).astype(w.dtype)
        return w * (s if s.ndim == 0 else s[:, None, None])

    return jtu.tree_map(one, factors, is_leaf=is_lora_factors)


# --------------------------------------------------------------------------------------
# layouts and samplers
# --------------------------------------------------------------------------------------

_GEMMA2_2B = {
    # module: (d_out, d_in); hidden 2304, 8 query heads x 256, 4 kv heads x 256, MLP 9216
    "self_attn.q_proj": (2048, 2304),
    "self_attn.k_proj": (1024, 2304),
    "self_attn.v_proj": (1024, 2304),
    "self_attn.o_proj": (2304, 2048),
    "mlp.gate_proj": (9216, 2304),
    "mlp.up_proj": (9216, 2304),
    "mlp.down_proj": (2304, 9216),
}
_GEMMA2_2B_LAYERS = 26


def gemma2_2b_lora_shapes(rank: int = 16, *, stacked: bool = False) -> dict[str, LoraShape]:
    """LoRA layout of gemma-2-2b with every linear map of every layer adapted.

    26 decoder layers, each with ``q 2304->2048``, ``k, v 2304->1024``, ``o 2048->2304``,
    ``gate, up 2304->9216`` and ``down 9216->2304`` (``in->out``). The dense update of one
    expert has about ``2.03e9`` parameters; the rank-16 factors about ``2.1e7``.

    Args:
      rank: LoRA rank ``r`` of every module.
      stacked: if False, keys are PEFT-style module paths
        (``"model.layers.0.self_attn.q_proj"``, 182 entries); if True, one entry per
        module kind (``"self_attn.q_proj"``) stacked over the 26 layers.

    Returns:
      ``{name: LoraShape}``, the input of :func:`sample_lora_factors`.
    """
    if stacked:
        return {
            m: LoraShape(d_out, d_in, rank, _GEMMA2_2B_LAYERS)
            for m, (d_out, d_in) in _GEMMA2_2B.items()
        }
    return {
        f"model.layers.{layer}.{m}": LoraShape(d_out, d_in, rank)
        for layer in range(_GEMMA2_2B_LAYERS)
        for m, (d_out, d_in) in _GEMMA2_2B.items()
    }


def lora_dense_size(shapes: Mapping[str, LoraShape]) -> tuple[int, int]:
    """``(dense, factored)`` parameter counts of ONE expert with layout ``shapes``."""
    dense = factored = 0
    for s in shapes.values():
        mult = s.num_layers or 1
        dense += mult * s.d_out * s.d_in
        factored += mult * s.rank * (s.d_out + s.d_in)
    return dense, factored


def sample_lora_factors(
    key: Key,
    shapes: Mapping[str, LoraShape],
    num_tasks: int,
    *,
    scaling: float = 1.0,
    dtype: Any = jnp.float32,
) -> dict[str, LoraFactors]:
    r"""Random LoRA experts: ``B, A`` with i.i.d. Gaussian entries.

    :math:`B_{ab} \sim N(0, 1/r)`, :math:`A_{bc} \sim N(0, 1/k)`, so every entry of a dense
    update :math:`s B A` has variance :math:`s^2 / k` (the scale of a default-initialised
    linear layer). Module ``m`` (in the order of ``shapes``) draws ``B`` and ``A`` from
    ``jr.split(jr.fold_in(key, m))``, one module at a time, so memory peaks at the
    factors plus one module's draw (one compiled program per distinct factor shape). The
    normals are :func:`mergetheory.random_bits.hash_normal` (counter-based hash bits,
    inverse CDF): the law of ``jax.random.normal`` at a fraction of its cost on XLA:CPU
    (docs/width_engine.md), the same values on every backend.

    Args:
      key: PRNG key.
      shapes: ``{name: LoraShape}``, e.g. :func:`gemma2_2b_lora_shapes`.
      num_tasks: number of experts ``T``.
      scaling: the scalar ``s`` stored in every :class:`LoraFactors`.
      dtype: floating dtype of the factors.

    Returns:
      ``{name: LoraFactors(B [T, d, r], A [T, r, k], scaling)}`` (``[L, T, ...]`` for
      stacked shapes).
    """
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    dtype = jnp.dtype(dtype)
    out = {}
    for idx, (name, shape) in enumerate(shapes.items()):
        s = LoraShape(*shape)
        lead = (num_tasks,) if s.num_layers is None else (s.num_layers, num_tasks)
        kb, ka = jr.split(jr.fold_in(key, idx))
        sb = np.asarray(1.0 / np.sqrt(s.rank), dtype)
        sa = np.asarray(1.0 / np.sqrt(s.d_in), dtype)
        b = _scaled_normal(kb, sb, shape=lead + (s.d_out, s.rank), dtype=dtype)
        a = _scaled_normal(ka, sa, shape=lead + (s.rank, s.d_in), dtype=dtype)
        out[name] = LoraFactors(b, a, scaling)
    return out


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _scaled_normal(key: Key, scale: jax.Array, *, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    # One program per shape (compiled once, shared by modules of equal shape); modules are
    # drawn one after the other, so peak memory is the factors plus one module's draw.
    return hash_normal(key, shape, dtype) * scale
