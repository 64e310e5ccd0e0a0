"""Micro-batched steps (`config.microbatch_size`, gradient caching) equal the plain step.

The objectives cover two towers with a ring (sigmoid, softmax), three towers ("mv_infonce" over
image, text and the synthetic source's "sketch" view) and an objective that reads the batch's
instance ids ("multi_positive", two captions per unit). Global batch 32 in 2 or 4 micro-batches
of 16 or 8 examples, on 1 device or on 8 (data=4 x fsdp=2: 2 or 1 example per device and
micro-batch). Compilation dominates the cost, so only sigmoid runs the tiny ViT and text
transformer (their parameters sharded over fsdp on 8 devices); the other objectives, and
bfloat16 with remat, run a test-only flatten-then-Dense tower. Updated params come from one
jitted optimizer update applied to each step's gradients (the same compilation for all).

"Relative" for a tensor means relative to its largest entry: max|got - want| <= 1e-5 max|want|
per leaf. Entries that are float noise (an attention bias with no true gradient) have no
meaningful elementwise relative error.
"""

from __future__ import annotations

import collections
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from clip_jax.checkpoint import Checkpointer
from clip_jax.config import load_config_file, validate_config
from clip_jax.data import make_tokenizer, make_train_iterator
from clip_jax.models.model import ModalityEmbedder
from clip_jax.registry import ConfigError
from clip_jax.training.trainer import Trainer
from clip_jax.training.step import make_grad_fn

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")
BATCH = 32
ONE = (("data", 1), ("fsdp", 1))
EIGHT = (("data", 4), ("fsdp", 2))
RTOL = 1e-5
THREE = ("image", "text", "sketch")
OBJECTIVES = {
    "sigmoid": dict(name="sigmoid"),
    "softmax": dict(name="softmax"),
    "mv_infonce": dict(name="mv_infonce", modalities=THREE),
    "multi_positive": dict(name="multi_positive"),
}


def make_config(objective: str, mesh, microbatch_size: int = 0,
                towers: str = "tiny") -> ml_collections.ConfigDict:
  """tests/configs/tiny.py with a global batch of 32, `objective`, `microbatch_size`, and
  towers "tiny" (its ViT and text transformer) or "flat" (FlatTower everywhere)."""
  c = load_config_file(TINY)
  c.mesh, c.batch_size, c.microbatch_size = mesh, BATCH, microbatch_size
  c.evals = ml_collections.ConfigDict()
  # eps = 1, the size of most gradients here: Adam's first step lr g / (|g| + eps) is then a
  # smooth function of the gradient (its error at most lr / eps times the gradient's), so the
  # updated params agree as closely as the gradients do. With eps << |g| the step is
  # lr sign(g), and a gradient that is float noise near zero (summed in another order over
  # micro-batches) would move its parameter by a random fraction of lr (see test_step.py).
  c.optim.update(warmup_steps=0, end_lr_ratio=1.0, eps=1.0)
  c.loss = ml_collections.ConfigDict(OBJECTIVES[objective])
  if towers == "flat":
    c.model.towers.image = ml_collections.ConfigDict(dict(name="_test_flat_tower",
                                                          width=16))
    c.model.towers.text = ml_collections.ConfigDict(c.model.towers.image.to_dict())
  if objective == "mv_infonce":
    c.data.extra_views = ("sketch",)
    c.model.towers.sketch = ml_collections.ConfigDict(c.model.towers.image.to_dict())
  if objective == "multi_positive":
    c.data.captions_per_example = 2
    c.data.augment = True  # the two rows of a unit show differently shifted images
  return c


def batches(config, n: int = 1) -> list[dict[str, np.ndarray]]:
  it = make_train_iterator(config, make_tokenizer(config.data))
  return [next(it) for _ in range(n)]


def built(config, devices) -> Trainer:
  return Trainer(config, devices=devices)


