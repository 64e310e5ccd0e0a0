"""Transformer building blocks shared by the towers (Flax NNX modules, built eagerly).

Shapes: B batch, L (query) tokens, S key tokens, D width, H heads, D/H head dim.

Mixed precision: parameters are always float32 (`param_dtype`); matmuls run in the compute
`dtype` (float32 or bfloat16); attention logits, the softmax and LayerNorm statistics are kept in
float32 whatever the compute dtype. Under a device mesh these modules need no annotations: the
trainer shards the parameters by path and XLA propagates the batch sharding of the inputs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from clip_jax.registry import ConfigError

Array = jax.Array
Dtype = Any

# Initialisers shared by the towers.
KERNEL_INIT = jax.nn.initializers.xavier_uniform()
BIAS_INIT = jax.nn.initializers.zeros
EMBED_INIT = jax.nn.initializers.normal(stddev=0.02)

# LayerNorm epsilon unless a tower sets `norm_eps` (open_clip and OpenAI CLIP use 1e-5).
NORM_EPS = 1e-6


def quick_gelu(x: Array) -> Array:
  """x * sigmoid(1.702 x), the GELU approximation of OpenAI's CLIP (Hendrycks & Gimpel 2016)."""
  return x * jax.nn.sigmoid(1.702 * x)


# The MLP activations by config name (a tower's `activation` field): "gelu_tanh" is GELU's tanh
# approximation (the default), "gelu" the exact erf form, "quick_gelu" the sigmoid form.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "quick_gelu": quick_gelu,
}
ACTIVATION = "gelu_tanh"

# The implementations of `jax.nn.dot_product_attention` by config name (a tower's or the model's
# `attention_impl`; None: JAX's choice, XLA's today). "cudnn" is cuDNN's fused (flash)
# attention: GPU only, bfloat16 compute, head dims D/H that are multiples of 8 up to 256.
ATTENTION_IMPLS = ("xla", "cudnn")

# The names `EncoderBlock` gives (`jax.ad_checkpoint.checkpoint_name`) to the outputs of its
# costly matmuls, for the remat policies that save them: the query/key/value projections
# [B, L, H, D/H], the attention's output before its output projection [B, L, H, D/H], and the
# MLP's hidden layer before the activation [B, L, mlp_dim].
QKV, ATTENTION_OUT, MLP_HIDDEN = "qkv", "attention_out", "mlp_hidden"

# What a rematerialised block keeps from its forward pass for the backward pass, by config name
# (a tower's or the model's `remat_policy`); everything else is recomputed. "full": only the
# block's input (the least memory, one more forward pass of the block). "dots": every matmul
# output, the attention logits [B, H, L, S] included. "dots_no_batch": the matmuls without batch
# dimensions, i.e. the Linear layers' outputs but not the attention's logits or output.
# "attention": the q/k/v projections and the attention output (the MLP is recomputed).
# "attention_mlp": those and the MLP hidden layer (the activation, LayerNorms and the output
# projections are recomputed).
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "attention": jax.checkpoint_policies.save_only_these_names(QKV, ATTENTION_OUT),
    "attention_mlp": jax.checkpoint_policies.save_only_these_names(QKV, ATTENTION_OUT,
                                                                   MLP_HIDDEN),
}
REMAT_POLICY = "full"


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


def dense(in_features: int, out_features: int, dtype: Dtype, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
  """A Linear layer [..., in] -> [..., out] with float32 params, xavier-uniform kernel and zero
  bias, computing in `dtype`."""
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                    param_dtype=jnp.float32, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT,
                    rngs=rngs)


def layer_norm(width: int, dtype: Dtype, rngs: nnx.Rngs,
               eps: float = NORM_EPS) -> nnx.LayerNorm:
  """LayerNorm over the last axis (D = `width`) with float32 params and epsilon `eps`; its mean
  and variance are computed in float32."""
  return nnx.LayerNorm(width, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                       use_fast_variance=False, rngs=rngs)


