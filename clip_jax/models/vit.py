"""Vision Transformer tower ("vit"): Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words".

images [B, H, W, C] -> patch embeddings [B, N, D] (N = H*W / patch_size**2) -> + learned position
embeddings -> pre-LN transformer -> final LayerNorm -> pooling -> [B, D] float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models import layers
from clip_jax.models import pooling as pooling_lib
from clip_jax.models.registry import (
    TOWERS, ConfigError, canonical_dtype, check_bool, check_choice, check_divisible,
    check_positive_int, check_positive_number)

Array = jax.Array

VIT_POOLINGS = ("cls", "gap", "map")


@TOWERS.register("vit")
class VisionTransformer(nn.Module):
  """ViT image tower. Also usable for any [B, H, W, C] input (e.g. spectrogram "images").

  Attributes:
    patch_size: side of the square patches; must divide the image height and width.
    width: D, the token width.
    depth: number of transformer blocks.
    num_heads: attention heads; must divide `width`.
    mlp_ratio: MLP hidden size as a multiple of `width`.
    pooling: "cls" (a learned class token prepended to the patches), "gap" (mean over patches) or
      "map" (multihead attention pooling with a learned probe, as in SigLIP).
    dtype: compute dtype ("float32" | "bfloat16"); params are float32, the output is float32.
    remat: rematerialise each transformer block.
    config_field: the config path of this tower, used in error messages.
  """

  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  pooling: str = "map"
  dtype: Any = "float32"
  remat: bool = False
  config_field: str = "config.model.towers.<modality>"

  @classmethod
  def check_config(cls, kwargs: dict[str, Any], field: str) -> None:
    """Raises ConfigError (naming `<field>.<attribute>`) for invalid attribute values."""
    for name in ("patch_size", "width", "depth", "num_heads"):
      check_positive_int(kwargs[name], f"{field}.{name}")
    check_positive_number(kwargs.get("mlp_ratio", 4.0), f"{field}.mlp_ratio")
    check_choice(kwargs.get("pooling", "map"), VIT_POOLINGS, f"{field}.pooling")
    check_divisible(kwargs["width"], kwargs["num_heads"], f"{field}.width", f"{field}.num_heads")
    canonical_dtype(kwargs.get("dtype", "float32"), f"{field}.dtype")
    check_bool(kwargs.get("remat", False), f"{field}.remat")

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False) -> Array:
    """images: [B, H, W, C] float (any dtype). Returns [B, width] float32 features.

    `train` is accepted for the tower interface; the tower has no dropout.
    """
    del train
    dtype = canonical_dtype(self.dtype, f"{self.config_field}.dtype")
    check_choice(self.pooling, VIT_POOLINGS, f"{self.config_field}.pooling")
    if images.ndim != 4:
      raise ValueError(f"{self.config_field}: the vit tower expects [B, H, W, C] inputs, got "
                       f"shape {images.shape}")
    _, height, width_px, _ = images.shape
    p = self.patch_size
    if height % p or width_px % p:
      raise ConfigError(
          f"{self.config_field}.patch_size = {p} must divide the input size {height}x{width_px} "
          "(config.data.image_size for images)")

    # Non-overlapping p x p patches, flattened in (row, column, channel) order, then a Dense
    # layer: the same as a stride-p convolution, and needs no sharding annotations.
    batch, channels = images.shape[0], images.shape[-1]
    rows, cols = height // p, width_px // p
    patches = layers.reshape_keep_batch(images.astype(dtype), (batch, rows, p, cols, p, channels))
    patches = jnp.transpose(patches, (0, 1, 3, 2, 4, 5))  # [B, rows, cols, p, p, C]
    patches = layers.reshape_keep_batch(patches, (batch, rows * cols, p * p * channels))
    x = layers.dense(self.width, dtype, "patch_embed")(patches)  # [B, N, D]
    if self.pooling == "cls":
      cls = self.param("cls", layers.EMBED_INIT, (1, 1, self.width), jnp.float32)
      cls = cls.astype(dtype) + jnp.zeros_like(x[:, :1])  # [B, 1, D], sharded like the batch
      x = jnp.concatenate([cls, x], axis=1)
    pos = self.param("pos_embedding", layers.EMBED_INIT, x.shape[1:], jnp.float32)
    x = x + pos.astype(dtype)[None]

    x = layers.Transformer(self.depth, self.num_heads, self.mlp_ratio, dtype, self.remat,
                           name="transformer")(x)
    x = layers.layer_norm(dtype, "final_norm")(x)

    if self.pooling == "cls":
      out = pooling_lib.class_token(x)
    elif self.pooling == "gap":
      out = pooling_lib.global_average(x)
    else:
      out = pooling_lib.MAPHead(self.num_heads, self.mlp_ratio, dtype, name="map_head")(x)
    return out.astype(jnp.float32)