def assert_close(got, want, rtol: float = RTOL, what: str = "") -> None:
  """Every leaf: max|got - want| <= rtol * max|want| (see the module docstring)."""
  def check(path, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err, scale = float(np.max(np.abs(a - b), initial=0.0)), float(np.max(np.abs(b), initial=0.0))
    assert err <= rtol * scale, (
        f"{what}{jax.tree_util.keystr(path)}: {err:.3g} > {rtol} * {scale:.3g}")

  jax.tree.map_with_path(check, got, want)


def traced_grad_fn(trainer: Trainer, params, global_batch,
                   microbatch_size: int) -> jax.stages.Traced:
  """The train step's jitted gradient function traced for (params, global_batch)."""
  grad_fn = make_grad_fn(trainer.model, trainer.objective, trainer.mesh, trainer.batch_axes,
                         microbatch_size, trainer.frozen)
  return jax.jit(grad_fn).trace(params, global_batch)


def gradients(trainer: Trainer, params, batch, microbatch_size: int):
  """((loss, metrics), grads) of the train step's gradient function, on the host."""
  global_batch = trainer.global_batch(batch)
  traced = traced_grad_fn(trainer, params, global_batch, microbatch_size)
  return jax.device_get(traced.lower().compile()(params, global_batch))


def make_update(tx: optax.GradientTransformation):
  """(params, grads) -> params after `tx`'s first step, jitted once for all the gradients of
  a test (host arrays of the same shapes: one compilation)."""
  def update(params, grads):
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)

  return jax.jit(update)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_microbatched_step_equals_the_plain_step(objective):
  """Loss, metrics, gradients (model and objective params) and the params after the optimizer
  step, with 2 and with 4 micro-batches, on 1 and on 8 devices, against the plain step on 1
  device (which the 8-device plain step equals: tests/training/test_step.py)."""
  towers = "tiny" if objective == "sigmoid" else "flat"
  config = make_config(objective, ONE, towers=towers)
  [batch] = batches(config)
  assert ("instance_id" in batch) == (objective == "multi_positive")
  one = built(config, jax.devices()[:1])
  params = jax.device_get(one.init_state()["params"])
  update = make_update(one.tx)
  (want_loss, want_metrics), want_grads = gradients(one, params, batch, 0)
  want_params = update(params, want_grads)
  eight = built(make_config(objective, EIGHT, towers=towers), jax.devices())
  for trainer in (one, eight):
    sharded = jax.device_put(params, trainer.state_shardings["params"])
    for num_micro in (2, 4):
      (loss, metrics), grads = gradients(trainer, sharded, batch, BATCH // num_micro)
      what = f"{len(trainer.mesh.devices.flat)} devices, {num_micro} micro-batches: "
      np.testing.assert_allclose(loss, want_loss, rtol=RTOL, err_msg=what)
      assert metrics.keys() == want_metrics.keys()
      for key in metrics:
        np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=RTOL,
                                   err_msg=what + key)
      assert_close(grads, want_grads, what=what + "grads ")
      assert_close(update(params, grads), want_params, what=what + "params ")
      trained = {m: float(np.max(np.abs(grads["model"][m]["projection"]["kernel"])))
                 for m in config.model.towers}
      assert min(trained.values()) > 0, trained  # every tower gets a gradient


# How a jaxpr names the primitive of `jax.checkpoint` (flax's nn.remat).
REMAT = jax.make_jaxpr(jax.checkpoint(jnp.sin))(0.0).eqns[0].primitive.name


def test_microbatched_step_equals_the_plain_step_in_bfloat16_with_remat():
  """config.model dtype "bfloat16" and remat on (the test tower's Dense, rematerialised, and the
  projections compute in bfloat16, in both steps: checked on their jaxprs), data=4 x fsdp=2,
  4 micro-batches of one example per device: loss and metrics equal the plain step's to
  1e-4 relative, gradients and updated params to 2e-2.

  The tolerances are bfloat16's (8 significant bits, unit roundoff 2^-9 = 2e-3), not float32's.
  With one example per device the partitioner splits the text projection's contraction over
  fsdp (bfloat16 partial products, summed across devices), so embedding entries differ by one
  bfloat16 unit and the loss by about 2e-5 (running the towers in float32 instead moves it by
  3e-3). A weight gradient is a bfloat16 matmul (a bias's, a bfloat16 sum) rounded once per
  micro-batch before the float32 sum over micro-batches, and at other points in the plain step:
  the two differ by up to 5e-3 of a leaf's largest entry, about as much as the plain bfloat16
  step differs from the float32 one (8e-3). A micro-batch lost or counted twice moves the
  gradients by about a quarter.
  """
  config = make_config("sigmoid", EIGHT, towers="flat")
  config.model.update(dtype="bfloat16", remat=True)
  [batch] = batches(config)
  trainer = built(config, jax.devices())
  params = jax.device_get(trainer.init_state()["params"])
  sharded = jax.device_put(params, trainer.state_shardings["params"])
  global_batch = trainer.global_batch(batch)
  update = make_update(trainer.tx)
  results = []
  for microbatch_size in (0, BATCH // 4):
    traced = traced_grad_fn(trainer, sharded, global_batch, microbatch_size)
    program, what = str(traced.jaxpr), f"microbatch_size {microbatch_size}: "
    assert "bf16[" in program, what + "no bfloat16 computation"
    assert f"{REMAT}[" in program, what + "no rematerialisation"
    (loss, metrics), grads = jax.device_get(traced.lower().compile()(sharded, global_batch))
    results.append((loss, metrics, grads, update(params, grads)))

  (want_loss, want_metrics, want_grads, want_params), (loss, metrics, grads, new_params) = results
  np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
  assert metrics.keys() == want_metrics.keys()
  for key in metrics:
    np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-4, err_msg=key)
  assert_close(grads, want_grads, rtol=2e-2, what="grads ")
  assert_close(new_params, want_params, rtol=2e-2, what="params ")


