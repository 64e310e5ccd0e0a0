"""The divergence guard skips a step whose gradients are not finite, not only a NaN loss.

The objective is wrapped, in this test only, so that a batch entry "poison" picks the fault of
each step (the largest value over the global batch):

  0  none;
  1  NaN gradients for every embedding (so for every tower parameter), finite loss;
  2  +inf gradients for the loss's own parameters only, finite loss (grad_norm = inf, not NaN);
  3  a NaN loss with finite gradients.

After a faulty step the params and the whole optimizer state (moments, counts) must be
bit-identical to before it, `skipped` and `bad_steps` must count it, and the next clean step must
give exactly what that clean step gives when the faulty steps never happened.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.config import load_config_file
from clip_jax.data import train_batch_spec
from clip_jax.losses.registry import Objective, make_objective
from clip_jax.training.trainer import Trainer

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")
POISON = "poison"
CLEAN, NAN_EMBEDDING_GRADS, INF_LOSS_PARAM_GRADS, NAN_LOSS = 0, 1, 2, 3


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def poison_gradient(x: jax.Array, fault: jax.Array, when: int, value: float) -> jax.Array:
  """The identity on x; its gradient is `value` everywhere where `fault == when`."""
  del fault, when, value
  return x


def _poison_fwd(x, fault, when, value):
  del when, value
  return x, fault


def _poison_bwd(when, value, fault, g):
  return jnp.where(fault == when, jnp.asarray(value, g.dtype), g), jnp.zeros_like(fault)


poison_gradient.defvjp(_poison_fwd, _poison_bwd)


def poisoned(objective: Objective, axis_name) -> Objective:
  """`objective` with the faults chosen by outputs["poison"] ([n] float32 per local shard)."""
  def apply(outputs, loss_params):
    fault = jax.lax.pmax(jnp.max(outputs[POISON]), axis_name)  # the same on every device
    outputs = {k: poison_gradient(v, fault, NAN_EMBEDDING_GRADS, jnp.nan)
               if k in objective.modalities else v for k, v in outputs.items() if k != POISON}
    loss_params = jax.tree.map(lambda p: poison_gradient(p, fault, INF_LOSS_PARAM_GRADS, jnp.inf),
                               loss_params)
    loss, metrics = objective.apply(outputs, loss_params)
    loss = loss + jnp.where(fault == NAN_LOSS, jnp.nan, 0.0)
    return loss, metrics

  return dataclasses.replace(objective, apply=apply, batch_keys=objective.batch_keys + (POISON,))


def batch(seed: int, fault: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  text = rng.integers(1, 300, size=(16, 6)).astype(np.int32)
  text[:, 4:] = 0
  return {"image": rng.uniform(-1, 1, size=(16, 8, 8, 3)).astype(np.float32), "text": text,
          POISON: np.full((16,), fault, np.float32)}


def make_trainer() -> Trainer:
  """tests/configs/tiny.py (warmup, clipping, the ring sigmoid) on data=4 x fsdp=2."""
  config = load_config_file(TINY)
  config.mesh = (("data", 4), ("fsdp", 2))
  objective = poisoned(make_objective(config.loss, axis_name=config.batch_axes), config.batch_axes)
  spec = dict(train_batch_spec(config), **{POISON: jax.ShapeDtypeStruct((16,), np.float32)})
  return Trainer(config, objective=objective, batch_spec=spec)


def assert_same(got, want, what):
  """Bit-identical pytrees (same structure, dtypes and values)."""
  got, want = jax.device_get(got), jax.device_get(want)
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    name = f"{what}{jax.tree_util.keystr(path)}"
    assert np.asarray(a).dtype == np.asarray(b).dtype, name
    np.testing.assert_array_equal(a, b, err_msg=name)


def test_non_finite_gradients_and_loss_are_skipped_without_touching_the_state():
  trainer = make_trainer()
  step = lambda state, b: trainer.train_step(state, trainer.global_batch(b))

  # The reference: two clean steps.
  state, _ = step(trainer.init_state(), batch(0, CLEAN))
  reference, ref_metrics = step(state, batch(4, CLEAN))
  reference = jax.device_get(reference)

  state, _ = step(trainer.init_state(), batch(0, CLEAN))
  good = jax.device_get(state)
  for n, fault in enumerate((NAN_EMBEDDING_GRADS, INF_LOSS_PARAM_GRADS, NAN_LOSS), start=1):
    state, metrics = step(state, batch(n, fault))
    metrics = jax.device_get(metrics)
    if fault == NAN_LOSS:
      assert np.isnan(metrics["loss"]) and np.isfinite(metrics["grad_norm"]), (fault, metrics)
    else:  # the fault is in the gradients only
      assert np.isfinite(metrics["loss"]), (fault, metrics)
      want = np.nan if fault == NAN_EMBEDDING_GRADS else np.inf
      np.testing.assert_equal(metrics["grad_norm"], want)
    assert int(metrics["skipped_steps"]) == n and int(metrics["bad_steps"]) == n, (fault, metrics)
    assert int(state["step"]) == n + 1
    assert_same(state["params"], good["params"], f"params after fault {fault}")
    assert_same(state["opt_state"], good["opt_state"], f"opt_state after fault {fault}")

  state, metrics = step(state, batch(4, CLEAN))
  assert int(metrics["skipped_steps"]) == 3 and int(metrics["bad_steps"]) == 0
  assert int(state["step"]) == 5
  np.testing.assert_equal(float(metrics["learning_rate"]), float(ref_metrics["learning_rate"]))
  np.testing.assert_equal(float(metrics["loss"]), float(ref_metrics["loss"]))
  # It trains, exactly as if the faulty steps had never been drawn.
  assert np.any(jax.device_get(state["params"]["loss"]["bias"]) != good["params"]["loss"]["bias"])
  assert_same(state["params"], reference["params"], "params after the clean step")
  assert_same(state["opt_state"], reference["opt_state"], "opt_state after the clean step")
