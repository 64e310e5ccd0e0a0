"""The composite objective: a weighted sum of named registered terms."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import clip_jax.losses as losses
import losses_reference as ref  # tests/losses/reference.py, registered by conftest.py
from clip_jax.registry import ConfigError


def _config(**terms):
  return ml_collections.ConfigDict(dict(
      name="composite", terms={k: dict(v) for k, v in terms.items()}))


def test_registered_names():
  assert {"sigmoid", "softmax", "composite"} <= set(losses.LOSSES.names())


def test_weighted_sum_sharded_with_metrics_and_grads():
  config = _config(
      siglip=dict(name="sigmoid", weight=2.0, chunk_size=3),
      clip=dict(name="softmax", weight=0.5, label_smoothing=0.1, modalities=("text", "image")))
  objective = losses.make_objective(config, axis_name="data")
  assert sorted(objective.modalities) == ["image", "text"]
  assert set(objective.init_params) == {"siglip", "clip"}
  assert set(objective.init_params["siglip"]) == {"scale", "bias"}
  assert set(objective.init_params["clip"]) == {"scale"}

  x, y = ref.random_pairs(11, 16, 5)
  params = {"siglip": {"scale": jnp.float32(math.log(8.0)), "bias": jnp.float32(-2.0)},
            "clip": {"scale": jnp.float32(math.log(12.0))}}
  mesh = ref.mesh((4,), ("data",))

  def loss_fn(params, x, y):
    run = jax.shard_map(lambda p, x, y: objective.apply({"image": x, "text": y}, p), mesh=mesh,
                        in_specs=(P(), P("data"), P("data")), out_specs=P())
    return run(params, x, y)

  (total, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  siglip = ref.sigmoid_loss(x, y, 8.0, -2.0)
  clip = ref.softmax_loss(y, x, 12.0, eps=0.1)
  np.testing.assert_allclose(total, 2.0 * siglip + 0.5 * clip, rtol=1e-5)
  assert set(metrics) == {"loss", "loss/siglip", "loss/clip", "siglip/scale", "siglip/bias",
                          "clip/scale"}
  np.testing.assert_allclose(metrics["loss"], total)
  np.testing.assert_allclose(metrics["loss/siglip"], siglip, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/clip"], clip, rtol=1e-5)
  np.testing.assert_allclose(metrics["siglip/scale"], 8.0, rtol=1e-6)
  # Each term's parameter gets its weighted gradient (dL/dt' = w t dL_k/dt).
  _, _, dt_sig, db_sig = ref.sigmoid_grads(x, y, 8.0, -2.0)
  _, _, dt_clip = ref.softmax_grads(y, x, 12.0, eps=0.1)
  np.testing.assert_allclose(grads["siglip"]["scale"], 2.0 * 8.0 * dt_sig, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads["siglip"]["bias"], 2.0 * db_sig, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads["clip"]["scale"], 0.5 * 12.0 * dt_clip, rtol=1e-5, atol=1e-6)


def test_default_weight_is_one():
  objective = losses.make_objective(_config(a=dict(name="softmax")), axis_name=None)
  x, y = ref.random_pairs(12, 6, 3)
  total, metrics = objective.apply({"image": jnp.asarray(x, jnp.float32),
                                    "text": jnp.asarray(y, jnp.float32)},
                                   {"a": {"scale": jnp.float32(0.0)}})
  np.testing.assert_allclose(total, ref.softmax_loss(x, y, 1.0), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/a"], total)


@pytest.mark.parametrize("config,message", [
    (ml_collections.ConfigDict(dict(name="composite")), "config.loss.terms must be"),
    (ml_collections.ConfigDict(dict(name="composite", terms={}, weights=1)),
     "config.loss.weights is not a field"),
    (_config(a=dict(name="sigmoid", weight="heavy")), "config.loss.terms.a.weight"),
    (_config(a=dict(name="sigmod")), "config.loss.terms.a.name = 'sigmod' is not a known loss"),
    (_config(a=dict(name="softmax", init_bias=0.0)),
     "config.loss.terms.a.init_bias is not a field of loss 'softmax'"),
    (_config(a=dict(name="sigmoid", impl="gather")), "config.loss.terms.a.impl must be one of"),
])
def test_config_errors(config, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    losses.make_objective(config, axis_name=None)
