"""Shared by the training tests: a test-only tower that compiles fast."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_jax.models import TOWERS
from clip_jax.registry import REQUIRED

FLAT_TOWER = "_test_flat_tower"


@TOWERS.register(FLAT_TOWER, fields=dict(width=REQUIRED, dropout=0.0))
class FlatTower(nnx.Module):
  """[B, ...] numbers -> flatten -> Linear -> [B, width]; for tests whose subject is not the towers
  (compiling the real ViT and text transformer for every objective would dominate their time).

  With `dropout` > 0 (a stochastic tower), dropout on the flattened inputs when the call gets
  `rngs` (training).
  """

  def __init__(self, inputs: jax.ShapeDtypeStruct, *, width: int, dropout: float = 0.0,
               dtype: Any = "float32", remat: bool = False, rngs: nnx.Rngs):
    del dtype, remat
    self.out_features = width
    self.dropout = nnx.Dropout(dropout)
    self.dense = nnx.Linear(int(np.prod(inputs.shape[1:])), width, rngs=rngs)

  def __call__(self, x, *, rngs=None):
    x = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    return self.dense(self.dropout(x, deterministic=rngs is None, rngs=rngs))
