"""Shared by the training tests: a test-only tower that compiles fast."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from clip_jax.models import TOWERS

FLAT_TOWER = "_test_flat_tower"


@TOWERS.register(FLAT_TOWER)
class FlatTower(nn.Module):
  """[B, ...] numbers -> flatten -> Dense -> [B, width]; for tests whose subject is not the towers
  (compiling the real ViT and text transformer for every objective would dominate their time)."""

  width: int
  dtype: Any = "float32"
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return nn.Dense(self.width)(jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32))
