"""The training loop: build everything from the config, resume, train, evaluate, checkpoint, log.

    final_metrics = train_and_evaluate(config, workdir)

Every `log_every_steps` a training line goes to `<workdir>/metrics.jsonl`, every
`eval_every_steps` (and at the end) the evaluators run, every `ckpt_every_steps` (and at the end)
a checkpoint is written. Starting again with the same workdir resumes from the latest checkpoint,
including the data iterator's position. The workdir may be local or on object storage
(`gs://bucket/run`): every file goes through `clip_jax.fs`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from clip_jax import config as config_lib
from clip_jax import fs
from clip_jax import mesh as mesh_lib
from clip_jax.checkpoint import Checkpointer, load_params_from
from clip_jax.data import make_tokenizer, make_train_iterator
from clip_jax.evals import make_evaluators
from clip_jax.losses.registry import fixed_mask, make_objective
from clip_jax.metrics import MetricsWriter, ProgressBar
from clip_jax.plots import plot_metrics
from clip_jax.models import abstract_model, parse_model_config
from clip_jax.optim import frozen_mask, make_optimizer
from clip_jax.registry import ConfigError
from clip_jax.training import state as state_lib
from clip_jax.training.preemption import PreemptionGuard
from clip_jax.training.step import make_embed_fn, make_train_step

log = logging.getLogger(__name__)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


class Trainer:
  """Everything built from one config on one mesh: model, objective, optimizer, step functions."""

  def __init__(self, config: ml_collections.ConfigDict, *, devices=None):
    config = config_lib.with_defaults(config)
    devices = list(devices) if devices is not None else jax.devices()
    config_lib.validate_config(config, num_devices=len(devices),
                               process_count=jax.process_count())
    self.config = config
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    self.batch_axes = mesh_lib.validate_batch_axes(self.mesh, config.batch_axes)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh, self.batch_axes)
    self.model_spec = parse_model_config(config.model)
    self.modalities = tuple(config.model.towers.keys())
    self.objective = make_objective(config.loss, axis_name=self.batch_axes)
    missing = [m for m in self.objective.modalities if m not in self.modalities]
    if missing:
      raise ConfigError(f"config.loss.name = {config.loss.name!r} needs the modalities "
                        f"{self.objective.modalities}, but config.model.towers has no {missing}")

  def build(self, sample_batch: dict[str, np.ndarray]) -> None:
    """Builds optimizer, state shardings and the jitted step for batches shaped like `sample`."""
    config = self.config
    absent = [m for m in self.modalities if m not in sample_batch]
    if absent:
      raise ConfigError(
          f"config.model.towers.{absent[0]} reads the batch entry {absent[0]!r}, which the data "
          f"does not provide (it gives {sorted(sample_batch)}); for an extra image view, add it "
          "to config.data.extra_views")
    sample = state_lib.sample_inputs(sample_batch, self.modalities)
    self.model = abstract_model(self.model_spec, sample)  # the structure; params are in the state
    init_params = state_lib.make_init_fn(self.model_spec, self.objective, sample)
    abstract_params = jax.eval_shape(init_params, jax.random.key(0))
    fixed = {"model": jax.tree.map(lambda _: False, abstract_params["model"]),
             "loss": fixed_mask(self.objective.init_params)}
    self.frozen = frozen_mask(config.optim, abstract_params, fixed)
    self.tx, self.schedule = make_optimizer(config.optim, config.total_steps, abstract_params,
                                            self.frozen)
    self.make_state = state_lib.make_state_fn(init_params, self.tx, config.seed)
    self.abstract_state, self.state_shardings = state_lib.state_shardings(
        self.make_state, config.sharding_rules, self.mesh)
    # Only what the towers and the objective read goes to the devices.
    self.batch_keys = tuple(k for k in sample_batch
                            if k in self.modalities or k in self.objective.batch_keys)
    missing = [k for k in self.objective.batch_keys if k not in sample_batch]
    if missing:
      hint = ("; set config.data.captions_per_example >= 2 for instance ids"
              if "instance_id" in missing else "")
      raise ConfigError(
          f"config.loss.name = {config.loss.name!r} reads the batch entries {missing}, which "
          f"the data does not provide (it gives {sorted(sample_batch)}){hint}")
    self.train_step = make_train_step(
        self.model, self.objective, self.tx, self.schedule, self.mesh, self.batch_axes,
        self.state_shardings, self.batch_keys, frozen=self.frozen,
        debug_nan_steps=tuple(config.debug_nan_steps), microbatch_size=config.microbatch_size)
    self.embed = make_embed_fn(self.model, self.mesh, self.batch_axes,
                               config.eval_batch_size or config.batch_size)

  def init_state(self) -> state_lib.State:
    return state_lib.create_state(self.make_state, self.state_shardings)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded over the batch axes."""
    return mesh_lib.to_global_batch({k: local_batch[k] for k in self.batch_keys},
                                    self.batch_sharding, self.config.batch_size)


