"""Pooling of token features [B, L, D] into one feature vector per example [B, D].

Image towers: class token ("cls"), global average ("gap"), multihead attention pooling ("map",
a learned probe attends over the tokens, as in SigLIP, Zhai et al. 2023, "Sigmoid Loss for Language
Image Pre-Training", after Lee et al. 2019's set transformer pooling).
Text towers: the last non-pad (EOS) token ("eos" / "last") or the mean over the tokens before the
trailing padding ("mean").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.models import layers

Array = jax.Array


def class_token(x: Array) -> Array:
  """The features of the first token (the class token): [B, L, D] -> [B, D]."""
  return x[:, 0]


def global_average(x: Array) -> Array:
  """Mean over all tokens, accumulated in float32: [B, L, D] -> [B, D] (float32)."""
  return jnp.mean(x.astype(jnp.float32), axis=1)


def token_lengths(tokens: Array, pad_id: int = 0) -> Array:
  """The length of each row without its padding: 1 + the index of its last non-pad token (the EOS
  token), 0 for a row of pads only. [B, L] -> int32 [B].

  The padding is the run of pad ids at the end of a row; a pad id before the last non-pad token
  is a token of the text (CLIP's vocabulary gives "!" the pad id 0).
  """
  positions = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.int32)[None, :]
  return jnp.max(jnp.where(tokens != pad_id, positions, 0), axis=1)


def valid_tokens(tokens: Array, pad_id: int = 0) -> Array:
  """Bool [B, L]: True at the tokens of each row, False at its trailing padding."""
  lengths = token_lengths(tokens, pad_id)
  return jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :] < lengths[:, None]


def last_token_index(tokens: Array, pad_id: int = 0) -> Array:
  """Index of the last non-pad token (the EOS token), 0 for a row of pads only. [B, L] -> [B]."""
  return jnp.maximum(token_lengths(tokens, pad_id) - 1, 0)


def last_token(x: Array, tokens: Array, pad_id: int = 0) -> Array:
  """Features at the last non-pad token (the EOS token): x [B, L, D], tokens [B, L] -> [B, D]."""
  index = last_token_index(tokens, pad_id)
  # A masked sum rather than a gather: exact, and needs no sharding annotation when the batch
  # dimension is sharded over explicit mesh axes.
  select = jnp.arange(x.shape[1])[None, :] == index[:, None]  # [B, L]
  return jnp.sum(jnp.where(select[..., None], x, jnp.zeros((), x.dtype)), axis=1)


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean over the tokens where `mask` [B, L] is True: [B, L, D] -> [B, D] (float32).

  A row with no True entry gives zeros.
  """
  weights = mask.astype(jnp.float32)[..., None]  # [B, L, 1]
  total = jnp.sum(x.astype(jnp.float32) * weights, axis=1)
  return total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class MAPHead(nnx.Module):
  """Multihead attention pooling: a learned probe [1, 1, D] attends over the tokens, then a
  residual MLP. [B, L, D] -> [B, D].

  Args:
    width: D. num_heads: attention heads (must divide D). mlp_dim: hidden size of the MLP.
    dtype: compute dtype.
    norm_eps: the LayerNorm's epsilon. activation: the MLP's (a name in `layers.ACTIVATIONS`).
    key_bias: the attention's key projection has a bias (`layers.MultiHeadAttention`).
    attention_impl: the attention's implementation (None, or a name in
      `layers.ATTENTION_IMPLS`).
    rngs: `params` stream for the initialisers.
  """

  def __init__(self, width: int, num_heads: int, mlp_dim: int, dtype: Any, *,
               norm_eps: float = layers.NORM_EPS, activation: str = layers.ACTIVATION,
               key_bias: bool = False, attention_impl: str | None = None, rngs: nnx.Rngs):
    self.dtype = dtype
    self.probe = layers.embedding((1, 1, width), rngs)
    self.attn = layers.MultiHeadAttention(width, num_heads, dtype, key_bias=key_bias,
                                          attention_impl=attention_impl, rngs=rngs)
    self.norm = layers.layer_norm(width, dtype, rngs, norm_eps)
    self.mlp = layers.Mlp(width, mlp_dim, dtype, activation=activation, rngs=rngs)

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    """x: [B, L, D]; mask: optional bool [B, L], True for tokens the probe may attend to."""
    # [B, 1, D]; broadcast by adding zeros shaped (and sharded) like the batch.
    probe = self.probe[...].astype(self.dtype) + jnp.zeros_like(x[:, :1], dtype=self.dtype)
    attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L]
    y = self.attn(probe, x, attn_mask)
    y = y + self.mlp(self.norm(y))
    return y[:, 0]
