"""The objective's own parameters in training, and the logged learning rate.

* A bound on a learnable parameter (`max_scale`) is a projection after the update: the scale
  stays learnable at the bound (bug report: a clamp in the forward pass froze t at 100 for good).
* A parameter documented as fixed (`learn_scale=False`) is outside the optimizer: no update, no
  weight decay, no moments (bug report: a fixed scale decayed 10 -> 9.58 in 20 steps).
* The logged `learning_rate` is the rate applied in that step, also after a skipped step (bug
  report: after a NaN step the log ran one schedule step ahead).
"""

import math
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from clip_jax.config import load_config_file
from clip_jax.losses.registry import LOSSES, Objective, Param
from clip_jax.metrics import read_metrics
from clip_jax.training import faults
from clip_jax.training.loop import train_and_evaluate
from clip_jax.training.trainer import Trainer

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")


def tiny(loss, **optim):
  config = load_config_file(TINY)
  config.mesh = (("data", 8), ("fsdp", 1))
  config.loss = ml_collections.ConfigDict(loss)
  config.optim.update(optim)
  config.evals = ml_collections.ConfigDict()
  return config


def unrelated_batch(seed, batch_size=16):
  """Random images and random captions: no pairing signal, so the loss wants a lower scale."""
  rng = np.random.default_rng(seed)
  text = rng.integers(1, 300, size=(batch_size, 6)).astype(np.int32)
  text[:, 4:] = 0
  return {"image": rng.uniform(-1, 1, size=(batch_size, 8, 8, 3)).astype(np.float32),
          "text": text}


def train(config, steps):
  """Runs `steps` train steps on unrelated batches; returns (trainer, state, metrics list)."""
  trainer = Trainer(config)
  state = trainer.init_state()
  history = []
  for step in range(steps):
    state, metrics = trainer.train_step(state, trainer.global_batch(unrelated_batch(step)))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return trainer, state, history


def test_max_scale_is_a_projection_and_the_scale_stays_learnable():
  # Start above the bound: CLIP's t' = log(150) > log(100). With a clamp in the forward pass the
  # gradient of t' is zero above the bound and t stays 100 for good; with the projection t' is
  # put back to log(100) and the gradient (dL/dt > 0 on unrelated pairs) takes it down.
  config = tiny(dict(name="softmax", init_scale=math.log(150.0), max_scale=100.0),
                learning_rate=0.05, warmup_steps=0, end_lr_ratio=1.0, grad_clip_norm=0.0)
  _, state, history = train(config, 40)
  scales = [m["scale"] for m in history]
  assert scales[0] == pytest.approx(100.0, rel=1e-5)  # the initial value is projected too
  assert max(scales) <= 100.0 * (1 + 1e-6)
  assert scales[-1] < 70.0, scales  # it came down: the scale is still learned
  raw = float(jax.device_get(state["params"]["loss"]["scale"]))
  assert raw <= math.log(100.0) + 1e-6


@pytest.fixture(scope="module")
def pushing_objective():
  """A test-only objective whose loss pushes its two bounded parameters out of their bounds:
  L = -up + down (+ 0 x the embeddings, so the towers are part of the step)."""
  name = "_test_push_bounds"
  if name not in LOSSES:
    @LOSSES.register(name, fields={})
    def build(loss_config, *, axis_name):
      del loss_config

      def apply(outputs, params):
        zero = 0.0 * sum(jax.numpy.sum(v) for v in outputs.values())
        loss = jax.lax.pmean(zero, axis_name) - params["up"] + params["down"]
        return loss, {"loss": loss, "up": params["up"], "down": params["down"]}

      return Objective(init_params={"up": Param(0.0, high=0.25), "down": Param(0.0, low=-0.5)},
                       apply=apply)
  return name


def test_bounds_hold_after_every_update(pushing_objective):
  # Adam at lr 0.1 moves each parameter by about 0.1 a step; the projection keeps them on their
  # bounds: exactly `high` and `low`, from the third step on.
  config = tiny(dict(name=pushing_objective), learning_rate=0.1, warmup_steps=0,
                end_lr_ratio=1.0, no_decay=(r"^loss/",))
  _, state, history = train(config, 6)
  assert [round(m["up"], 6) for m in history] == [0.0, 0.1, 0.2, 0.25, 0.25, 0.25]
  assert [round(m["down"], 6) for m in history] == [0.0, -0.1, -0.2, -0.3, -0.4, -0.5]
  params = jax.device_get(state["params"]["loss"])
  assert float(params["up"]) == np.float32(0.25) and float(params["down"]) == np.float32(-0.5)


