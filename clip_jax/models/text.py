"""Text transformer tower ("text_transformer").

tokens [B, L] int32 (pad id 0, the EOS token is the last non-pad token) -> token embeddings +
learned position embeddings -> pre-LN transformer (causal or bidirectional; pad tokens are never
attended to as keys) -> final LayerNorm -> pooling -> [B, D] float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clip_jax.models import layers
from clip_jax.models import pooling as pooling_lib
from clip_jax.models.registry import (
    TOWERS, ConfigError, canonical_dtype, check_bool, check_choice, check_divisible,
    check_positive_int, check_positive_number)

Array = jax.Array

TEXT_POOLINGS = ("eos", "last", "mean")
PAD_ID = 0


def attention_mask(tokens: Array, causal: bool, pad_id: int = PAD_ID) -> Array:
  """Bool mask [B, 1, L, L] (True = query may attend to key) for tokens [B, L].

  Pad tokens are masked out as keys; with `causal`, position i also only sees keys j <= i.
  """
  mask = (tokens != pad_id)[:, None, None, :]  # [B, 1, 1, L]: keys
  if causal:
    length = tokens.shape[1]
    mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
  return mask


def embedding_lookup(table: Array, ids: Array) -> Array:
  """table [V, D], ids [B, L] -> [B, L, D].

  When the ids are sharded over explicit mesh axes, the output keeps their sharding (a gather
  needs it spelled out there); otherwise XLA chooses.
  """
  spec = layers.explicit_spec(ids)
  if spec is not None:
    return table.at[ids].get(out_sharding=P(*spec, *(None,) * (ids.ndim + 1 - len(spec))))
  return jnp.take(table, ids, axis=0)


@TOWERS.register("text_transformer")
class TextTransformer(nn.Module):
  """Transformer text tower.

  Attributes:
    vocab_size: number of token ids (ids must lie in [0, vocab_size); 0 is padding).
    context_length: the longest token sequence (the number of position embeddings); inputs
      [B, L] with L <= context_length use the first L positions.
    width: D, the token width.
    depth: number of transformer blocks.
    num_heads: attention heads; must divide `width`.
    mlp_ratio: MLP hidden size as a multiple of `width`.
    causal: causal (True) or bidirectional (False) self-attention.
    pooling: "eos" / "last" (the features at the last non-pad token, index sum(tokens != 0) - 1)
      or "mean" (mean over the non-pad tokens).
    dtype: compute dtype ("float32" | "bfloat16"); params are float32, the output is float32.
    remat: rematerialise each transformer block.
    config_field: the config path of this tower, used in error messages.
  """

  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = True
  pooling: str = "eos"
  dtype: Any = "float32"
  remat: bool = False
  config_field: str = "config.model.towers.<modality>"

  @classmethod
  def check_config(cls, kwargs: dict[str, Any], field: str) -> None:
    """Raises ConfigError (naming `<field>.<attribute>`) for invalid attribute values."""
    for name in ("vocab_size", "context_length", "width", "depth", "num_heads"):
      check_positive_int(kwargs[name], f"{field}.{name}")
    check_positive_number(kwargs.get("mlp_ratio", 4.0), f"{field}.mlp_ratio")
    check_bool(kwargs.get("causal", True), f"{field}.causal")
    check_choice(kwargs.get("pooling", "eos"), TEXT_POOLINGS, f"{field}.pooling")
    check_divisible(kwargs["width"], kwargs["num_heads"], f"{field}.width", f"{field}.num_heads")
    canonical_dtype(kwargs.get("dtype", "float32"), f"{field}.dtype")
    check_bool(kwargs.get("remat", False), f"{field}.remat")

  def _check_tokens(self, tokens: Array) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"{self.config_field}: the text tower expects int token ids [B, L], got "
                       f"{tokens.dtype} {tokens.shape}")
    if tokens.shape[1] > self.context_length:
      raise ConfigError(
          f"config.data.max_len (text length {tokens.shape[1]}) exceeds "
          f"{self.config_field}.context_length = {self.context_length}; make max_len <= "
          "context_length")
    # Concrete, local inputs (e.g. an eager init): check the ids. Skipped under tracing (jit).
    if (not isinstance(tokens, jax.core.Tracer)
        and getattr(tokens, "is_fully_addressable", True) and tokens.size):
      host_tokens = np.asarray(tokens)
      low, high = int(host_tokens.min()), int(host_tokens.max())
      if low < 0 or high >= self.vocab_size:
        raise ConfigError(
            f"token ids span [{low}, {high}] but {self.config_field}.vocab_size = "
            f"{self.vocab_size}; it must exceed the tokenizer's largest id "
            "(config.data.tokenizer.vocab_size)")

  @nn.compact
  def token_features(self, tokens: Array) -> Array:
    """Per-token features after the final LayerNorm: tokens [B, L] -> [B, L, width] (compute
    dtype). Features at pad positions are not meaningful."""
    self._check_tokens(tokens)
    dtype = canonical_dtype(self.dtype, f"{self.config_field}.dtype")
    table = self.param("token_embedding", layers.EMBED_INIT, (self.vocab_size, self.width),
                       jnp.float32)
    x = embedding_lookup(table.astype(dtype), tokens)  # [B, L, D]
    pos = self.param("pos_embedding", layers.EMBED_INIT, (self.context_length, self.width),
                     jnp.float32)
    x = x + pos[:tokens.shape[1]].astype(dtype)[None]
    mask = attention_mask(tokens, self.causal)
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_ratio, dtype, self.remat,
                           name="transformer")(x, mask)
    return layers.layer_norm(dtype, "final_norm")(x)

  def __call__(self, tokens: Array, *, train: bool = False) -> Array:
    """tokens: [B, L] int (pad 0, L <= context_length). Returns [B, width] float32 features.

    `train` is accepted for the tower interface; the tower has no dropout.
    """
    del train
    check_choice(self.pooling, TEXT_POOLINGS, f"{self.config_field}.pooling")
    x = self.token_features(tokens)
    if self.pooling in ("eos", "last"):
      out = pooling_lib.last_token(x, tokens, PAD_ID)
    else:
      out = pooling_lib.masked_mean(x, tokens != PAD_ID)
    return out.astype(jnp.float32)