def embedding(shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Param:
  """A float32 parameter of `shape` drawn from N(0, 0.02²) (token, position and probe
  embeddings)."""
  return nnx.Param(EMBED_INIT(rngs.params(), shape, jnp.float32))


class MultiHeadAttention(nnx.Module):
  """Multi-head dot-product attention with separate query and key/value inputs of width D.

  The attention itself is `jax.nn.dot_product_attention` with `implementation=attention_impl`:
  logits scaled by (D/H)^-0.5, masked logits set to a large finite negative value, softmax in
  float32 (XLA's: logits accumulated in float32; cuDNN's fused kernel keeps its own float32
  statistics).

  Args:
    width: D, the width of the queries and of the output; `num_heads` must divide it.
    num_heads: H.
    dtype: compute dtype.
    key_bias: give the key projection a bias. q·b_k is the same for every key, so the softmax
      cancels it and its gradient is exactly zero (Adam would turn float noise in it into
      full-size steps); it is there only to hold released weights that have one (open_clip,
      OpenAI, Hugging Face) and give them back as they were.
    attention_impl: None (JAX's choice) or a name in `ATTENTION_IMPLS`.
    rngs: `params` stream for the initialisers.

  Raises:
    ValueError: `num_heads` does not divide `width`.
    ConfigError: "cudnn" with a head dim cuDNN does not take (a multiple of 8, at most 256).
  """

  def __init__(self, width: int, num_heads: int, dtype: Dtype, *, key_bias: bool = False,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    if attention_impl == "cudnn" and (head_dim % 8 or head_dim > 256):
      raise ConfigError(
          f"attention_impl = 'cudnn' (config.model or its tower) needs a head dim (width / "
          f"num_heads) that is a multiple of 8 and at most 256 (128 before Hopper GPUs); got "
          f"{width} / {num_heads} = {head_dim}; use attention_impl = 'xla' for this tower")
    self.num_heads, self.attention_impl = num_heads, attention_impl
    self.query = dense(width, width, dtype, rngs)
    self.key = dense(width, width, dtype, rngs, use_bias=key_bias)
    self.value = dense(width, width, dtype, rngs)
    self.out = dense(width, width, dtype, rngs)

  def __call__(self, queries: Array, keys_values: Array, mask: Array | None = None,
               is_causal: bool = False, key_lengths: Array | None = None) -> Array:
    """Attends from `queries` [B, L, D] to `keys_values` [B, S, D].

    Args:
      queries: [B, L, D].
      keys_values: [B, S, D].
      mask: optional bool array broadcastable to [B, H, L, S]; True where a query may attend to a
        key. A query row whose keys are all masked gets uniform weights (finite, no NaN) from
        XLA's implementation. cuDNN's takes a mask only as a bias [B, H, L, S] (full L and S,
        even lengths in training): mask padding with `key_lengths` instead.
      is_causal: also mask key j > query i (self-attention, L == S).
      key_lengths: optional int32 [B]: keys at positions >= key_lengths[b] are not attended to
        (trailing padding); both implementations take it with or without `is_causal`.

    Returns:
      [B, L, D] in the compute dtype.
    """
    def heads(x: Array, layer: nnx.Linear) -> Array:
      x = layer(x)
      x = reshape_keep_batch(x, (*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads))
      return checkpoint_name(x, QKV)

    q = heads(queries, self.query)
    k, v = heads(keys_values, self.key), heads(keys_values, self.value)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                       key_value_seq_lengths=key_lengths,
                                       implementation=self.attention_impl)  # [B, L, H, D/H]
    out = checkpoint_name(out, ATTENTION_OUT)
    return self.out(reshape_keep_batch(out, (*out.shape[:-2], out.shape[-2] * out.shape[-1])))


class Mlp(nnx.Module):
  """Linear(D -> hidden) -> activation -> Linear(hidden -> D), on [..., D].

  `activation` names one of `ACTIVATIONS` (default GELU, tanh approximation).
  """

  def __init__(self, width: int, hidden_dim: int, dtype: Dtype, *,
               activation: str = ACTIVATION, rngs: nnx.Rngs):
    self.activation = activation
    self.fc1 = dense(width, hidden_dim, dtype, rngs)
    self.fc2 = dense(hidden_dim, width, dtype, rngs)

  def __call__(self, x: Array) -> Array:
    hidden = checkpoint_name(self.fc1(x), MLP_HIDDEN)
    return self.fc2(ACTIVATIONS[self.activation](hidden))


class EncoderBlock(nnx.Module):
  """Transformer block, [B, L, D] -> [B, L, D]: pre-LN, x + MHSA(LN(x)) then x + MLP(LN(x)), or
  with `post_norm` post-LN as in BERT (Devlin et al. 2019), LN(x + MHSA(x)) then LN(x + MLP(x))
  (`attn_norm` then follows the attention, `mlp_norm` the MLP).

  `norm_eps`: the LayerNorms' epsilon; `activation`: the MLP's (a name in `ACTIVATIONS`);
  `key_bias` and `attention_impl`: as in `MultiHeadAttention`. The outputs of the costly matmuls
  are named (`QKV`, `ATTENTION_OUT`, `MLP_HIDDEN`) for the remat policies.
  """

  def __init__(self, width: int, num_heads: int, mlp_dim: int, dtype: Dtype, *,
               norm_eps: float = NORM_EPS, activation: str = ACTIVATION,
               post_norm: bool = False, key_bias: bool = False,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    self.post_norm = post_norm
    self.attn_norm = layer_norm(width, dtype, rngs, norm_eps)
    self.attn = MultiHeadAttention(width, num_heads, dtype, key_bias=key_bias,
                                   attention_impl=attention_impl, rngs=rngs)
    self.mlp_norm = layer_norm(width, dtype, rngs, norm_eps)
    self.mlp = Mlp(width, mlp_dim, dtype, activation=activation, rngs=rngs)

  def __call__(self, x: Array, key_lengths: Array | None = None,
               is_causal: bool = False) -> Array:
    """x: [B, L, D]; key_lengths: optional int32 [B], tokens at positions >= key_lengths[b] are
    not attended to (trailing padding); is_causal: token i attends to tokens j <= i only."""
    if self.post_norm:
      x = self.attn_norm(x + self.attn(x, x, is_causal=is_causal, key_lengths=key_lengths))
      return self.mlp_norm(x + self.mlp(x))
    y = self.attn_norm(x)
    x = x + self.attn(y, y, is_causal=is_causal, key_lengths=key_lengths)
    return x + self.mlp(self.mlp_norm(x))


def _call_block(block: EncoderBlock, x: Array, key_lengths: Array | None,
                is_causal: bool) -> Array:
  return block(x, key_lengths, is_causal)


# The same call, rematerialised under each remat policy: the activations the policy does not
# save are recomputed in the backward pass.
_CALL_BLOCK_REMAT = {name: nnx.remat(_call_block, static_argnums=(3,), policy=policy)
                     for name, policy in REMAT_POLICIES.items()}


class Transformer(nnx.Module):
  """A stack of `depth` pre-LN (or, with `post_norm`, post-LN) blocks named block_0 ...
  block_{depth-1} (no final norm).

  With `remat=True` each block is rematerialised (`nnx.remat`): the activations that
  `remat_policy` (a name in `REMAT_POLICIES`) does not save are recomputed in the backward pass
  instead of stored. The parameters are the same with or without remat.

  Args:
    width: D. num_heads: H (divides D). mlp_dim: the MLP's hidden size.
    dtype: compute dtype; the input is cast to it.
    remat, remat_policy: as above (the policy is not used without remat).
    norm_eps, activation, post_norm, key_bias, attention_impl: as in `EncoderBlock`.
  """

  def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, dtype: Dtype,
               remat: bool, *, remat_policy: str = REMAT_POLICY, norm_eps: float = NORM_EPS,
               activation: str = ACTIVATION, post_norm: bool = False, key_bias: bool = False,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    if remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {remat_policy!r} is not one of {list(REMAT_POLICIES)}")
    self.depth, self.dtype, self.remat, self.remat_policy = depth, dtype, remat, remat_policy
    for i in range(depth):
      setattr(self, f"block_{i}", EncoderBlock(width, num_heads, mlp_dim, dtype,
                                               norm_eps=norm_eps, activation=activation,
                                               post_norm=post_norm, key_bias=key_bias,
                                               attention_impl=attention_impl, rngs=rngs))

  def __call__(self, x: Array, key_lengths: Array | None = None,
               is_causal: bool = False) -> Array:
    """x: [B, L, D]; key_lengths and is_causal as in EncoderBlock. Returns [B, L, D] (compute
    dtype)."""
    call = _CALL_BLOCK_REMAT[self.remat_policy] if self.remat else _call_block
    x = x.astype(self.dtype)
    for i in range(self.depth):
      x = call(getattr(self, f"block_{i}"), x, key_lengths, is_causal)
    return x
