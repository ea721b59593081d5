r"""A small decoder-only byte-level transformer in Flax NNX, used on pure-dict parameters.

Like :mod:`.mlp`, NNX is used only at the edges: :func:`init_transformer` builds a
:class:`ByteTransformer` and returns its state as a *pure dict*, and
:func:`transformer_apply` rebuilds the module with ``nnx.merge`` inside the traced
function, so task vectors, merges, checkpoints and ``vmap`` over parameter sets see ordinary
nested dicts of arrays.

The model (GPT-2 style, pre-LayerNorm) maps bytes :math:`x_{1:L} \in \{0..255\}^L` to
next-byte logits:

.. math::

   h^{(0)}_i &= E[x_i] + P_i, \\
   h &\leftarrow h + W_o\,\mathrm{attn}_{\text{causal}}(W_q u, W_k u, W_v u),
        \quad u = \mathrm{LN}_1(h), \\
   h &\leftarrow h + W_2\,\mathrm{gelu}(W_1\,\mathrm{LN}_2(h)), \\
   \text{logits}_i &= W_{\text{head}}\,\mathrm{LN}_f(h_i) + b_{\text{head}},

with learned positions :math:`P`, ``num_layers`` blocks, ``num_heads`` heads and an MLP of
width ``mlp_ratio * d_model``. Layer names are stable strings (``block_0/attn_q``, ...,
``block_0/mlp_fc1``, ``head``): the 2-D ``kernel`` leaves of :data:`LORA_TARGETS` are the
ones LoRA adapts. Kernels are flax's ``[d_in, d_out]`` (``y = x W + b``).

The metric is **bits per byte** (:func:`bits_per_byte`), the mean of
:math:`-\log_2 p_\theta(x_{i+1} \mid x_{\le i})` over predicted bytes.

Reference: Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2,
pre-LN), reconstructed at byte level (``radford2019language`` in ``paper/refs.bib``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .._types import Key

__all__ = [
    "LORA_TARGETS",
    "VOCAB_SIZE",
    "ByteTransformer",
    "TransformerConfig",
    "bits_per_byte",
    "init_transformer",
    "next_byte_loss",
    "transformer_apply",
]

VOCAB_SIZE = 256
LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_fc1", "mlp_fc2")
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
_EMBED_INIT = nnx.initializers.normal(0.02)


class TransformerConfig(NamedTuple):
    """Shape of a :class:`ByteTransformer` (hashable, so it keys compiled programs).

    Attributes:
      d_model: residual width.
      num_layers: number of transformer blocks.
      num_heads: attention heads (``d_model`` must be divisible by it).
      context: maximum sequence length (learned positions).
      mlp_ratio: MLP hidden width / ``d_model``.
    """

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    context: int = 64
    mlp_ratio: int = 4


class _Block(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        d, h = cfg.d_model, cfg.mlp_ratio * cfg.d_model
        self.num_heads = cfg.num_heads
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        for name in ("attn_q", "attn_k", "attn_v", "attn_o"):
            setattr(self, name, nnx.Linear(d, d, kernel_init=_KERNEL_INIT, rngs=rngs))
        self.mlp_fc1 = nnx.Linear(d, h, kernel_init=_KERNEL_INIT, rngs=rngs)
        self.mlp_fc2 = nnx.Linear(h, d, kernel_init=_KERNEL_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        seq, d = x.shape[-2], x.shape[-1]
        nh = self.num_heads
        u = self.ln1(x)

        def heads(y: jax.Array) -> jax.Array:  # [..., L, d] -> [..., H, L, d / H]
            y = y.reshape(y.shape[:-1] + (nh, d // nh))
            return jnp.swapaxes(y, -2, -3)

        q, k, v = heads(self.attn_q(u)), heads(self.attn_k(u)), heads(self.attn_v(u))
        scores = jnp.einsum("...qd,...kd->...qk", q, k) / jnp.asarray(math.sqrt(d // nh), q.dtype)
        causal = jnp.tril(jnp.ones((seq, seq), bool))
        scores = jnp.where(causal, scores, jnp.asarray(-1e30, scores.dtype))
        att = jax.nn.softmax(scores, axis=-1)
        y = jnp.swapaxes(jnp.einsum("...qk,...kd->...qd", att, v), -2, -3)
        x = x + self.attn_o(y.reshape(y.shape[:-2] + (d,)))
        return x + self.mlp_fc2(jax.nn.gelu(self.mlp_fc1(self.ln2(x))))


class ByteTransformer(nnx.Module):
    """Decoder-only byte transformer: ``[..., L]`` bytes -> ``[..., L, 256]`` logits."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        """Build embeddings, ``cfg.num_layers`` pre-LN blocks, final LayerNorm and head."""
        if cfg.d_model % cfg.num_heads:
            raise ValueError(f"d_model = {cfg.d_model} not divisible by num_heads")
        self.num_layers = cfg.num_layers
        self.embed = nnx.Embed(VOCAB_SIZE, cfg.d_model, embedding_init=_EMBED_INIT, rngs=rngs)
        self.pos = nnx.Param(_EMBED_INIT(rngs.params(), (cfg.context, cfg.d_model), jnp.float32))
        for i in range(cfg.num_layers):
            setattr(self, f"block_{i}", _Block(cfg, rngs=rngs))
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, VOCAB_SIZE, kernel_init=_KERNEL_INIT, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-byte logits for every position of ``tokens`` (int, ``[..., L]``)."""
        seq = tokens.shape[-1]
        e = self.embed(tokens)
        x = e + jnp.broadcast_to(self.pos[...][:seq], e.shape)
        for i in range(self.num_layers):
            x = getattr(self, f"block_{i}")(x)
        return self.head(self.ln_f(x))


