r"""Interference diagnostics of one task-vector set ``[T, ...]``.

Four families of measurements that the merging literature uses to explain *why* a set of
experts merges well or badly:

* :func:`cosine_matrix`: pairwise cosines :math:`C_{ij} = \langle\tau_i,\tau_j\rangle /
  (\|\tau_i\| \|\tau_j\|)` of whole-tree task vectors, from :func:`mergetheory.tree.gram_matrix`.
* :func:`sign_conflict`: how often an expert's sign disagrees with the TIES "mass"
  elected sign :math:`\gamma = \mathrm{sgn}(\sum_t \tau_t)` (ties :math:`\to +1`)
  (``yadav2023ties``).
* :func:`singular_interference`: the singular task interference of TSV
  (``gargiulo2025tsv``) per 2-D leaf,
  :math:`\|(U^\top U - I)\,\Sigma\,(V^\top V - I)\|_1` with **column** concatenation
  :math:`U = [U_1 \cdots U_T]` (FusionBench's dim-0 concatenation raises for
  :math:`T > 1`).
* :func:`model_kinship`: model kinship (``hu2025kinship``): Pearson correlation (PCC),
  cosine similarity (CS, **absolute** cosine as in the reference code)
  and Euclidean distance (ED) of the flattened deltas.

:func:`interference_diagnostics` computes all of them at once and returns a
:class:`DiagnosticsOutput`. Every public function is jitted (shape-determining options
are static) and works on any pytree of ``[T, ...]`` leaves; everything reduces over leaves
without concatenating them into one ``[T, D]`` array.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._types import Gram, TaskVectors
from .tree import check_dense, gram_matrix, sum_tasks

__all__ = [
    "DiagnosticsOutput",
    "KinshipOutput",
    "SignConflictOutput",
    "cosine_matrix",
    "interference_diagnostics",
    "mean_off_diagonal",
    "model_kinship",
    "sign_conflict",
    "singular_interference",
]


class SignConflictOutput(NamedTuple):
    r"""Sign conflicts of each expert with the elected sign.

    Attributes:
      per_task: ``[T]`` rate :math:`r_t = \#\{p : \tau_{tp} \ne 0,\ \mathrm{sgn}\,\tau_{tp}
        \ne \gamma_p\} / \#\{p : \tau_{tp} \ne 0\}` (0 for an all-zero expert).
      overall: pooled rate :math:`\sum_t \#\text{conflicts}_t / \sum_t \#\text{nonzero}_t`.
      num_conflicts: ``[T]`` integer counts of conflicting coordinates.
      num_nonzero: ``[T]`` integer counts of nonzero coordinates.
    """

    per_task: jax.Array
    overall: jax.Array
    num_conflicts: jax.Array
    num_nonzero: jax.Array


class KinshipOutput(NamedTuple):
    """Model-kinship matrices ``[T, T]`` (``hu2025kinship``; Sources S7).

    Attributes:
      pcc: Pearson correlation of the flattened deltas (``torch.corrcoef`` semantics).
      cs: absolute cosine similarity ``|cos|`` (the reference code's CS).
      ed: Euclidean distance ``||tau_i - tau_j||``.
    """

    pcc: jax.Array
    cs: jax.Array
    ed: jax.Array


class DiagnosticsOutput(NamedTuple):
    """All interference diagnostics of one task-vector set.

    Attributes:
      cosine: ``[T, T]`` signed cosine matrix (:func:`cosine_matrix`).
      sign_conflict: :class:`SignConflictOutput`.
      singular_interference: scalar, the sum over 2-D leaves of the per-leaf TSV
        interference (0 if there is no 2-D leaf).
      singular_interference_per_leaf: pytree like the input with a scalar per 2-D leaf
        and ``None`` elsewhere (:func:`singular_interference`).
      kinship: :class:`KinshipOutput`.
    """

    cosine: jax.Array
    sign_conflict: SignConflictOutput
    singular_interference: jax.Array
    singular_interference_per_leaf: Any
    kinship: KinshipOutput


# --------------------------------------------------------------------------------------
# cosines and kinship
# --------------------------------------------------------------------------------------


def _cosine_from_gram(g: jax.Array) -> jax.Array:
    """``G_ij / sqrt(G_ii G_jj)``; exactly 1 on the diagonal, 0 for all-zero vectors."""
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
    denom = d[:, None] * d[None, :]
    ok = denom > 0
    cos = jnp.where(ok, g / jnp.where(ok, denom, 1.0), 0.0)
    eye = jnp.eye(g.shape[0], dtype=bool)
    return jnp.where(eye & ok, jnp.ones((), g.dtype), cos)


@jax.jit
def cosine_matrix(task_vectors: TaskVectors) -> Gram:
    r"""Pairwise cosine similarities of whole-tree task vectors.

    .. math:: C_{ij} = \frac{G_{ij}}{\sqrt{G_{ii} G_{jj}}}, \qquad
              G = \mathrm{gram\_matrix}(\tau).

    Pairs involving an all-zero task vector get 0 (including the diagonal entry).

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.

    Returns:
      ``[T, T]`` symmetric matrix with unit diagonal (for nonzero experts).

    Example:
      >>> cosine_matrix({"w": jnp.eye(3)})  # orthogonal experts -> identity
    """
    return _cosine_from_gram(gram_matrix(task_vectors))


@functools.partial(jax.jit, static_argnames=("absolute",))
def mean_off_diagonal(matrix: jax.Array, *, absolute: bool = False) -> jax.Array:
    r"""Mean of the off-diagonal entries of a ``[T, T]`` matrix (NaN for ``T = 1``).

    :math:`\frac{1}{T(T-1)} \sum_{i \ne j} M_{ij}` (of :math:`|M_{ij}|` if ``absolute``).
    """
    num = matrix.shape[0]
    m = jnp.abs(matrix) if absolute else matrix
    off = jnp.sum(m) - jnp.sum(jnp.diagonal(m))
    return off / (num * (num - 1)) if num > 1 else jnp.full((), jnp.nan, matrix.dtype)


@jax.jit
def model_kinship(task_vectors: TaskVectors) -> KinshipOutput:
    r"""Model kinship of every pair of experts: PCC, CS (absolute cosine) and ED.

    With :math:`\delta_i \in \mathbb{R}^D` the flattened task vector (all leaves) and
    :math:`\bar\delta_i` its mean coordinate:

    .. math::

       \mathrm{PCC}_{ij} = \frac{\langle \delta_i - \bar\delta_i \mathbf 1,
         \delta_j - \bar\delta_j \mathbf 1\rangle}{\|\delta_i - \bar\delta_i \mathbf 1\|
         \|\delta_j - \bar\delta_j \mathbf 1\|}, \quad
       \mathrm{CS}_{ij} = \frac{|\langle\delta_i, \delta_j\rangle|}{\|\delta_i\|\|\delta_j\|},
       \quad \mathrm{ED}_{ij} = \|\delta_i - \delta_j\|.

    CS is the absolute cosine because the reference implementations (zjunlp/ModelKinship,
    FusionBench) compute :math:`\sqrt{\langle a,b\rangle^2/(\|a\|^2\|b\|^2)}`; the signed
    cosine is :func:`cosine_matrix`. The PCC is computed in two passes (means, then the
    Gram matrix of the centred leaves) to avoid cancellation; constant experts get
    PCC 0. ED uses :math:`\sqrt{\max(0, G_{ii} + G_{jj} - 2G_{ij})}`, which is accurate to
    about :math:`\sqrt{\epsilon}\,\|\delta\|` for nearly equal experts.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.

    Returns:
      :class:`KinshipOutput` of three ``[T, T]`` matrices.
    """
    leaves = jtu.tree_leaves(task_vectors)
    num = leaves[0].shape[0]
    size = sum(leaf[0].size for leaf in leaves)
    sums = sum(jnp.sum(leaf.reshape(num, -1), axis=1) for leaf in leaves)
    mean = sums / size
    centred = [leaf.reshape(num, -1) - mean[:, None] for leaf in leaves]
    g = gram_matrix(task_vectors)
    gc = gram_matrix(centred)
    d = jnp.diagonal(g)
    ed = jnp.sqrt(jnp.maximum(d[:, None] + d[None, :] - 2.0 * g, 0.0))
    ed = ed * (1.0 - jnp.eye(num, dtype=ed.dtype))
    return KinshipOutput(pcc=_cosine_from_gram(gc), cs=jnp.abs(_cosine_from_gram(g)), ed=ed)


# --------------------------------------------------------------------------------------
# sign conflicts
# --------------------------------------------------------------------------------------


@jax.jit
def sign_conflict(task_vectors: TaskVectors) -> SignConflictOutput:
    r"""Sign-conflict rate of each expert against the TIES "mass" elected sign.

    .. math::

       \gamma_p = \begin{cases} +1 & \sum_t \tau_{tp} \ge 0 \\ -1 & \text{otherwise}
       \end{cases}, \qquad
       r_t = \frac{\#\{p : \tau_{tp} \ne 0,\ \mathrm{sgn}\,\tau_{tp} \ne \gamma_p\}}
                  {\#\{p : \tau_{tp} \ne 0\}}.

    The election is TIES's "mass" rule (``yadav2023ties``) on the vectors as given (trim
    them first for the trimmed variant); ties go to ``+1`` as in mergekit and PEFT (the
    official TIES code instead resolves zero sums by the majority of elected signs).
    Only an expert's nonzero coordinates count, so pruned zeros never conflict.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.

    Returns:
      :class:`SignConflictOutput`. Counts use JAX's default integer (int32 without x64:
      exact below :math:`2^{31}` coordinates per expert).
    """
    check_dense(task_vectors, name="sign_conflict: task_vectors")
    conflicts = None
    nonzero = None
    for leaf in jtu.tree_leaves(task_vectors):
        x = leaf.reshape(leaf.shape[0], -1)
        elected_pos = sum_tasks(x) >= 0
        nz = x != 0
        pos = x > 0
        c = jnp.sum(nz & (pos != elected_pos[None]), axis=1)
        n = jnp.sum(nz, axis=1)
        conflicts = c if conflicts is None else conflicts + c
        nonzero = n if nonzero is None else nonzero + n
    dtype = jnp.result_type(*[leaf.dtype for leaf in jtu.tree_leaves(task_vectors)])
    cf, nf = conflicts.astype(dtype), nonzero.astype(dtype)
    per_task = cf / jnp.maximum(nf, 1.0)
    overall = jnp.sum(cf) / jnp.maximum(jnp.sum(nf), 1.0)
    return SignConflictOutput(per_task, overall, conflicts, nonzero)


# --------------------------------------------------------------------------------------
# TSV singular interference
# --------------------------------------------------------------------------------------


def _leaf_sti(x: jax.Array, top_k: int | None, ord: str) -> jax.Array:
    num, m, n = x.shape
    r = min(m, n)
    k = r if top_k is None else min(top_k, r)
    u, s, vh = jnp.linalg.svd(x, full_matrices=False)  # [T, m, r], [T, r], [T, r, n]
    u, s, vh = u[:, :, :k], s[:, :k], vh[:, :k, :]
    # Drop numerically-zero triplets (their singular vectors are arbitrary): zeroing u, v
    # and sigma removes them from M exactly, so rank-deficient experts (e.g. densified
    # LoRA) and all-zero experts (padding) have a well-defined interference.
    tol = max(m, n) * jnp.finfo(x.dtype).eps * s[:, :1]
    keep = s > tol
    s = jnp.where(keep, s, 0.0)
    u = jnp.where(keep[:, None, :], u, 0.0)
    vh = jnp.where(keep[:, :, None], vh, 0.0)
    ucat = jnp.transpose(u, (1, 0, 2)).reshape(m, num * k)  # U = [U_1 ... U_T]
    vtcat = vh.reshape(num * k, n)  # V^T = [V_1 ... V_T]^T
    sig = s.reshape(-1)
    hi = "highest"
    # (P - I) S (Q - I) = P S Q - P S - S Q + S with P = U^T U, Q = V^T V, and
    # P S Q = U^T (U S V^T) V = U^T (sum_t Delta_t^(k)) V: O((Tk)^2 (m + n)) flops
    # instead of the O((Tk)^3) of the triple product.
    delta = jnp.matmul(ucat * sig[None, :], vtcat, precision=hi)  # [m, n]
    psq = jnp.matmul(jnp.matmul(ucat.T, delta, precision=hi), vtcat.T, precision=hi)
    pmat = jnp.matmul(ucat.T, ucat, precision=hi)
    qmat = jnp.matmul(vtcat, vtcat.T, precision=hi)
    mat = psq - pmat * sig[None, :] - sig[:, None] * qmat + jnp.diag(sig)
    if ord == "entrywise":
        return jnp.sum(jnp.abs(mat))
    return jnp.max(jnp.sum(jnp.abs(mat), axis=0))


@functools.partial(jax.jit, static_argnames=("top_k", "ord"))
def singular_interference(
    task_vectors: TaskVectors, *, top_k: int | None = None, ord: str = "entrywise"
) -> Any:
    r"""TSV singular task interference of every 2-D leaf (``gargiulo2025tsv``).

    For a leaf with task matrices :math:`\Delta_t = U_t \Sigma_t V_t^\top \in
    \mathbb{R}^{m \times n}` (thin SVD, optionally truncated to the top ``k`` triplets):

    .. math::

       \mathrm{STI}(\{\Delta_t\}) = \big\| (U^\top U - I)\, \Sigma\, (V^\top V - I)
       \big\|_1, \quad U = [U_1 \cdots U_T] \in \mathbb{R}^{m \times Tk},\
       V = [V_1 \cdots V_T] \in \mathbb{R}^{n \times Tk},\
       \Sigma = \mathrm{blockdiag}(\Sigma_1, \dots, \Sigma_T).

    Triplets with :math:`\sigma_{t,i} \le \max(m, n)\,\epsilon\,\sigma_{t,1}` (numerical
    rank, NumPy's ``matrix_rank`` rule) are dropped, since their singular vectors are not
    unique: so the value is well defined for rank-deficient experts (densified LoRA) and
    an all-zero expert contributes nothing (zero-padding the task axis changes nothing).
    Diagonal blocks of :math:`U^\top U - I` vanish, so a single task has zero
    interference, and tasks with mutually orthogonal column *and* row spaces have zero
    interference. The paper's :math:`\|\cdot\|_1` is not pinned down by the reference
    code (``torch.linalg.norm(..., ord="1")``); ``ord="entrywise"`` (default) is
    :math:`\sum_{ab}|M_{ab}|`, ``ord="max_col"`` the induced matrix 1-norm
    :math:`\max_b \sum_a |M_{ab}|`. With ``top_k=None`` all :math:`r = \min(m, n)`
    triplets are used; once :math:`Tk > m` (or :math:`> n`) the concatenated singular
    vectors cannot be orthonormal, so the interference of generic tasks grows with
    ``T`` even when they are independent. Cost per leaf: ``T`` SVDs plus
    :math:`O((Tk)^2 (m + n))`, using :math:`U^\top U\, \Sigma\, V^\top V = U^\top
    (\sum_t U_t \Sigma_t V_t^\top) V` instead of a :math:`(Tk)^3` triple product.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      top_k: keep the top ``k`` singular triplets per task (clipped to ``min(m, n)``);
        TSV-M uses ``k = min(m, n) // T`` (static).
      ord: ``"entrywise"`` or ``"max_col"`` (static).

    Returns:
      A pytree like ``task_vectors`` with a scalar at every ``[T, m, n]`` leaf and
      ``None`` at every other leaf.
    """
    check_dense(task_vectors, name="singular_interference: task_vectors")
    if ord not in ("entrywise", "max_col"):
        raise ValueError(f"ord must be 'entrywise' or 'max_col', got {ord!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive int or None, got {top_k}")

    def one(x: jax.Array) -> jax.Array | None:
        if x.ndim != 3:
            return None
        return _leaf_sti(x, top_k, ord)

    return jtu.tree_map(one, task_vectors)


def _total(per_leaf: Any, dtype: Any) -> jax.Array:
    vals = jtu.tree_leaves(per_leaf)
    if not vals:
        return jnp.zeros((), dtype)
    return sum(vals[1:], vals[0])


# --------------------------------------------------------------------------------------
# all at once
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("top_k", "ord"))
def interference_diagnostics(
    task_vectors: TaskVectors, *, top_k: int | None = None, ord: str = "entrywise"
) -> DiagnosticsOutput:
    """Cosines, sign conflicts, TSV singular interference and kinship of one set.

    Args:
      task_vectors: pytree of ``[T, ...]`` leaves.
      top_k: per-task truncation of the TSV interference (see
        :func:`singular_interference`).
      ord: norm of the TSV interference (see :func:`singular_interference`).

    Returns:
      :class:`DiagnosticsOutput`.

    Example:
      >>> tv = sample_task_vectors(jr.key(0), CorrelatedSpec(4, 0.3), {"w": (32, 16)})
      >>> out = interference_diagnostics(tv)
      >>> mean_off_diagonal(out.cosine)  # close to 0.3
    """
    dtype = jnp.result_type(*[leaf.dtype for leaf in jtu.tree_leaves(task_vectors)])
    g = gram_matrix(task_vectors)
    per_leaf = singular_interference(task_vectors, top_k=top_k, ord=ord)
    return DiagnosticsOutput(
        cosine=_cosine_from_gram(g),
        sign_conflict=sign_conflict(task_vectors),
        singular_interference=_total(per_leaf, dtype),
        singular_interference_per_leaf=per_leaf,
        kinship=model_kinship(task_vectors),
    )
