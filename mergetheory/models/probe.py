r"""A multiple-choice probe of a byte-level language model, one instance at a time.

The per-instance analogue of the PopQA setting of Rahamim et al. ("Will it Merge?",
arXiv 2601.06672; reconstruction, see ``docs/instance_mergeability.md``), built from the
standard library's source (:mod:`.corpus`) for the byte transformer of :mod:`.language`.

**Construction** (:func:`make_probe`). An *instance* is a position in one source file of
the chosen families (by default the zoo's expert families, text the base never saw):

1. a file is drawn uniformly among the families' files of at least ``min_file_bytes``
   bytes (at most ``max_per_file`` instances per file), then an offset :math:`o` uniformly;
2. the **prefix** is the ``prefix`` bytes at :math:`o`, the **true continuation** the next
   ``continuation`` bytes (:math:`o + P .. o + P + L`);
3. ``num_choices - 1`` **distractors** are ``continuation``-byte strings of the *same
   file* at offsets :math:`q` drawn uniformly, rejected when they overlap the true
   continuation (:math:`|q - (o + P)| < L`) or repeat a string already among the choices;
4. the ``num_choices`` candidates are shuffled; ``label`` is the true one's position.

**Score.** Candidate :math:`c` is scored by the sum of the model's log-probabilities of
its bytes after the prefix, :math:`s_c = \sum_{j=1}^{L} \log p_\theta(y_{c,j} \mid
\text{prefix}, y_{c,<j})`; the model's choice probabilities are
:math:`p_c = \mathrm{softmax}(s)_c` over the candidates. The base *gets an instance
wrong* when :math:`\arg\max_c s_c \ne` ``label``; its base-knowledge gap is
:math:`\Delta_\text{base} = p_\text{top} - p_\text{label}` (0 when right).

**The adapted layer and the feature trick.** Updates adapt one kernel, the first MLP
projection of the **last** block (``block_{L-1}/mlp_fc1``, the analogue of the paper's
``mlp.up_proj`` of a single layer). Everything before that MLP does not depend on the
update and the MLP is position-wise, so the residual stream :math:`x` entering it
(after the last block's attention) is a fixed *feature* of each scored position
(:func:`probe_features`), and the logits under any update :math:`\Delta` of that kernel
(flax layout ``[d_in, d_out]``) are

.. math::

   \mathrm{logits} = W_\text{head}\,\mathrm{LN}_f\big(x + W_2\,
   \mathrm{gelu}((W_1 + \Delta)^\top \mathrm{LN}_2(x) + b_1) + b_2\big) + b_\text{head}

(:func:`choice_scores`), exactly the full model's (tested against
:func:`~mergetheory.models.language.transformer_apply`). Training one LoRA per instance
and scoring every merge then cost a few small matrix products per scored byte.

Example:
  >>> probe = make_probe(stdlib_root(), families=("json",), num_instances=64, seed=0)
  >>> feats = probe_features(base_params, probe.tokens, num_heads=4)
  >>> scores = choice_scores(base_params, feats, probe.targets, None, num_heads=4)  # [I, C]

Reference: Rahamim et al. (``rahamim2026mergeability`` in ``paper/refs.bib``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .corpus import family_of, read_bytes, stdlib_files
from .language import ByteTransformer, TransformerConfig

__all__ = [
    "ProbeSet",
    "adapted_kernel_path",
    "base_gap",
    "choice_probabilities",
    "choice_scores",
    "make_probe",
    "probe_features",
    "probe_survival",
]


class ProbeSet(NamedTuple):
    """Multiple-choice instances (see the module docstring).

    Attributes:
      tokens: ``[I, C, P + L]`` uint8, candidate ``c`` of instance ``i`` = prefix + choice.
      label: ``[I]`` int, position of the true continuation among the ``C`` choices.
      file_index: ``[I]`` int, index into ``files`` (the instance's group).
      family_index: ``[I]`` int, index into ``families``.
      offset: ``[I]`` int, byte offset of the prefix in its file.
      files: the source files (relative paths), in the order ``file_index`` uses.
      families: the families, in the order ``family_index`` uses.
      prefix: ``P``.
      continuation: ``L``.
    """

    tokens: np.ndarray
    label: np.ndarray
    file_index: np.ndarray
    family_index: np.ndarray
    offset: np.ndarray
    files: tuple[str, ...]
    families: tuple[str, ...]
    prefix: int
    continuation: int

    @property
    def targets(self) -> np.ndarray:
        """``[I, C, L]`` the scored bytes (the choices)."""
        return self.tokens[..., self.prefix :]

    def subset(self, idx: Any) -> ProbeSet:
        """The instances ``idx`` (same files and families)."""
        idx = np.asarray(idx)
        return self._replace(
            tokens=self.tokens[idx],
            label=self.label[idx],
            file_index=self.file_index[idx],
            family_index=self.family_index[idx],
            offset=self.offset[idx],
        )


def _distractors(
    rng: np.random.Generator, text: bytes, true_at: int, length: int, num: int
) -> list[int] | None:
    chosen: list[int] = []
    seen = {text[true_at : true_at + length]}
    for _ in range(50 * num):
        q = int(rng.integers(0, len(text) - length + 1))
        s = text[q : q + length]
        if abs(q - true_at) < length or s in seen:
            continue
        chosen.append(q)
        seen.add(s)
        if len(chosen) == num:
            return chosen
    return None


def make_probe(
    root: str | os.PathLike[str],
    *,
    families: Sequence[str],
    num_instances: int,
    seed: int,
    prefix: int = 48,
    continuation: int = 16,
    num_choices: int = 8,
    min_file_bytes: int = 512,
    max_per_file: int = 16,
) -> ProbeSet:
    """Draw ``num_instances`` multiple-choice instances (construction: module docstring).

    Args:
      root: the standard library directory (:func:`~mergetheory.models.corpus.stdlib_root`).
      families: source families (top-level packages, :func:`.corpus.family_of`).
      num_instances: ``I``.
      seed: seed of a NumPy ``Generator`` (everything is a function of it and the files).
      prefix: ``P`` bytes of context.
      continuation: ``L`` bytes per choice.
      num_choices: ``C`` (the true continuation and ``C - 1`` distractors).
      min_file_bytes: files shorter than this are not used.
      max_per_file: cap on the instances drawn from one file.

    Returns:
      :class:`ProbeSet`.

    Raises:
      ValueError: no usable file, or the files cannot hold ``num_instances`` instances.
    """
    if num_choices < 2 or prefix < 1 or continuation < 1 or num_instances < 1:
        raise ValueError("make_probe: need num_choices >= 2 and prefix, continuation, "
                         "num_instances >= 1")  # fmt: skip
    fams = tuple(families)
    min_len = max(min_file_bytes, prefix + continuation * (num_choices + 2))
    files = [f for f in stdlib_files(root) if family_of(f) in fams]
    contents = read_bytes(root, files)
    keep = [i for i, c in enumerate(contents) if len(c) >= min_len]
    if not keep:
        raise ValueError(f"make_probe: no file of {fams} has >= {min_len} bytes")
    if len(keep) * max_per_file < num_instances:
        raise ValueError(f"make_probe: {len(keep)} files x max_per_file = {max_per_file} "
                         f"cannot hold {num_instances} instances")  # fmt: skip
    files = [files[i] for i in keep]
    contents = [contents[i] for i in keep]
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(files), np.int64)
    width = prefix + continuation
    tokens = np.zeros((num_instances, num_choices, width), np.uint8)
    label = np.zeros(num_instances, np.int64)
    file_index = np.zeros(num_instances, np.int64)
    offset = np.zeros(num_instances, np.int64)
    i = 0
    while i < num_instances:
        f = int(rng.choice(np.flatnonzero(counts < max_per_file)))
        text = contents[f]
        o = int(rng.integers(0, len(text) - width + 1))
        others = _distractors(rng, text, o + prefix, continuation, num_choices - 1)
        if others is None:
            continue
        starts = [o + prefix] + others
        order = rng.permutation(num_choices)
        pre = np.frombuffer(text[o : o + prefix], np.uint8)
        for c, k in enumerate(order):
            cont = np.frombuffer(text[starts[k] : starts[k] + continuation], np.uint8)
            tokens[i, c] = np.concatenate([pre, cont])
        label[i] = int(np.flatnonzero(order == 0)[0])
        file_index[i], offset[i] = f, o
        counts[f] += 1
        i += 1
    family_index = np.array([fams.index(family_of(files[f])) for f in file_index], np.int64)
    return ProbeSet(
        tokens, label, file_index, family_index, offset, tuple(files), fams, prefix, continuation
    )


# --------------------------------------------------------------------------------------
# features and scores
# --------------------------------------------------------------------------------------


# The shape and graph of the model are rebuilt here from flax's public API: language.py
# keeps its own versions private, and it is part of the zoo's cache fingerprint, so making
# them public there would invalidate every cached zoo.
def _config(params: dict[str, Any], num_heads: int) -> TransformerConfig:
    num_layers = sum(1 for k in params if k.startswith("block_"))
    context, d = params["pos"].shape
    h = params["block_0"]["mlp_fc1"]["kernel"].shape[-1]
    return TransformerConfig(int(d), num_layers, num_heads, int(context), int(h // d))


@functools.lru_cache(maxsize=16)
def _graphdef(cfg: TransformerConfig) -> Any:
    abstract = nnx.eval_shape(lambda: ByteTransformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def _model(params: dict[str, Any], num_heads: int) -> ByteTransformer:
    return nnx.merge(_graphdef(_config(params, num_heads)), params)


def adapted_kernel_path(params: dict[str, Any]) -> str:
    """Path of the adapted kernel: ``block_{L-1}/mlp_fc1/kernel`` (the last block's)."""
    num_layers = sum(1 for k in params if k.startswith("block_"))
    return f"block_{num_layers - 1}/mlp_fc1/kernel"


@functools.partial(jax.jit, static_argnames=("num_heads", "prefix"))
def _features(params: dict[str, Any], tokens: jax.Array, num_heads: int, prefix: int) -> jax.Array:
    model = _model(params, num_heads)
    last = f"block_{model.num_layers - 1}"
    # the last block with its MLP output zeroed returns the residual stream entering the MLP
    zeroed = jax.tree.map(jnp.zeros_like, params[last]["mlp_fc2"])
    attn_only = _model({**params, last: {**params[last], "mlp_fc2": zeroed}}, num_heads)
    x = model.embed(tokens)
    x = x + jnp.broadcast_to(model.pos[...][: tokens.shape[-1]], x.shape)
    for i in range(model.num_layers - 1):
        x = getattr(model, f"block_{i}")(x)
    x = getattr(attn_only, last)(x)
    return x[..., prefix - 1 : tokens.shape[-1] - 1, :]


def probe_features(
    params: dict[str, Any], tokens: Any, *, num_heads: int, prefix: int = 48, batch: int = 256
) -> jax.Array:
    """Residual stream entering the last block's MLP at every scored position.

    Args:
      params: the base model (pure dict, :func:`~.language.init_transformer` layout).
      tokens: ``[I, C, P + L]`` candidate windows (:attr:`ProbeSet.tokens`).
      num_heads: attention heads of the model.
      prefix: ``P``; positions ``P - 1 .. P + L - 2`` (those predicting the choice) are kept.
      batch: instances per jitted call.

    Returns:
      ``[I, C, L, d_model]`` float32.
    """
    tokens = np.asarray(tokens)
    out = [
        _features(params, jnp.asarray(tokens[s : s + batch], jnp.int32), num_heads, prefix)
        for s in range(0, tokens.shape[0], batch)
    ]
    return jnp.concatenate(out).astype(jnp.float32)


def choice_scores(
    params: dict[str, Any], features: jax.Array, targets: jax.Array, delta: Any, *, num_heads: int
) -> jax.Array:
    r"""Summed log-probabilities :math:`s_c` of the choices under ``W_1 + delta``.

    Pure and traceable (``vmap`` over instances or over updates works).

    Args:
      params: the base model.
      features: ``[..., L, d]`` from :func:`probe_features`.
      targets: ``[..., L]`` int, the scored bytes (matching ``features``).
      delta: ``None`` or the update of the adapted kernel, ``[d_model, d_mlp]`` (flax
        kernel layout), shared by every leading index (``vmap`` for one per instance).
      num_heads: attention heads of the model.

    Returns:
      ``[...]`` the scores (sum over the ``L`` positions).
    """
    model = _model(params, num_heads)
    block = getattr(model, f"block_{model.num_layers - 1}")
    h = block.ln2(features)
    z = block.mlp_fc1(h)
    if delta is not None:
        z = z + jnp.matmul(h, jnp.asarray(delta).astype(h.dtype))
    y = features + block.mlp_fc2(jax.nn.gelu(z))
    logp = jax.nn.log_softmax(model.head(model.ln_f(y)), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.asarray(targets, jnp.int32)[..., None], axis=-1)
    return picked[..., 0].sum(-1)


def choice_probabilities(scores: jax.Array) -> jax.Array:
    """``softmax`` of the choice scores over the last axis (the model's choice law)."""
    return jax.nn.softmax(jnp.asarray(scores), axis=-1)


def base_gap(scores: Any, label: Any) -> np.ndarray:
    r""":math:`\Delta_\text{base} = p_\text{top} - p_\text{label}` from ``[I, C]`` scores."""
    p = np.asarray(choice_probabilities(scores), np.float64)
    return p.max(-1) - np.take_along_axis(p, np.asarray(label)[:, None], -1)[:, 0]


def probe_survival(delta: Any, members: Any, args: Any, *, num_heads: int) -> jax.Array:
    """Whether each member instance is still answered correctly under ``W_1 + delta``.

    The survival function of :func:`mergetheory.instance_mergeability.partition_mergeability`
    (bind ``num_heads`` with ``functools.partial`` once and reuse the object).

    Args:
      delta: ``[d_model, d_mlp]`` merged update of the adapted kernel.
      members: ``[m]`` int instance indices.
      args: ``(params, features [I, C, L, d], targets [I, C, L], label [I])``.
      num_heads: attention heads of the model.

    Returns:
      ``[m]`` bool, ``argmax_c s_c == label`` per member.
    """
    params, features, targets, label = args

    def one(f: jax.Array, t: jax.Array) -> jax.Array:
        return choice_scores(params, f, t, delta, num_heads=num_heads)

    scores = jax.vmap(one)(features[members], targets[members])
    return jnp.argmax(scores, -1) == jnp.asarray(label)[members]