class ForwardCounter:
  """Counts each tower's forward: traced (per compile) and run (per execution, through a
  `jax.debug.callback` in the compiled program), by modality, while active (`with counter:`
  wraps `ModalityEmbedder.__call__`)."""

  def __init__(self):
    self.traced, self.ran = collections.Counter(), collections.Counter()

  def __enter__(self):
    self.original = original = ModalityEmbedder.__call__

    def counted(embedder, inputs, rngs=None):
      modality = embedder.modality
      self.traced[modality] += 1
      jax.debug.callback(lambda: self.ran.update([modality]))
      return original(embedder, inputs, rngs)

    ModalityEmbedder.__call__ = counted
    return self

  def __exit__(self, *exc_info):
    ModalityEmbedder.__call__ = self.original


def counted_step(trainer: Trainer, state, batch):
  """(compiled train step with forward counters, its counter)."""
  with ForwardCounter() as counter:
    compiled = trainer.train_step.lower(state, batch).compile()
  return compiled, counter


def test_frozen_tower_runs_once_and_the_trainer_step_equals_the_plain_step():
  """LiT (image tower frozen) on data=4 x fsdp=2, 4 micro-batches through the Trainer
  (config.microbatch_size): the image tower runs once per micro-batch and is never run again
  for gradients; loss, gradients (Adam's first moment after one step, (1 - b1) g) and updated
  params equal the plain step's; splitting the batch into micro-batches moves no data between
  devices (no collective-permute in the program with the all-gather loss)."""
  num_micro = 4
  config = make_config("sigmoid", EIGHT)
  config.loss.impl = "all_gather"  # the ring's collective-permutes would hide the batch's
  config.optim.freeze = (r"^model/image/",)
  config.optim.grad_clip_norm = 0.0  # clipping would hide a wrong gradient scale from mu
  [batch] = batches(config)
  plain = built(config, jax.devices())
  config.microbatch_size = BATCH // num_micro
  micro = built(config, jax.devices())
  start = jax.device_get(plain.init_state())
  results = {}
  for name, trainer in (("plain", plain), ("micro", micro)):
    state = jax.device_put(start, trainer.state_shardings)
    global_batch = trainer.global_batch(batch)
    compiled, counter = counted_step(trainer, state, global_batch)
    state, metrics = compiled(state, global_batch)
    jax.effects_barrier()
    results[name] = jax.device_get((state, metrics)), counter, compiled.as_text()

  (want_state, want_metrics), plain_counter, _ = results["plain"]
  (state, metrics), counter, hlo = results["micro"]
  assert plain_counter.traced == {"image": 1, "text": 1}
  assert plain_counter.ran == {"image": 1, "text": 1}
  assert counter.traced == {"image": 1, "text": 2}  # text: embedding pass, then under vjp
  assert counter.ran == {"image": num_micro, "text": 2 * num_micro}
  # Cutting micro-batches from contiguous rows instead would move rows between devices here.
  assert not re.search(r"\bcollective-permute(-start)?\(", hlo)

  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=RTOL, err_msg=key)
  mu, want_mu = (optax.tree.get(s["opt_state"], "mu") for s in (state, want_state))
  assert_close(mu, want_mu, what="grads ")
  assert np.max(np.abs(mu["model"]["text"]["projection"]["kernel"])) > 0
  assert_close(state["params"], want_state["params"], what="params ")
  jax.tree.map(np.testing.assert_array_equal, state["params"]["model"]["image"],
               start["params"]["model"]["image"])


def test_resume_with_microbatches_is_exact(tmp_path):
  """Save after 2 micro-batched steps, 2 more steps; a new Trainer restores and takes the same 2
  steps: same losses and params, bit for bit."""
  config = make_config("sigmoid", EIGHT, microbatch_size=BATCH // 2, towers="flat")
  data = batches(config, 4)
  first = built(config, jax.devices())
  state = first.init_state()
  for batch in data[:2]:
    state, _ = first.train_step(state, first.global_batch(batch))
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, state, {"step": 2}, force=True)
  ckpt.close()

  def continue_from(trainer, state):
    losses = []
    for batch in data[2:]:
      state, metrics = trainer.train_step(state, trainer.global_batch(batch))
      losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"])

  want_losses, want_params = continue_from(first, state)
  second = built(config, jax.devices())
  ckpt = Checkpointer(str(tmp_path))
  step, restored, _ = ckpt.restore_latest(second.abstract_state)
  ckpt.close()
  assert step == 2
  losses, params = continue_from(second, restored)
  assert losses == want_losses
  jax.tree.map(np.testing.assert_array_equal, params, want_params)


@pytest.mark.parametrize("microbatch_size, message", [
    (20, r"config.microbatch_size = 20 must divide config.batch_size = 32 and be a multiple of "
         r"the 8 batch shards .*use e.g. 16"),
    (4, r"config.microbatch_size = 4 must divide .*use e.g. 8"),
    (-8, r"config.microbatch_size = -8 must be 0 \(off\) or a positive integer"),
])
def test_microbatch_size_is_checked_at_start(microbatch_size, message):
  config = make_config("sigmoid", EIGHT, microbatch_size)
  with pytest.raises(ConfigError, match=message):
    validate_config(config, num_devices=8)
  config.microbatch_size = 8  # 4 micro-batches of one example per device: allowed
  validate_config(config, num_devices=8)
