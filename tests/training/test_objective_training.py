"""The multi-tower and multi-positive objectives train end to end from a config. (That a
sharded step computes the one-device step: test_sharded_grads.py, for every objective.)

Three towers read "image", "text" and the synthetic source's "sketch" view
(config.data.extra_views); "multi_positive" reads the instance ids of
config.data.captions_per_example = 2. Each run goes through `train_and_evaluate` on the 8-device
mesh for a few steps.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest

from clip_jax.checkpoint import Checkpointer
from clip_jax.config import load_config_file
from clip_jax.metrics import read_metrics
from clip_jax.training.loop import train_and_evaluate
from clip_jax.training.trainer import Trainer

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")
THREE = ("image", "text", "sketch")
STEPS = 6
# Objectives trained with the real tiny towers; the others use the test-only flat tower (their
# data path is the pairwise run's, and compiling three ViTs for each dominated this file's time).
REAL_TOWERS = ("pairwise", "multi_positive")

LOSSES = {
    # all_gather compiles faster than the default ring over 8 devices (tests/losses covers both).
    "pairwise": dict(name="pairwise", modalities=THREE,
                     pair_loss=ml_collections.ConfigDict(dict(name="sigmoid", impl="all_gather"))),
    "mv_infonce": dict(name="mv_infonce", modalities=THREE),
    "mv_dhel": dict(name="mv_dhel", modalities=THREE),
    "gram": dict(name="gram", modalities=THREE),
    "multi_positive": dict(name="multi_positive"),
}


def make_config(loss: str, mesh=(("data", 8), ("fsdp", 1))) -> ml_collections.ConfigDict:
  """tests/configs/tiny.py with a sketch tower (or 2 captions per unit) and `loss`."""
  c = load_config_file(TINY)
  c.mesh = mesh
  c.total_steps = STEPS
  c.eval_every_steps = c.ckpt_every_steps = 1000  # no evals; one checkpoint, at the end
  c.evals = ml_collections.ConfigDict()
  # Every batch holds every training unit (in a new order), so the loss of step k differs from
  # step 1 only by what the model learnt. A constant learning rate of 3e-3 (with 1e-2, GRAM's
  # loss barely moves in 6 steps); eps as in test_step.py. Measured with these settings, the mean
  # of the last 2 losses is 0.42 (pairwise) to 0.89 (gram) times the mean of the first 2.
  c.optim.update(learning_rate=3e-3, warmup_steps=0, end_lr_ratio=1.0, eps=1e-6)
  # Whole captions ("a large yellow triangle" is 23 bytes), not tiny.py's first 5 bytes.
  c.data.max_len = c.model.towers.text.context_length = 24
  if loss == "multi_positive":
    c.data.captions_per_example = 2
    c.data.augment = True  # the two rows of a unit show differently shifted images
    c.data.num_examples = c.batch_size // 2
  else:
    c.data.extra_views = ("sketch",)
    c.data.num_examples = c.batch_size
    c.model.towers.sketch = ml_collections.ConfigDict(c.model.towers.image.to_dict())
  if loss not in REAL_TOWERS:
    for modality in THREE:
      c.model.towers[modality] = ml_collections.ConfigDict(dict(name="_test_flat_tower", width=16))
  c.loss = ml_collections.ConfigDict(LOSSES[loss])
  return c


def initial_and_final_params(config, workdir):
  """(params at initialisation, params of the last checkpoint in `workdir`, its step)."""
  trainer = Trainer(config)
  initial = jax.device_get(trainer.init_state()["params"])
  ckpt = Checkpointer(workdir)
  try:
    step, state, _ = ckpt.restore_latest(trainer.abstract_state)
  finally:
    ckpt.close()
  return initial, jax.device_get(state["params"]), step


@pytest.mark.parametrize("loss", list(LOSSES))
def test_objective_trains(loss, tmp_path):
  config = make_config(loss)
  workdir = str(tmp_path / loss)
  train_and_evaluate(config, workdir)
  losses = [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if "loss" in r]
  assert len(losses) == STEPS and np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses

  before, after, step = initial_and_final_params(config, workdir)
  assert step == STEPS
  towers = THREE if loss != "multi_positive" else ("image", "text")
  assert set(after["model"]) == set(towers)
  for modality in towers:
    for part in ("encoder", "projection"):
      moved = jax.tree.leaves(jax.tree.map(
          lambda a, b: float(np.max(np.abs(a - b))),
          after["model"][modality][part], before["model"][modality][part]))
      assert max(moved) > 1e-4, (modality, part, moved)