def _config_of(params: dict[str, Any]) -> TransformerConfig:
    num_layers = sum(1 for k in params if k.startswith("block_"))
    context, d = params["pos"].shape
    h = params["block_0"]["mlp_fc1"]["kernel"].shape[-1]
    return TransformerConfig(int(d), num_layers, -1, int(context), int(h // d))


@functools.lru_cache(maxsize=32)
def _graphdef(cfg: TransformerConfig) -> Any:
    abstract = nnx.eval_shape(lambda: ByteTransformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return graphdef


def init_transformer(key: Key, cfg: TransformerConfig) -> dict[str, Any]:
    """Initialise a :class:`ByteTransformer`; return its parameters as a pure dict (float32).

    Args:
      key: PRNG key of the initialisation.
      cfg: the model's shape.

    Returns:
      ``{"embed": {"embedding"}, "pos", "block_i": {"ln1", "attn_q", ...}, "ln_f", "head"}``.

    Example:
      >>> p = init_transformer(jax.random.key(0), TransformerConfig())
      >>> transformer_apply(p, jnp.zeros((2, 16), jnp.int32), num_heads=4).shape
      (2, 16, 256)
    """
    return _init_pure(key, cfg)


@functools.partial(jax.jit, static_argnums=(1,))
def _init_pure(key: Key, cfg: TransformerConfig) -> dict[str, Any]:
    model = ByteTransformer(cfg, rngs=nnx.Rngs(params=key))
    _, state = nnx.split(model)
    return nnx.to_pure_dict(state)


def transformer_apply(params: dict[str, Any], tokens: jax.Array, *, num_heads: int) -> jax.Array:
    """Logits ``[..., L, 256]`` of the model with parameters ``params`` on ``tokens``.

    Pure and traceable (``vmap`` over stacked parameter sets works).

    Args:
      params: pure parameter dict from :func:`init_transformer`.
      tokens: int bytes ``[..., L]`` with ``L <= context``.
      num_heads: attention heads (not recoverable from the shapes).

    Returns:
      Float32 logits.
    """
    cfg = _config_of(params)._replace(num_heads=num_heads)
    model = nnx.merge(_graphdef(cfg), params)
    return model(jnp.asarray(tokens, jnp.int32))


def next_byte_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    r"""Mean next-byte cross-entropy in nats, :math:`-\frac1N\sum \ln p(x_{i+1})`."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.asarray(targets, jnp.int32)[..., None], axis=-1)
    return -jnp.mean(picked)


def bits_per_byte(logits: jax.Array, targets: jax.Array) -> jax.Array:
    r"""Bits per byte :math:`-\frac1N\sum_i \log_2 p(t_i)` of logits ``[..., 256]``.

    Uniform logits give exactly 8 bits per byte.
    """
    return next_byte_loss(logits, targets) / jnp.asarray(math.log(2.0), logits.dtype)