def check_vocab(config: ml_collections.ConfigDict, tokenizer) -> None:
  """Every tower with a `vocab_size` must cover the tokenizer's ids."""
  for modality, tower in config.model.towers.items():
    if "vocab_size" in tower and tower.vocab_size < tokenizer.vocab_size:
      raise ConfigError(
          f"config.model.towers.{modality}.vocab_size = {tower.vocab_size} is smaller than the "
          f"tokenizer's vocabulary ({tokenizer.vocab_size} ids from config.data.tokenizer); set "
          f"it to at least {tokenizer.vocab_size}")


def _check_workdir(workdir: str) -> None:
  """Creates `workdir` (local or object storage) and writes, then deletes, a probe file in it.

  Raises:
    ConfigError: naming `workdir` and the cause, if that fails.
  """
  try:
    fs.makedirs(workdir)
    probe = fs.join(workdir, f".write_test_{jax.process_index()}_{os.getpid()}")
    fs.write_text(probe, "ok")
    fs.remove(probe)
  except Exception as e:  # noqa: BLE001  (object stores raise their own error types)
    raise ConfigError(f"--workdir {workdir!r} is not writable ({type(e).__name__}: {e}); choose "
                      "a directory you can write to") from None


def run_evals(evaluators: dict[str, Any], embed, params) -> dict[str, float]:
  metrics: dict[str, float] = {}
  for name, evaluator in evaluators.items():
    metrics.update(evaluator(lambda modality, x: embed(params["model"], modality, x)))
  return metrics


def initial_state(trainer: Trainer, config: ml_collections.ConfigDict) -> state_lib.State:
  state = trainer.init_state()
  if config.init_from:
    params = load_params_from(config.init_from, state["params"],
                              trainer.state_shardings["params"], config.init_from_rules)
    state = dict(state, params=params, opt_state=jax.jit(
        trainer.tx.init, out_shardings=trainer.state_shardings["opt_state"])(params))
    print(f"Initialised params from {config.init_from}.", flush=True)
  return state


