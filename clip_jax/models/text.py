"""Text transformer tower ("text_transformer").

tokens [B, L] int32 (pad id 0, the EOS token is the last non-pad token) -> token embeddings +
learned position embeddings -> pre-LN transformer (causal or bidirectional; pad tokens are not
attended to as keys unless `key_mask=False`) -> final LayerNorm -> pooling -> (optional Linear
`head` with bias) -> [B, D] float32. The padding is the run of pad ids after the last non-pad
token (`pooling.token_lengths`): a pad id inside the text, CLIP's "!" (id 0), is an ordinary
token. Hugging Face's SigLIP text tower is `causal=False, key_mask=False,
pooling="last_position", head=True`: every position, pads included, is attended to, and the
features of the last position (a pad in a padded row) are pooled.

Named sizes: `variant="B"` sets width, depth, heads and MLP size from `TEXT_SIZES` (CLIP's text
tower for a ViT-B image tower); fields given explicitly override the size's values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from clip_jax.models import layers
from clip_jax.models import pooling as pooling_lib
from clip_jax import schema
from clip_jax.models.registry import (GENERIC_FIELD, TOWERS, ConfigError, TransformerFields,
                                      canonical_dtype, resolve_size)

Array = jax.Array

TEXT_POOLINGS = ("eos", "last", "mean", "last_position")
PAD_ID = 0

# Named sizes of CLIP's text towers, by the image tower they go with: (width D, depth, heads,
# MLP hidden size). S to G: Radford et al. 2021 and OpenCLIP (Cherti et al. 2023); So400m: the
# SigLIP So400m text tower (Zhai et al. 2023), shaped like its image tower.
TEXT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (512, 12, 8, 2048),
    "L": (768, 12, 12, 3072),
    "H": (1024, 12, 16, 4096),
    "g": (1024, 12, 16, 4096),
    "G": (1280, 32, 20, 5120),
    "So400m": (1152, 27, 16, 4304),
}

@dataclasses.dataclass(frozen=True, kw_only=True)
class TextFields(TransformerFields):
  """The config fields of the "text_transformer" tower (see `TextTransformer`)."""

  SIZES: ClassVar[Mapping[str, tuple[int, int, int, int]]] = TEXT_SIZES

  vocab_size: int = schema.field(check=schema.integer(low=1))
  context_length: int = schema.field(check=schema.integer(low=1))
  causal: bool = True
  pooling: str = schema.field("eos", schema.one_of(*TEXT_POOLINGS))
  key_mask: bool = True
  head: bool = False


def embedding_lookup(table: Array, ids: Array) -> Array:
  """table [V, D], ids [B, L] -> [B, L, D].

  When the ids are sharded over explicit mesh axes, the output keeps their sharding (a gather
  needs it spelled out there); otherwise XLA chooses.
  """
  spec = layers.explicit_spec(ids)
  if spec is not None:
    return table.at[ids].get(out_sharding=P(*spec, *(None,) * (ids.ndim + 1 - len(spec))))
  return jnp.take(table, ids, axis=0)


def check_token_inputs(kwargs: dict[str, Any], field: str,
                       inputs: jax.ShapeDtypeStruct) -> None:
  """Raises ConfigError (naming `<field>.<attribute>`) for inputs that are not int ids [B, L]
  with L <= kwargs["context_length"] (a text tower's `check_inputs`)."""
  if len(inputs.shape) != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
    raise ConfigError(f"{field}: the text tower expects int token ids [B, L], got "
                      f"{inputs.dtype} {tuple(inputs.shape)}")
  if inputs.shape[1] > kwargs["context_length"]:
    raise ConfigError(
        f"config.data.max_len (text length {inputs.shape[1]}) exceeds "
        f"{field}.context_length = {kwargs['context_length']}; make max_len <= "
        "context_length")


def check_ids(tokens: Array, vocab_size: int) -> None:
  """Concrete, local inputs (an eager call): the ids [B, L] must lie in [0, vocab_size).
  Skipped under tracing (jit).

  Raises:
    ConfigError naming config.data.tokenizer.vocab_size.
  """
  if (not isinstance(tokens, jax.core.Tracer)
      and getattr(tokens, "is_fully_addressable", True) and tokens.size):
    host_tokens = np.asarray(tokens)
    low, high = int(host_tokens.min()), int(host_tokens.max())
    if low < 0 or high >= vocab_size:
      raise ConfigError(
          f"token ids span [{low}, {high}] but the text tower's vocab_size = "
          f"{vocab_size}; it must exceed the tokenizer's largest id "
          "(config.data.tokenizer.vocab_size)")


@TOWERS.register("text_transformer", fields=TextFields)
class TextTransformer(nnx.Module):
  """Transformer text tower.

  Args (the config fields, `TextFields`):
    inputs: the shape of the batch entry it reads, int token ids [B, L], L <= context_length.
    variant: a named CLIP text size (e.g. "B", "L", "So400m"; sizes in TEXT_SIZES), or None: then
      width, depth and num_heads must be given.
    vocab_size: number of token ids (ids must lie in [0, vocab_size); 0 is padding).
    context_length: the longest token sequence (the number of position embeddings); inputs
      [B, L] with L <= context_length use the first L positions.
    width: D, the token width.
    depth: number of transformer blocks.
    num_heads: attention heads; must divide `width`.
    mlp_ratio: MLP hidden size as a multiple of `width` (default: the variant's, else 4).
    causal: causal (True) or bidirectional (False) self-attention.
    pooling: "eos" / "last" (the features at the last non-pad token), "mean" (mean over the
      tokens before the trailing padding) or "last_position" (the features at position L - 1,
      whatever the token there).
    key_mask: mask the trailing pad tokens as attention keys (False: every token is attended
      to, as in Hugging Face's SigLIP).
    head: a Linear layer D -> D with bias ("head") on the pooled features (SigLIP's text head).
    norm_eps: the epsilon of every LayerNorm.
    activation: the MLPs' nonlinearity, a name in `layers.ACTIVATIONS`.
    key_bias: every attention has a key bias (`layers.MultiHeadAttention`).
    dtype: compute dtype ("float32" | "bfloat16"); params are float32, the output is float32.
    remat: rematerialise each transformer block.
    remat_policy: what a rematerialised block saves (a name in `layers.REMAT_POLICIES`).
    attention_impl: every attention's implementation (None, or a name in
      `layers.ATTENTION_IMPLS`).
    rngs: the `params` stream draws the initial parameters.

  The model checks the config (`TextFields`) and the input shape (`check_inputs`) before it
  builds the tower.
  """

  def __init__(self, inputs: jax.ShapeDtypeStruct, *, vocab_size: int, context_length: int,
               variant: str | None = None, width: int | None = None, depth: int | None = None,
               num_heads: int | None = None, mlp_ratio: float | None = None,
               causal: bool = True, pooling: str = "eos", key_mask: bool = True,
               head: bool = False, norm_eps: float = layers.NORM_EPS,
               activation: str = layers.ACTIVATION, key_bias: bool = False,
               dtype: Any = "float32", remat: bool = False,
               remat_policy: str = layers.REMAT_POLICY, attention_impl: str | None = None,
               rngs: nnx.Rngs):
    del inputs  # any length up to context_length
    given = dict(variant=variant, width=width, depth=depth, num_heads=num_heads,
                 mlp_ratio=mlp_ratio)
    shape = resolve_size(given, TEXT_SIZES, GENERIC_FIELD, with_patch=False)
    dtype = canonical_dtype(dtype, f"{GENERIC_FIELD}.dtype")
    width = shape["width"]
    self.vocab_size, self.causal, self.pooling = vocab_size, causal, pooling
    self.key_mask = key_mask
    self.dtype, self.out_features = dtype, width
    self.token_embedding = layers.embedding((vocab_size, width), rngs)
    self.pos_embedding = layers.embedding((context_length, width), rngs)
    self.transformer = layers.Transformer(width, shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], dtype, remat,
                                          remat_policy=remat_policy, norm_eps=norm_eps,
                                          activation=activation, key_bias=key_bias,
                                          attention_impl=attention_impl, rngs=rngs)
    self.final_norm = layers.layer_norm(width, dtype, rngs, norm_eps)
    self.head = layers.dense(width, width, dtype, rngs) if head else None

  @classmethod
  def check_inputs(cls, kwargs: dict[str, Any], field: str, inputs: jax.ShapeDtypeStruct) -> None:
    """As `check_token_inputs`."""
    check_token_inputs(kwargs, field, inputs)

  def token_features(self, tokens: Array) -> Array:
    """Per-token features after the final LayerNorm: tokens [B, L] -> [B, L, width] (compute
    dtype). Features at pad positions are not meaningful with `key_mask`."""
    check_ids(tokens, self.vocab_size)
    x = embedding_lookup(self.token_embedding[...].astype(self.dtype), tokens)  # [B, L, D]
    x = x + self.pos_embedding[:tokens.shape[1]].astype(self.dtype)[None]
    # The trailing pads are masked as keys by length (cuDNN's attention takes that form).
    lengths = pooling_lib.token_lengths(tokens, PAD_ID) if self.key_mask else None
    x = self.transformer(x, lengths, is_causal=self.causal)
    return self.final_norm(x)

  def __call__(self, tokens: Array, *, rngs: nnx.Rngs | None = None) -> Array:
    """tokens: [B, L] int (pad 0, L <= context_length). Returns [B, width] float32 features.

    `rngs` is accepted for the tower interface; the tower has no stochastic layers.
    """
    del rngs
    x = self.token_features(tokens)
    if self.pooling in ("eos", "last"):
      out = pooling_lib.last_token(x, tokens, PAD_ID)
    elif self.pooling == "last_position":
      out = x[:, -1]
    else:
      out = pooling_lib.masked_mean(x, pooling_lib.valid_tokens(tokens, PAD_ID))
    if self.head is not None:
      out = self.head(out)
    return out.astype(jnp.float32)
