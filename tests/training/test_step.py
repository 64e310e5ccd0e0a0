"""The sharded train step equals the single-device step; the divergence guard skips bad steps."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax.config import load_config_file
from clip_jax.sharding import TENSOR_PARALLEL_RULES
from clip_jax.training import faults
from clip_jax.training.trainer import Trainer


TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")


def tiny_config(loss="sigmoid", mesh=(("data", -1), ("fsdp", 1))):
  c = load_config_file(TINY)
  c.mesh = mesh
  c.loss = ml_collections.ConfigDict(dict(name=loss))
  # No warmup or decay, and eps=1e-6: attention layers have parameters with tiny true gradients,
  # and Adam with a tiny eps would blow their float noise (which differs between meshes) up to
  # full-size steps.
  c.optim.update(warmup_steps=0, end_lr_ratio=1.0, eps=1e-6)
  c.evals = ml_collections.ConfigDict()
  return c


def random_batch(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  text = rng.integers(1, 300, size=(batch_size, 6)).astype(np.int32)
  text[:, 4:] = 0  # padding after the EOS at position 3
  return {"image": rng.uniform(-1, 1, size=(batch_size, 8, 8, 3)).astype(np.float32),
          "text": text}


def run_steps(config, devices, batches):
  trainer = Trainer(config, devices=devices)
  state = trainer.init_state()
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, trainer.global_batch(batch))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state["params"]), state


@pytest.mark.parametrize("loss", ["sigmoid"])  # every other objective: test_sharded_grads.py
def test_sharded_step_equals_single_device(loss):
  batches = [random_batch(16, seed=s) for s in range(3)]
  one_losses, one_params, _ = run_steps(
      tiny_config(loss, mesh=(("data", 1), ("fsdp", 1))), jax.devices()[:1], batches)
  eight_losses, eight_params, state = run_steps(
      tiny_config(loss, mesh=(("data", 4), ("fsdp", 2))), jax.devices(), batches)
  # The state really is sharded over fsdp on 8 devices.
  kernel = state["params"]["model"]["image"]["projection"]["kernel"]
  assert "fsdp" in str(kernel.sharding.spec)
  np.testing.assert_allclose(eight_losses, one_losses, rtol=2e-5)
  # Adam divides by sqrt(v): a parameter with a tiny gradient moves by up to lr per step even
  # when that gradient is mostly float noise, so params agree to a small fraction of lr = 1e-2.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               eight_params, one_params)


def test_tensor_parallel_step_equals_data_parallel():
  # Megatron-style rules over tensor=2 (with fsdp=2 x data=2) against the data x fsdp mesh of
  # the test above, whose compiled step this one shares.
  batches = [random_batch(16)]
  dp_losses, dp_params, _ = run_steps(
      tiny_config(mesh=(("data", 4), ("fsdp", 2))), jax.devices(), batches)
  config = tiny_config(mesh=(("data", 2), ("fsdp", 2), ("tensor", 2)))
  config.sharding_rules = TENSOR_PARALLEL_RULES + tuple(config.sharding_rules)
  tp_losses, tp_params, state = run_steps(config, jax.devices(), batches)
  block = state["params"]["model"]["text"]["encoder"]["transformer"]["block_0"]
  assert block["mlp"]["fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert block["attn"]["out"]["kernel"].sharding.spec == P("tensor", "fsdp")
  np.testing.assert_allclose(tp_losses, dp_losses, rtol=1e-5)
  # Params after one Adam step, to the tolerance of the test above and for the same reason:
  # Adam turns the float noise of a near-zero gradient (the tensor split reorders the
  # reductions) into a step of up to lr = 1e-2 (measured: 2.6e-6 at most, on a bias).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               tp_params, dp_params)


def test_nan_step_is_skipped_and_counted(monkeypatch):
  config = tiny_config(mesh=(("data", 8), ("fsdp", 1)))
  monkeypatch.setenv(faults.NAN_STEPS_VAR, "2")
  batches = [random_batch(16, seed=s) for s in range(3)]
  trainer = Trainer(config)
  state = trainer.init_state()
  state, m1 = trainer.train_step(state, trainer.global_batch(batches[0]))
  before = jax.device_get(state["params"])
  state, m2 = trainer.train_step(state, trainer.global_batch(batches[1]))
  assert int(m2["skipped_steps"]) == 1 and int(m2["bad_steps"]) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), before)
  state, m3 = trainer.train_step(state, trainer.global_batch(batches[2]))
  assert int(m3["skipped_steps"]) == 1 and int(m3["bad_steps"]) == 0  # skipped counts in total
  assert int(state["step"]) == 3


def test_batched_embedding_equals_one_direct_call():
  # 37 inputs in global batches of 16 on 8 devices (data 4 x fsdp 2): batches of 16, 16 and 5
  # (padded with 11 rows). Every row differs, so a batch out of order or padding rows kept in
  # place of real ones change the result.
  from flax import nnx

  config = tiny_config(mesh=(("data", 4), ("fsdp", 2)))
  config.eval_batch_size = 16
  trainer = Trainer(config)
  params = trainer.init_state()["params"]["model"]
  for modality, inputs in random_batch(37, seed=1).items():
    got = trainer.embed(params, modality, inputs)
    model = nnx.merge(nnx.graphdef(trainer.model), jax.device_get(params))
    want = np.asarray(model.embed(inputs, modality))
    assert got.shape == want.shape == (37, config.model.embed_dim), modality
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=modality)
    distances = np.linalg.norm(want[:, None] - want[None], axis=-1) + 1e9 * np.eye(37)
    assert distances.min() > 1e-3, modality  # distinct rows: no reordering of them passes
