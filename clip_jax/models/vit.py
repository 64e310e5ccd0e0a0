"""Vision Transformer tower ("vit"): Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words".

images [B, H, W, C] -> patch embeddings [B, N, D] (N = (H // p) * (W // p), p = patch_size) -> + position
embeddings -> (optional LayerNorm, `pre_norm`) -> pre-LN transformer -> final LayerNorm -> pooling
-> [B, D] float32.

Named sizes: `variant="B/16"` sets width, depth, heads and MLP size from `VIT_SIZES` and the patch
size from the number after the slash; fields given explicitly override the size's values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.models import layers
from clip_jax.models import pooling as pooling_lib
from clip_jax import schema
from clip_jax.models.registry import (GENERIC_FIELD, TOWERS, ConfigError, TransformerFields,
                                      canonical_dtype, resolve_size)

Array = jax.Array

VIT_POOLINGS = ("cls", "gap", "map")

# Named ViT sizes: (width D, depth, heads, MLP hidden size). Ti/S/B/L/H: Dosovitskiy et al. 2021
# and Touvron et al. 2021; M, g, G: Zhai et al. 2022 ("Scaling Vision Transformers"); So400m:
# Alabdulmohsin et al. 2023 ("Getting ViT in Shape"), the SigLIP shape-optimised 400M model.
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
    "G": (1664, 48, 16, 8192),
    "So400m": (1152, 27, 16, 4304),
}

@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTFields(TransformerFields):
  """The config fields of the "vit" tower (see `VisionTransformer`)."""

  SIZES: ClassVar[Mapping[str, tuple[int, int, int, int]]] = VIT_SIZES
  WITH_PATCH: ClassVar[bool] = True

  patch_size: int | None = schema.field(None, schema.integer(low=1))
  pooling: str = schema.field("map", schema.one_of(*VIT_POOLINGS))
  pre_norm: bool = False
  patch_bias: bool = True


@TOWERS.register("vit", fields=ViTFields)
class VisionTransformer(nnx.Module):
  """ViT image tower. Also usable for any [B, H, W, C] input (e.g. spectrogram "images").

  Args (the config fields, `ViTFields`):
    inputs: the shape of the batch entry it reads, [B, H, W, C] (B is not used).
    variant: a named size "<size>/<patch>" (e.g. "B/16", "So400m/14"; sizes in VIT_SIZES), or
      None: then patch_size, width, depth and num_heads must be given.
    patch_size: side of the square patches. A remainder of the image side is dropped (the last
      H mod patch_size rows and W mod patch_size columns), as a stride-p convolution without
      padding drops it: SigLIP So400m/14 at 384 px sees 27 x 27 patches of 378 x 378 px.
    width: D, the token width.
    depth: number of transformer blocks.
    num_heads: attention heads; must divide `width`.
    mlp_ratio: MLP hidden size as a multiple of `width` (default: the variant's, else 4).
    pooling: "cls" (a learned class token prepended to the patches), "gap" (mean over patches) or
      "map" (multihead attention pooling with a learned probe, as in SigLIP).
    norm_eps: the epsilon of every LayerNorm.
    activation: the MLPs' nonlinearity, a name in `layers.ACTIVATIONS`.
    pre_norm: a LayerNorm ("pre_norm") on the tokens after the position embeddings, before the
      first block (CLIP's ln_pre).
    patch_bias: the patch embedding has a bias (CLIP's has none).
    key_bias: every attention (blocks and MAP head) has a key bias (`layers.MultiHeadAttention`).
    dtype: compute dtype ("float32" | "bfloat16"); params are float32, the output is float32.
    remat: rematerialise each transformer block.
    remat_policy: what a rematerialised block saves (a name in `layers.REMAT_POLICIES`).
    attention_impl: every attention's implementation (None, or a name in
      `layers.ATTENTION_IMPLS`).
    rngs: the `params` stream draws the initial parameters.

  The model checks the config (`ViTFields`) and the input shape (`check_inputs`) before it
  builds the tower.
  """

  def __init__(self, inputs: jax.ShapeDtypeStruct, *, variant: str | None = None,
               patch_size: int | None = None, width: int | None = None,
               depth: int | None = None, num_heads: int | None = None,
               mlp_ratio: float | None = None, pooling: str = "map",
               norm_eps: float = layers.NORM_EPS, activation: str = layers.ACTIVATION,
               pre_norm: bool = False, patch_bias: bool = True, key_bias: bool = False,
               dtype: Any = "float32", remat: bool = False,
               remat_policy: str = layers.REMAT_POLICY, attention_impl: str | None = None,
               rngs: nnx.Rngs):
    given = dict(variant=variant, patch_size=patch_size, width=width, depth=depth,
                 num_heads=num_heads, mlp_ratio=mlp_ratio)
    shape = resolve_size(given, VIT_SIZES, GENERIC_FIELD, with_patch=True)
    dtype = canonical_dtype(dtype, f"{GENERIC_FIELD}.dtype")
    _, height, width_px, channels = inputs.shape
    p, width = shape["patch_size"], shape["width"]
    num_tokens = (height // p) * (width_px // p) + (pooling == "cls")
    self.patch_size, self.pooling, self.dtype, self.out_features = p, pooling, dtype, width
    self.patch_embed = layers.dense(p * p * channels, width, dtype, rngs, use_bias=patch_bias)
    if pooling == "cls":
      self.cls = layers.embedding((1, 1, width), rngs)
    self.pos_embedding = layers.embedding((num_tokens, width), rngs)
    self.pre_norm = layers.layer_norm(width, dtype, rngs, norm_eps) if pre_norm else None
    self.transformer = layers.Transformer(width, shape["depth"], shape["num_heads"],
                                          shape["mlp_dim"], dtype, remat,
                                          remat_policy=remat_policy, norm_eps=norm_eps,
                                          activation=activation, key_bias=key_bias,
                                          attention_impl=attention_impl, rngs=rngs)
    self.final_norm = layers.layer_norm(width, dtype, rngs, norm_eps)
    if pooling == "map":
      self.map_head = pooling_lib.MAPHead(width, shape["num_heads"], shape["mlp_dim"], dtype,
                                          norm_eps=norm_eps, activation=activation,
                                          key_bias=key_bias, attention_impl=attention_impl,
                                          rngs=rngs)

  @classmethod
  def check_inputs(cls, kwargs: dict[str, Any], field: str, inputs: jax.ShapeDtypeStruct) -> None:
    """Raises ConfigError (naming `<field>.<attribute>`) for inputs that are not [B, H, W, C]
    with H and W at least the patch size."""
    shape = resolve_size(kwargs, VIT_SIZES, field, with_patch=True)
    if len(inputs.shape) != 4:
      raise ConfigError(f"{field}: the vit tower expects [B, H, W, C] inputs, got shape "
                        f"{tuple(inputs.shape)}")
    _, height, width_px, _ = inputs.shape
    p = shape["patch_size"]
    if height < p or width_px < p:
      raise ConfigError(
          f"{field}.patch_size = {p} is larger than the input size {height}x{width_px} "
          "(config.data.image_size for images)")

  def __call__(self, images: Array, *, rngs: nnx.Rngs | None = None) -> Array:
    """images: [B, H, W, C] float (any dtype), H and W as at construction. Returns [B, width]
    float32 features.

    `rngs` is accepted for the tower interface; the tower has no stochastic layers.
    """
    del rngs
    # Non-overlapping p x p patches, flattened in (row, column, channel) order, then a Linear
    # layer: the same as a stride-p convolution, and needs no sharding annotations.
    batch, height, width_px, channels = images.shape
    p = self.patch_size
    rows, cols = height // p, width_px // p
    images = images[:, :rows * p, :cols * p]  # the remainder dropped (a no-op when p divides)
    patches = layers.reshape_keep_batch(images.astype(self.dtype),
                                        (batch, rows, p, cols, p, channels))
    patches = jnp.transpose(patches, (0, 1, 3, 2, 4, 5))  # [B, rows, cols, p, p, C]
    patches = layers.reshape_keep_batch(patches, (batch, rows * cols, p * p * channels))
    x = self.patch_embed(patches)  # [B, N, D]
    if self.pooling == "cls":
      cls = self.cls[...].astype(self.dtype) + jnp.zeros_like(x[:, :1])  # [B, 1, D], batch-sharded
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.pos_embedding[...].astype(self.dtype)[None]
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    x = self.final_norm(self.transformer(x))

    if self.pooling == "cls":
      out = pooling_lib.class_token(x)
    elif self.pooling == "gap":
      out = pooling_lib.global_average(x)
    else:
      out = self.map_head(x)
    return out.astype(jnp.float32)
