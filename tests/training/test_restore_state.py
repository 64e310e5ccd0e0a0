"""A checkpoint restored onto another mesh is the saved state, leaf for leaf.

The next loss after a restore does not depend on the optimizer state (it is computed before the
update), so a restore that zeroed or re-initialised the Adam moments would still resume with the
right loss; here the whole state (params, every optimizer moment and count, step, rng, the
divergence counters) is compared exactly with the saved one, and each leaf must be laid out as
the new mesh's shardings say.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest

from clip_jax.checkpoint import Checkpointer
from clip_jax.config import load_config_file
from clip_jax.training.trainer import Trainer

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")


def make_trainer(devices) -> Trainer:
  """tests/configs/tiny.py on `devices`, with fsdp=2 where there are several."""
  config = load_config_file(TINY)
  config.mesh = (("data", -1), ("fsdp", 2 if len(devices) > 1 else 1))
  return Trainer(config, devices=devices)


def train(trainer: Trainer, steps: int):
  rng = np.random.default_rng(0)
  state = trainer.init_state()
  for _ in range(steps):
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32),
             "text": rng.integers(2, 300, size=(16, 6)).astype(np.int32)}
    state, _ = trainer.train_step(state, trainer.global_batch(batch))
  return state


def adam_moments(opt_state) -> optax.ScaleByAdamState:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  [adam] = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  return adam


@pytest.mark.parametrize("src, dst", [(8, 4), (4, 8), (8, 1)])
def test_restore_onto_another_mesh_keeps_the_whole_state(tmp_path, src, dst):
  devices = jax.devices()
  state = train(make_trainer(devices[:src]), steps=2)
  saved = jax.device_get(state)
  # Two updates: non-zero moments and counts, which a fresh optimizer state would not have.
  adam = adam_moments(saved["opt_state"])
  assert int(adam.count) == 2 and int(saved["step"]) == 2
  assert all(np.any(m != 0) for m in jax.tree.leaves((adam.mu, adam.nu)))
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(2, state, {"step": 2}, force=True)
  ckpt.close()

  target = make_trainer(devices[:dst])
  ckpt = Checkpointer(tmp_path)
  step, restored, _ = ckpt.restore_latest(target.abstract_state)
  ckpt.close()
  assert step == 2
  assert (jax.tree.structure(restored, is_leaf=lambda x: x is None)
          == jax.tree.structure(saved, is_leaf=lambda x: x is None))

  def check(path, got, want, sharding):
    name = jax.tree_util.keystr(path)
    assert got.sharding.is_equivalent_to(sharding, got.ndim), (name, got.sharding, sharding)
    assert len(got.sharding.device_set) == dst, name
    got = jax.device_get(got)
    assert got.dtype == want.dtype, name
    np.testing.assert_array_equal(got, want, err_msg=name)

  jax.tree_util.tree_map_with_path(check, restored, saved, target.state_shardings)
