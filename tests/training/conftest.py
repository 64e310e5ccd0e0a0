"""Shared by the training tests: a test-only tower that compiles fast."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from clip_jax.models import TOWERS

FLAT_TOWER = "_test_flat_tower"


@TOWERS.register(FLAT_TOWER)
class FlatTower(nn.Module):
  """[B, ...] numbers -> flatten -> Dense -> [B, width] float32; for tests whose subject is not
  the towers (compiling the real ViT and text transformer for every objective would dominate
  their time). Like the real towers it computes in `dtype` (params float32) and with `remat`
  rematerialises its layer (`nn.remat`)."""

  width: int
  dtype: Any = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    dense_cls = nn.remat(nn.Dense) if self.remat else nn.Dense
    x = jnp.reshape(x, (x.shape[0], -1)).astype(self.dtype)
    dense = dense_cls(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="dense")
    return dense(x).astype(jnp.float32)
