"""Every registered objective's sharded train step computes the one-device gradients and loss.

Comparing post-Adam parameters cannot see a wrong gradient scale: Adam's update is invariant to
it, so a sharded step whose gradients are all 8x too large trains to the same parameters. The
gradients are read from the optimizer state instead. With gradient clipping off and zero initial
moments, one AdamW step leaves its first moment at exactly mu = (1 - b1) g (weight decay is
applied after it), so g = mu / (1 - b1) is the gradient pytree the train step used: model and
loss parameters, per leaf, with its sign.

One shared batch (16 rows: image, text, a "sketch" view, instance ids shared across shards), one
train step on one device and one on 8 (data=4 x fsdp=2), per objective. Compilation dominates
the cost, so the towers are a test-only flatten-then-Dense tower, except for the default objective
(sigmoid), which runs with the tiny ViT and text transformer, their parameters sharded over fsdp.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import pytest

from clip_jax.config import load_config_file
from clip_jax.losses.registry import LOSSES
from clip_jax.training.trainer import Trainer

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")
THREE = ("image", "text", "sketch")
B1 = 0.9
ALL_GATHER_SIGMOID = ml_collections.ConfigDict(dict(name="sigmoid", impl="all_gather"))

# learn_scale=True where the default fixes the temperature, so that its gradient is compared too.
OBJECTIVES = {
    "sigmoid": dict(name="sigmoid"),  # the default impl, the ring
    "softmax": dict(name="softmax"),
    "composite": dict(name="composite", terms=ml_collections.ConfigDict(dict(
        siglip=ALL_GATHER_SIGMOID,
        clip=ml_collections.ConfigDict(dict(name="softmax", impl="all_gather", weight=0.5))))),
    "contrastive_gap": dict(name="contrastive_gap", learn_scale=True),
    "cwcl": dict(name="cwcl"),
    "dcl": dict(name="dcl", weighting="dclw", learn_scale=True),
    "multi_positive": dict(name="multi_positive"),
    "pairwise": dict(name="pairwise", modalities=THREE, pair_loss=ALL_GATHER_SIGMOID),
    "mv_infonce": dict(name="mv_infonce", modalities=THREE, learn_scale=True),
    "mv_dhel": dict(name="mv_dhel", modalities=THREE, learn_scale=True),
    "gram": dict(name="gram", modalities=THREE),
}


def test_every_registered_objective_is_covered():
  # Names starting with "_test_" are objectives that other test modules register for themselves.
  assert set(OBJECTIVES) == {n for n in LOSSES.names() if not n.startswith("_test_")}


def shared_batch(batch_size: int = 16) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  text = rng.integers(1, 300, size=(batch_size, 6)).astype(np.int32)
  text[:, 4:] = 0  # padding after the EOS at position 3
  # Ids 0..5 with 2 or 3 rows each, spread over the 8 shards of 2 rows.
  ids = rng.permutation(np.arange(batch_size) % 6).astype(np.int32)
  return {"image": rng.uniform(-1, 1, size=(batch_size, 8, 8, 3)).astype(np.float32),
          "sketch": rng.uniform(-1, 1, size=(batch_size, 8, 8, 3)).astype(np.float32),
          "text": text, "instance_id": ids}


def make_config(loss: str, mesh, towers: str) -> ml_collections.ConfigDict:
  """tests/configs/tiny.py with `loss`, a sketch tower where the loss reads it, and towers
  "tiny" (its ViT and text transformer) or "flat" (FlatTower everywhere)."""
  c = load_config_file(TINY)
  c.mesh = mesh
  c.evals = ml_collections.ConfigDict()
  # No clipping: it would make the first moment scale-invariant too (g / |g| when |g| > 1).
  c.optim.update(warmup_steps=0, end_lr_ratio=1.0, grad_clip_norm=0.0, b1=B1)
  c.loss = ml_collections.ConfigDict(OBJECTIVES[loss])
  if towers == "flat":
    c.model.towers.image = ml_collections.ConfigDict(dict(name="_test_flat_tower", width=16))
    c.model.towers.text = ml_collections.ConfigDict(dict(name="_test_flat_tower", width=16))
  if "sketch" in c.loss.get("modalities", ()):
    c.data.extra_views = ("sketch",)
    c.model.towers.sketch = ml_collections.ConfigDict(c.model.towers.image.to_dict())
  if loss == "multi_positive":
    c.data.captions_per_example = 2  # the batch carries instance ids
  return c


def one_step(config, devices) -> tuple[dict, Any]:
  """(metrics, opt_state) on the host after one train step from the initial state."""
  trainer = Trainer(config, devices=devices)
  batch = shared_batch()
  state, metrics = trainer.train_step(trainer.init_state(), trainer.global_batch(batch))
  return jax.device_get(metrics), jax.device_get(state["opt_state"])


def gradients(opt_state) -> dict[str, np.ndarray]:
  """{parameter path: g = mu / (1 - b1)} from the (single) Adam state after one step."""
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  adam = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  assert len(adam) == 1 and int(adam[0].count) == 1
  leaves, _ = jax.tree_util.tree_flatten_with_path(adam[0].mu)
  return {jax.tree_util.keystr(path): np.asarray(m) / (1 - B1) for path, m in leaves}


@pytest.mark.parametrize("loss", list(OBJECTIVES))
def test_sharded_gradients_equal_single_device(loss):
  towers = "tiny" if loss == "sigmoid" else "flat"
  one_metrics, one_opt = one_step(
      make_config(loss, (("data", 1), ("fsdp", 1)), towers), jax.devices()[:1])
  eight_metrics, eight_opt = one_step(
      make_config(loss, (("data", 4), ("fsdp", 2)), towers), jax.devices())
  np.testing.assert_allclose(eight_metrics["loss"], one_metrics["loss"], rtol=2e-6)
  one_grads, eight_grads = gradients(one_opt), gradients(eight_opt)
  assert eight_grads.keys() == one_grads.keys()
  assert any(path.startswith("['loss']") for path in one_grads)  # a learned temperature
  norm = float(one_metrics["grad_norm"])
  assert norm > 1e-3
  # The logged norm is the norm of the gradients the optimizer received.
  np.testing.assert_allclose(optax.tree.norm(one_grads), norm, rtol=1e-5)
  np.testing.assert_allclose(eight_metrics["grad_norm"], norm, rtol=2e-5)
  # Every leaf, with its sign. The float noise between meshes measured at most 1e-7 x the norm.
  for path, want in one_grads.items():
    np.testing.assert_allclose(eight_grads[path], want, rtol=1e-4, atol=1e-5 * norm,
                               err_msg=f"gradient of {path}")