def _inject_signal(spec: str, step: int) -> None:
  """Test-only fault injection: `config.debug_signal = "SIGKILL@17"` signals this process."""
  if spec:
    name, at = spec.split("@")
    if int(at) == step:
      os.kill(os.getpid(), getattr(signal, name))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last eval metrics.

  Stops early, with a checkpoint, on SIGTERM/SIGINT (see `preemption`), and with an error naming
  the last good checkpoint after `max_bad_steps` consecutive non-finite steps.
  """
  _check_workdir(workdir)
  trainer = Trainer(config)
  config = trainer.config
  is_main = jax.process_index() == 0

  tokenizer = make_tokenizer(config.data)
  check_vocab(config, tokenizer)
  data_iter = make_train_iterator(config, tokenizer, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  first = next(data_iter)
  trainer.build(first)
  evaluators = make_evaluators(config, tokenizer)

  ckpt = Checkpointer(workdir, keep=config.ckpt_keep, keep_period=config.ckpt_keep_period,
                      async_save=config.ckpt_async)
  restored = ckpt.restore_latest(trainer.abstract_state)
  if restored is not None:
    start, state, data_state = restored
    data_iter.set_state(data_state)
    pending = None
    print(f"Resumed from {ckpt.directory}/{start} (step {start} of {config.total_steps}).",
          flush=True)
    if start >= config.total_steps:
      print(f"The run in {workdir} is already complete; raise --config.total_steps to train "
            "further, or use python -m clip_jax.evaluate to evaluate it.", flush=True)
  else:
    start, state = 0, initial_state(trainer, config)
    pending = first  # drawn to learn the shapes: it is the first training batch
    micro = (f" in {config.batch_size // config.microbatch_size} micro-batches of "
             f"{config.microbatch_size}" if config.microbatch_size else "")
    print(f"Model: {state_lib.param_count(state['params']):,} parameters on a mesh "
          f"{dict(trainer.mesh.shape)}; batch {config.batch_size}{micro}.", flush=True)
  if is_main:  # only once the run has started or resumed: a failed start keeps the old file
    fs.write_text(fs.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  writer = MetricsWriter(workdir, resume_step=start, enabled=is_main)
  bar = ProgressBar(config.total_steps, initial_step=start, enabled=is_main)
  final: dict[str, float] = {}
  last_time, last_step = time.time(), start
  step, previous = start, None

  def check_divergence(metrics, at_step):
    bad = int(jax.device_get(metrics["bad_steps"]))
    if bad >= config.max_bad_steps:
      raise FloatingPointError(
          f"{bad} consecutive non-finite losses or gradient norms up to step {at_step} "
          f"(config.max_bad_steps = {config.max_bad_steps}); stopping. The last good checkpoint "
          f"is step {ckpt.latest_step()} in {ckpt.directory}.")
    return bad

  try:
    with PreemptionGuard() as guard:
      while step < config.total_steps:
        local = pending if pending is not None else next(data_iter)
        pending = None
        state, metrics = trainer.train_step(state, trainer.global_batch(local))
        step += 1
        if previous is not None:  # one step behind: no stall of the dispatch pipeline
          check_divergence(*previous)
        previous = (metrics, step)
        if step % config.log_every_steps == 0 or step == config.total_steps:
          values = _scalars(metrics)
          now = time.time()
          values["examples_per_sec"] = ((step - last_step) * config.batch_size
                                        / max(now - last_time, 1e-9))
          last_time, last_step = now, step
          writer.write(step, values)
          bar.update(step, values)
        else:
          bar.update(step, None)
        if step % config.eval_every_steps == 0 or step == config.total_steps:
          eval_start = time.time()
          final = run_evals(evaluators, trainer.embed, state["params"])
          writer.write(step, final)
          bar.write(" ".join(f"{k}={v:.4g}" for k, v in final.items() if "/num_" not in k))
          last_time += time.time() - eval_start  # examples/s counts training time only
        _inject_signal(config.debug_signal, step)
        stop = guard.should_stop()
        saved = False
        if step % config.ckpt_every_steps == 0 or step == config.total_steps or stop:
          # Never let a checkpoint of a diverging run rotate out the good ones.
          if check_divergence(metrics, step) == 0:
            saved = ckpt.save(step, state, data_iter.get_state(), force=True, wait=stop)
            writer.sync()  # object storage: the bucket's metrics.jsonl reaches this step
        if stop:
          where = (f"checkpoint written to {ckpt.directory}/{step}" if saved else
                   f"no checkpoint written (non-finite steps); the latest is step "
                   f"{ckpt.latest_step()}")
          print(f"Stopped at step {step} of {config.total_steps}; {where}. Start again with the "
                "same --workdir to resume.", flush=True)
          break
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  if is_main:
    plot_metrics(fs.join(workdir, "metrics.jsonl"), fs.join(workdir, "metrics.png"))
    if step >= config.total_steps and step > start:  # a rerun of a finished run keeps its file
      fs.write_text(fs.join(workdir, "final_metrics.json"), json.dumps(final, indent=2))
  return final
