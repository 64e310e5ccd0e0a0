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
  """[B, ...] numbers -> flatten -> Linear -> [B, width] float32; for tests whose subject is not
  the towers (compiling the real ViT and text transformer for every objective would dominate
  their time). Like the real towers it computes in `dtype` (params float32) and with `remat`
  rematerialises its layer (`nnx.remat`).

  It has no attention and one layer, so it ignores `attention_impl` and `remat_policy`.

  With `dropout` > 0 (a stochastic tower), dropout on the flattened inputs when the call gets
  `rngs` (training).
  """

  def __init__(self, inputs: jax.ShapeDtypeStruct, *, width: int, dropout: float = 0.0,
               dtype: Any = "float32", remat: bool = False, remat_policy: str = "full",
               attention_impl: str | None = None, rngs: nnx.Rngs):
    del remat_policy, attention_impl
    self.out_features, self.dtype, self.remat = width, jnp.dtype(dtype), remat
    self.dropout = nnx.Dropout(dropout)
    self.dense = nnx.Linear(int(np.prod(inputs.shape[1:])), width, dtype=self.dtype,
                            param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x, *, rngs=None):
    x = jnp.reshape(x, (x.shape[0], -1)).astype(self.dtype)
    x = self.dropout(x, deterministic=rngs is None, rngs=rngs)
    dense = _dense_remat if self.remat else _dense
    return dense(self.dense, x).astype(jnp.float32)


def _dense(layer: nnx.Linear, x: jax.Array) -> jax.Array:
  return layer(x)


_dense_remat = nnx.remat(_dense)
