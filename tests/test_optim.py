"""Optimizer: schedule, weight-decay mask, freezing by regex, config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from clip_jax.optim import make_optimizer
from clip_jax.registry import ConfigError


def _optim(**overrides):
  c = ml_collections.ConfigDict(dict(
      learning_rate=0.1, warmup_steps=10, end_lr_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.5, grad_clip_norm=1.0, no_decay=(r".*/bias$", r"^loss/"), freeze=()))
  c.update(overrides)
  return c


def _params():
  return {"model": {"image": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
                    "text": {"kernel": jnp.ones((2, 2))}},
          "loss": {"scale": jnp.ones(())}}


def test_schedule_warmup_then_cosine():
  _, schedule = make_optimizer(_optim(), 110, _params())
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 0.05, rtol=1e-5)  # halfway through cosine
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_skips_biases_and_loss_params():
  params = _params()
  tx, _ = make_optimizer(_optim(grad_clip_norm=0.0), 100, params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  for _ in range(12):  # past warmup, zero gradients: only weight decay moves params
    updates, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
  assert float(params["model"]["image"]["kernel"][0, 0]) < 1.0
  assert float(params["model"]["image"]["bias"][0]) == 1.0
  assert float(params["loss"]["scale"]) == 1.0


def test_freeze_locks_a_tower():
  params = _params()
  tx, _ = make_optimizer(_optim(freeze=(r"^model/image/",)), 100, params)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(12):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["model"]["image"]["kernel"], 1.0)
  np.testing.assert_array_equal(params["model"]["image"]["bias"], 1.0)
  assert float(params["model"]["text"]["kernel"][0, 0]) < 1.0


@pytest.mark.parametrize("overrides, field, message", [
    (dict(freeze=(r"^model/audio/",)), "config.optim.freeze", "matches no parameter"),
    (dict(no_decay=(r"[",)), "config.optim.no_decay", "not a valid regex"),
    (dict(warmup_steps=1000), "config.optim.warmup_steps", "must be in"),
    (dict(learning_rate=0.0), "config.optim.learning_rate", "must be > 0"),
])
def test_optim_errors_name_the_field(overrides, field, message):
  with pytest.raises(ConfigError, match=field) as e:
    make_optimizer(_optim(**overrides), 100, _params())
  assert message in str(e.value)
