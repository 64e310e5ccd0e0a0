"""BERT text tower ("bert"): the encoder of BERT (Devlin et al. 2019) and of the sentence
encoders built on it (sentence-transformers' all-MiniLM-L6-v2, Reimers & Gurevych 2019).

tokens [B, L] int32 (BERT rows `[CLS] text [SEP] 0 ...`, as the "tokenizer_json" tokenizer lays
them out) -> token embeddings + learned position embeddings + the embedding of token type 0 ->
LayerNorm -> post-LN transformer blocks (bidirectional; the trailing pad tokens are never attended
to as keys; `layers.EncoderBlock` with `post_norm`) -> pooling -> [B, D] float32. Pooling "mean"
averages the features of the tokens before the trailing padding, [CLS] and [SEP] included
(sentence-transformers' mean pooling); "cls" takes the first token's.

As Hugging Face's `BertModel` with every token of type 0 and BERT's attention mask (1 up to the
last non-pad token), up to float rounding: the attention's key bias is left out unless
`key_bias` (softmax cancels it exactly, `layers.MultiHeadAttention`), and so is the pooler (a
dense layer on [CLS] that sentence encoders do not use). Parameters: `token_embedding` [V, D],
`pos_embedding` [P, D], `type_embedding` [D], `embed_norm`, `transformer/block_<i>` (`attn_norm`
after the attention, `mlp_norm` after the MLP).

Named sizes: `variant="MiniLM-L6"` (all-MiniLM-L6-v2), "MiniLM-L12", "BERT-base", "BERT-large"
set width, depth, heads and MLP size from `BERT_SIZES`; fields given explicitly override them.
The LayerNorm epsilon defaults to BERT's 1e-12 and the MLP activation to exact GELU.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax import schema
from clip_jax.models import layers
from clip_jax.models import pooling as pooling_lib
from clip_jax.models import text as text_lib
from clip_jax.models.registry import (GENERIC_FIELD, TOWERS, TransformerFields, canonical_dtype,
                                      resolve_size)

Array = jax.Array

BERT_POOLINGS = ("mean", "cls")
# BERT's LayerNorm epsilon.
BERT_NORM_EPS = 1e-12

# (width D, depth, heads, MLP hidden size): MiniLM (Wang et al. 2020) as released for
# sentence-transformers' all-MiniLM-L{6,12}-v2, BERT base and large (Devlin et al. 2019).
BERT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "MiniLM-L6": (384, 6, 12, 1536),
    "MiniLM-L12": (384, 12, 12, 1536),
    "BERT-base": (768, 12, 12, 3072),
    "BERT-large": (1024, 24, 16, 4096),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertFields(TransformerFields):
  """The config fields of the "bert" tower (see `BertEncoder`)."""

  SIZES: ClassVar[Mapping[str, tuple[int, int, int, int]]] = BERT_SIZES

  vocab_size: int = schema.field(check=schema.integer(low=1))
  context_length: int = schema.field(check=schema.integer(low=1))
  pooling: str = schema.field("mean", schema.one_of(*BERT_POOLINGS))
  norm_eps: float = schema.field(BERT_NORM_EPS, schema.number(low=0, low_open=True))
  activation: str = schema.field("gelu", schema.one_of(*layers.ACTIVATIONS))


@TOWERS.register("bert", fields=BertFields)
class BertEncoder(nnx.Module):
  """BERT encoder tower (module docstring).

  Args (the config fields, `BertFields`):
    inputs: the shape of the batch entry it reads, int token ids [B, L], L <= context_length.
    variant: a named size (`BERT_SIZES`, e.g. "MiniLM-L6"), or None: then width, depth and
      num_heads must be given.
    vocab_size: number of token ids (ids must lie in [0, vocab_size); 0 is padding). MiniLM and
      BERT's uncased WordPiece vocabulary: 30522.
    context_length: the number of position embeddings (BERT: 512); inputs [B, L] with
      L <= context_length use the first L positions.
    width, depth, num_heads, mlp_ratio: the transformer's shape (default: the variant's).
    pooling: "mean" (over the tokens before the trailing padding) or "cls" (the first token).
    norm_eps: the epsilon of every LayerNorm (default BERT's 1e-12).
    activation: the MLPs' nonlinearity, a name in `layers.ACTIVATIONS` (default exact "gelu").
    key_bias: every attention has a key bias (`layers.MultiHeadAttention`).
    dtype: compute dtype ("float32" | "bfloat16"); params are float32, the output is float32.
    remat: rematerialise each transformer block.
    remat_policy: what a rematerialised block saves (a name in `layers.REMAT_POLICIES`).
    attention_impl: every attention's implementation (None, or a name in
      `layers.ATTENTION_IMPLS`).
    rngs: the `params` stream draws the initial parameters.
  """

  def __init__(self, inputs: jax.ShapeDtypeStruct, *, vocab_size: int, context_length: int,
               variant: str | None = None, width: int | None = None, depth: int | None = None,
               num_heads: int | None = None, mlp_ratio: float | None = None,
               pooling: str = "mean", norm_eps: float = BERT_NORM_EPS,
               activation: str = "gelu", key_bias: bool = False, dtype: Any = "float32",
               remat: bool = False, remat_policy: str = layers.REMAT_POLICY,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    del inputs  # any length up to context_length
    given = dict(variant=variant, width=width, depth=depth, num_heads=num_heads,
                 mlp_ratio=mlp_ratio)
    shape = resolve_size(given, BERT_SIZES, GENERIC_FIELD, with_patch=False)
    dtype = canonical_dtype(dtype, f"{GENERIC_FIELD}.dtype")
    width = shape["width"]
    self.vocab_size, self.pooling = vocab_size, pooling
    self.dtype, self.out_features = dtype, width
    self.token_embedding = layers.embedding((vocab_size, width), rngs)
    self.pos_embedding = layers.embedding((context_length, width), rngs)
    self.type_embedding = layers.embedding((width,), rngs)
    self.embed_norm = layers.layer_norm(width, dtype, rngs, norm_eps)
    self.transformer = layers.Transformer(width, shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], dtype, remat,
                                          remat_policy=remat_policy, norm_eps=norm_eps,
                                          activation=activation, post_norm=True,
                                          key_bias=key_bias,
                                          attention_impl=attention_impl, rngs=rngs)

  @classmethod
  def check_inputs(cls, kwargs: dict[str, Any], field: str, inputs: jax.ShapeDtypeStruct) -> None:
    """As `text.check_token_inputs`."""
    text_lib.check_token_inputs(kwargs, field, inputs)

  def token_features(self, tokens: Array) -> Array:
    """Per-token features of the last block: tokens [B, L] -> [B, L, width] (compute dtype).
    Features at pad positions are not meaningful."""
    text_lib.check_ids(tokens, self.vocab_size)
    x = text_lib.embedding_lookup(self.token_embedding[...], tokens)  # [B, L, D] float32
    x = x + self.type_embedding[...] + self.pos_embedding[:tokens.shape[1]][None]
    x = self.embed_norm(x.astype(self.dtype))
    return self.transformer(x, pooling_lib.token_lengths(tokens, text_lib.PAD_ID))

  def __call__(self, tokens: Array, *, rngs: nnx.Rngs | None = None) -> Array:
    """tokens: [B, L] int (pad 0, L <= context_length). Returns [B, width] float32 features.

    `rngs` is accepted for the tower interface; the tower has no stochastic layers (BERT's
    dropout is left out).
    """
    del rngs
    x = self.token_features(tokens)
    if self.pooling == "cls":
      return pooling_lib.class_token(x).astype(jnp.float32)
    return pooling_lib.masked_mean(x, pooling_lib.valid_tokens(tokens, text_lib.PAD_ID))
