"""Transformer building blocks shared by the towers.

Shapes: B batch, L (query) tokens, S key tokens, D width, H heads, D/H head dim.

Mixed precision: parameters are always float32 (`param_dtype`); matmuls run in the compute
`dtype` (float32 or bfloat16); attention logits, the softmax and LayerNorm statistics are kept in
float32 whatever the compute dtype. Under a device mesh these modules need no annotations: the
trainer shards the parameters by path and XLA propagates the batch sharding of the inputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# Initialisers shared by the towers.
KERNEL_INIT = nn.initializers.xavier_uniform()
BIAS_INIT = nn.initializers.zeros
EMBED_INIT = nn.initializers.normal(stddev=0.02)


def explicit_spec(x: Array) -> jax.sharding.PartitionSpec | None:
  """The PartitionSpec of `x` if it is sharded over explicit mesh axes, else None."""
  sharding = jax.typeof(x).sharding
  if getattr(sharding.mesh, "explicit_axes", ()):
    return sharding.spec
  return None


def reshape_keep_batch(x: Array, shape: tuple[int, ...]) -> Array:
  """Reshapes `x` [B, ...] to `shape` (shape[0] == B), keeping dimension 0's sharding.

  Under explicit mesh axes JAX needs the output sharding of such reshapes spelled out.
  """
  assert shape[0] == x.shape[0], (shape, x.shape)
  spec = explicit_spec(x)
  if spec is None:
    return jnp.reshape(x, shape)
  out_spec = jax.sharding.PartitionSpec(spec[0] if len(spec) else None, *(None,) * (len(shape) - 1))
  return jnp.reshape(x, shape, out_sharding=out_spec)


def dense(features: int, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
  """A Dense layer with float32 params, xavier-uniform kernel and zero bias."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, name=name)


def layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm with float32 params; its mean and variance are computed in float32."""
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with separate query and key/value inputs.

  Attributes:
    num_heads: H; must divide the width D of the query inputs.
    dtype: compute dtype.
  """

  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries: Array, keys_values: Array, mask: Array | None = None) -> Array:
    """Attends from `queries` [B, L, D] to `keys_values` [B, S, Dkv].

    Args:
      queries: [B, L, D].
      keys_values: [B, S, Dkv].
      mask: optional bool array broadcastable to [B, H, L, S]; True where a query may attend to a
        key. A query row whose keys are all masked gets uniform weights (finite, no NaN).

    Returns:
      [B, L, D] in the compute dtype.
    """
    width = queries.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads

    def heads(x: Array, name: str, use_bias: bool = True) -> Array:
      x = dense(width, self.dtype, name, use_bias=use_bias)(x)
      return reshape_keep_batch(x, (*x.shape[:-1], self.num_heads, head_dim))  # [B, T, H, D/H]

    q = heads(queries, "query")
    # No key bias: q·b_k is the same for every key, so softmax cancels it and its gradient is
    # exactly zero (Adam would turn float noise in it into full-size steps).
    k = heads(keys_values, "key", use_bias=False)
    v = heads(keys_values, "value")
    # Logits are accumulated in float32; masked logits get a large finite negative value.
    logits = jnp.einsum("blhd,bshd->bhls", q, k, preferred_element_type=jnp.float32)
    logits = logits * (head_dim ** -0.5)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # [B, H, L, S]
    out = jnp.einsum("bhls,bshd->blhd", weights, v)
    out = reshape_keep_batch(out, (*out.shape[:-2], width))
    return dense(width, self.dtype, "out")(out)


class Mlp(nn.Module):
  """Dense(hidden) -> GELU -> Dense(width), on [..., D]."""

  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    x = dense(self.hidden_dim, self.dtype, "fc1")(x)
    x = nn.gelu(x)
    return dense(width, self.dtype, "fc2")(x)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)). [B, L, D] -> [B, L, D]."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    """x: [B, L, D]; mask: optional bool broadcastable to [B, H, L, L] (True = may attend)."""
    y = layer_norm(self.dtype, "attn_norm")(x)
    y = MultiHeadAttention(self.num_heads, self.dtype, name="attn")(y, y, mask)
    x = x + y
    y = layer_norm(self.dtype, "mlp_norm")(x)
    y = Mlp(int(round(x.shape[-1] * self.mlp_ratio)), self.dtype, name="mlp")(y)
    return x + y


class Transformer(nn.Module):
  """A stack of `depth` pre-LN blocks named block_0 ... block_{depth-1} (no final norm).

  With `remat=True` each block is rematerialised (`nn.remat`): its activations are recomputed in
  the backward pass instead of stored. The parameters are the same with or without remat.
  """

  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    """x: [B, L, D] in the compute dtype; mask as in EncoderBlock. Returns [B, L, D]."""
    block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    x = x.astype(self.dtype)
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(x, mask)
    return x