def test_sigmoid_max_scale_projection_keeps_the_bias_learnable():
  # The same kind on the sigmoid objective: a bound on t' only; the bias is untouched by it.
  config = tiny(dict(name="sigmoid", init_scale=math.log(10.0), max_scale=5.0),
                learning_rate=0.05, warmup_steps=0, end_lr_ratio=1.0)
  _, _, history = train(config, 5)
  assert all(m["scale"] <= 5.0 * (1 + 1e-6) for m in history)
  assert history[-1]["bias"] != pytest.approx(-10.0, abs=1e-4)


@pytest.mark.parametrize("loss", [
    dict(name="sigmoid", learn_scale=False),
    dict(name="softmax", learn_scale=False, init_scale=math.log(10.0)),
    dict(name="dcl"),  # dcl's scale is fixed by default (the paper's tau = 0.1)
])
def test_a_fixed_scale_is_outside_the_optimizer(loss):
  # Weight decay 0.1 and lr 0.01, and `no_decay` does not list loss/scale.
  config = tiny(loss, learning_rate=0.01, weight_decay=0.1, warmup_steps=0,
                no_decay=(r".*/bias$", r".*norm.*"))
  trainer, state, history = train(config, 10)
  initial = jax.device_get(trainer.init_state()["params"]["loss"]["scale"])
  final = jax.device_get(state["params"]["loss"]["scale"])
  assert final == initial  # bit for bit
  scales = {m["scale"] for m in history}
  assert len(scales) == 1 and scales.pop() == pytest.approx(10.0, rel=1e-6)
  # No optimizer moments for it: Adam's mu and nu hold no leaf for loss/scale.
  for moment in ("mu", "nu"):
    for tree in optax.tree_utils.tree_get_all_with_path(state["opt_state"], moment):
      paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(tree[1])[0]]
      assert not any("'loss'" in p and "'scale'" in p for p in paths), paths
  # The learnable parameters still train.
  assert history[-1]["loss"] != history[0]["loss"]


def _schedule_count(opt_state) -> int:
  """The step count of optax's learning-rate schedule in `opt_state` (the applied rate's)."""
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  counts = [int(s.count) for s in jax.tree.leaves(opt_state, is_leaf=is_schedule)
            if is_schedule(s)]
  assert len(counts) == 1, counts
  return counts[0]


def test_logged_learning_rate_is_the_applied_one_after_a_skipped_step(monkeypatch):
  config = tiny(dict(name="sigmoid"), learning_rate=0.01, warmup_steps=4)
  monkeypatch.setenv(faults.NAN_STEPS_VAR, "2")
  trainer = Trainer(config)
  state = trainer.init_state()
  for step in range(1, 9):
    applied = float(trainer.schedule(_schedule_count(state["opt_state"])))
    state, metrics = trainer.train_step(state, trainer.global_batch(unrelated_batch(step)))
    assert float(metrics["learning_rate"]) == pytest.approx(applied, rel=1e-7), step
  # The skipped step did not advance the schedule: 8 steps, 7 updates.
  assert _schedule_count(state["opt_state"]) == 7


def test_metrics_file_learning_rate_after_a_skipped_step(tmp_path, monkeypatch):
  # The bug report's run: one NaN step at step 2, 4 warm-up steps, lr 0.01. Step 3 applies the
  # rate of the second update, 0.0025 (it logged 0.0050 before the fix).
  config = load_config_file(TINY)
  config.update(total_steps=8, eval_every_steps=8)
  monkeypatch.setenv(faults.NAN_STEPS_VAR, "2")
  config.optim.update(learning_rate=0.01, warmup_steps=4)
  train_and_evaluate(config, str(tmp_path))
  lines = [l for l in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in l]
  logged = [l["learning_rate"] for l in lines]
  np.testing.assert_allclose(logged[:4], [0.0, 0.0025, 0.0025, 0.005], rtol=1e-6)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, 4, 8, 0.01 * 0.1)
  skipped_before = [0, 0, 1, 1, 1, 1, 1, 1]
  want = [float(schedule(k - s)) for k, s in zip(range(8), skipped_before)]
  np.testing.assert_allclose(logged, want, rtol=1e-6)
