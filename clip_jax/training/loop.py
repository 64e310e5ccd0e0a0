"""The training loop: build everything from the config, resume, train, evaluate, checkpoint, log.

    final_metrics = train_and_evaluate(config, workdir)

Every `log_every_steps` a training line goes to `<workdir>/metrics.jsonl` (the step's metrics,
`examples_per_sec` and `examples_per_sec_per_device`, `mfu` when the devices' peak FLOP/s is
known (`clip_jax.training.flops`), and `data_wait_fraction`: the seconds the loop spent blocked in
`next(data_iter)` over the wall seconds since the previous training line, evaluation time
excluded from both, as for `examples_per_sec`; near 0 when the background threads keep up), every
`eval_every_steps` (and at the end) the evaluators run, every `ckpt_every_steps` (and at the end)
a checkpoint is written. Starting again with the same workdir resumes from the latest checkpoint,
including the data iterator's position. The workdir may be local or on object storage
(`gs://bucket/run`): every file goes through `clip_jax.fs`. What is trained is assembled in
`clip_jax.training.trainer`; this module runs it: `restore_or_init`, then per step the train
step, `_Run.log_step`, `_Run.evaluate` and `_Run.checkpoint`.

The loop keeps the devices busy: the batch of step N + 1 is sent to the devices right after step
N is dispatched (its transfer overlaps the steps running), and the host reads step N's results
(the divergence check, `_Run.check_divergence`) only once step N + 1 is dispatched, except at the
steps that log, evaluate or checkpoint, which wait for their own step. So while the devices run a
step the next one is queued and the batch after it on its way; the host waits once per step, for
the step before the last one dispatched, which bounds the batches on the devices to three.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections

from clip_jax import fs
from clip_jax.checkpoint import Checkpointer, load_params_from
from clip_jax.data import TrainIterator, make_tokenizer, make_train_iterator
from clip_jax.evals import make_evaluators
from clip_jax.log import get_logger
from clip_jax.metrics import MetricsWriter, ProgressBar
from clip_jax.plots import plot_metrics
from clip_jax.registry import ConfigError
from clip_jax.training import faults
from clip_jax.training import flops as flops_lib
from clip_jax.training import state as state_lib
from clip_jax.training.preemption import PreemptionGuard
from clip_jax.training.trainer import Trainer, check_vocab, run_evals

log = get_logger(__name__)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


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


def initial_state(trainer: Trainer, config: ml_collections.ConfigDict) -> state_lib.State:
  """A fresh train state; its params loaded from `config.init_from` (with
  `config.init_from_rules`) when that is set, and the optimizer state made for them."""
  state = trainer.init_state()
  if config.init_from:
    params = load_params_from(config.init_from, state["params"],
                              trainer.state_shardings["params"], config.init_from_rules)
    state = dict(state, params=params, opt_state=jax.jit(
        trainer.tx.init, out_shardings=trainer.state_shardings["opt_state"])(params))
    log.info("Initialised params from %s.", config.init_from)
  return state


def restore_or_init(trainer: Trainer, ckpt: Checkpointer,
                    data_iter: TrainIterator) -> tuple[int, state_lib.State]:
  """(start step, state): the newest readable checkpoint, with `data_iter` moved to where it
  was, or step 0 and `initial_state`."""
  config = trainer.config
  restored = ckpt.restore_latest(trainer.abstract_state)
  if restored is None:
    state = initial_state(trainer, config)
    micro = (f" in {config.batch_size // config.microbatch_size} micro-batches of "
             f"{config.microbatch_size}" if config.microbatch_size else "")
    log.info("Model: %s parameters on a mesh %s; batch %d%s.",
             f"{state_lib.param_count(state['params']):,}", dict(trainer.mesh.shape),
             config.batch_size, micro)
    return 0, state
  start, state, data_state = restored
  data_iter.set_state(data_state)
  log.info("Resumed from %s/%d (step %d of %d).", ckpt.directory, start, start,
           config.total_steps)
  return start, state


@dataclasses.dataclass
class _Run:
  """What the steps of one run share: the trainer, its data, evaluators and outputs, and the
  clock of the training throughput (`last_time`, `last_step`: the last logged step;
  `data_wait`: seconds blocked in `next_batch` since then); `flops_per_example` (model FLOPs of
  one training example, `flops_lib.model_flops_per_example`) and `peak_flops` (the peak FLOP/s
  of all the devices together, None when not known) give the MFU."""
  trainer: Trainer
  ckpt: Checkpointer
  data_iter: TrainIterator
  evaluators: dict[str, Any]
  writer: MetricsWriter
  bar: ProgressBar
  last_step: int
  flops_per_example: float = 0.0
  peak_flops: float | None = None
  last_time: float = dataclasses.field(default_factory=time.time)
  data_wait: float = 0.0

  def next_batch(self) -> dict[str, Any]:
    """The next host batch from `data_iter`, adding the time it blocked to `data_wait`."""
    start = time.time()
    batch = next(self.data_iter)
    self.data_wait += time.time() - start
    return batch

  def due(self, step: int, every: int) -> bool:
    """Whether something done every `every` steps (and at the last step) is due at `step`."""
    return step % every == 0 or step == self.trainer.config.total_steps

  def log_step(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Every `log_every_steps`: the step's metrics, the training examples per second (in all and
    per device), the MFU (when `peak_flops` is known: model FLOPs per second over the peak), the
    fraction of that time spent waiting for data since the last logged step, and the source's
    skipped samples (`data/skipped/<reason>`, cumulative, as this process saw them) to
    metrics.jsonl and the progress bar. Other steps only move the bar (no device read)."""
    config = self.trainer.config
    if not self.due(step, config.log_every_steps):
      self.bar.update(step, None)
      return
    values = _scalars(metrics)
    now = time.time()
    elapsed = max(now - self.last_time, 1e-9)
    examples_per_sec = (step - self.last_step) * config.batch_size / elapsed
    values["examples_per_sec"] = examples_per_sec
    values["examples_per_sec_per_device"] = examples_per_sec / self.trainer.mesh.size
    if self.peak_flops:
      values["mfu"] = self.flops_per_example * examples_per_sec / self.peak_flops
    values["data_wait_fraction"] = self.data_wait / elapsed
    self.last_time, self.last_step, self.data_wait = now, step, 0.0
    values.update((f"data/skipped/{k}", v) for k, v in self.data_iter.source.skipped.items())
    self.writer.write(step, values)
    self.bar.update(step, values)

  def evaluate(self, step: int, state: state_lib.State) -> dict[str, float] | None:
    """Every `eval_every_steps`: the evaluators' metrics (also written and shown), else None."""
    if not self.due(step, self.trainer.config.eval_every_steps):
      return None
    start = time.time()
    metrics = run_evals(self.evaluators, self.trainer.embed, state["params"]["model"])
    self.writer.write(step, metrics)
    self.bar.write(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/num_" not in k))
    self.last_time += time.time() - start  # examples/s counts training time only
    return metrics

  def check_divergence(self, metrics: dict[str, jax.Array], step: int) -> int:
    """The consecutive non-finite steps up to `step` (waits for that step to finish).

    The loop calls it for every step once the next one is dispatched, and for the step itself
    before a checkpoint, so a run stops after its `max_bad_steps`-th consecutive non-finite step
    N, during step N + 1 (or at N when N checkpoints), and no checkpoint is written from N on.

    Raises:
      FloatingPointError: `max_bad_steps` of them, naming the last good checkpoint.
    """
    bad = int(jax.device_get(metrics["bad_steps"]))
    limit = self.trainer.config.max_bad_steps
    if bad >= limit:
      raise FloatingPointError(
          f"{bad} consecutive non-finite losses or gradient norms up to step {step} "
          f"(config.max_bad_steps = {limit}); stopping. The last good checkpoint is step "
          f"{self.ckpt.latest_step()} in {self.ckpt.directory}.")
    return bad

  def checkpoint(self, step: int, state: state_lib.State, metrics: dict[str, jax.Array],
                 data_state: dict[str, Any], stop: bool) -> bool:
    """Every `ckpt_every_steps`, and when stopping (then waiting until it is on disk): saves the
    state and `data_state` (the data iterator's position after this step's batch) unless the
    step is non-finite (a checkpoint of a diverging run must never rotate out the good ones).
    Returns whether a checkpoint was written."""
    if not (self.due(step, self.trainer.config.ckpt_every_steps) or stop):
      return False
    if self.check_divergence(metrics, step):
      return False
    saved = self.ckpt.save(step, state, data_state, force=True, wait=stop)
    self.writer.sync()  # object storage: the bucket's metrics.jsonl reaches this step
    return saved


def _train(run: _Run, state: state_lib.State, start: int) -> tuple[int, dict[str, float]]:
  """Trains from step `start` to config.total_steps, or until a stop signal (SIGTERM/SIGINT,
  see `preemption`); returns (the last step, the last eval metrics). The order of each step is
  the module docstring's."""
  config, trainer = run.trainer.config, run.trainer
  step, previous, final = start, None, {}
  batch = trainer.global_batch(run.next_batch()) if step < config.total_steps else None
  with PreemptionGuard() as guard:
    while step < config.total_steps:
      state, metrics = trainer.train_step(state, batch)
      step += 1
      data_state = run.data_iter.get_state()  # after this step's batch: where a resume starts
      if step < config.total_steps:  # the next batch travels while this step runs
        batch = trainer.global_batch(run.next_batch())
      if previous is not None:  # one step behind: the devices still have this step to run
        run.check_divergence(*previous)
      previous = (metrics, step)
      run.log_step(step, metrics)
      final = run.evaluate(step, state) or final
      faults.signal_after(step)
      stop = guard.should_stop()
      saved = run.checkpoint(step, state, metrics, data_state, stop)
      if stop:
        where = (f"checkpoint written to {run.ckpt.directory}/{step}" if saved else
                 f"no checkpoint written (non-finite steps); the latest is step "
                 f"{run.ckpt.latest_step()}")
        log.info("Stopped at step %d of %d; %s. Start again with the same --workdir to resume.",
                 step, config.total_steps, where)
        break
  return step, final


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last eval metrics.

  Stops early, with a checkpoint, on SIGTERM/SIGINT (see `preemption`), and with an error naming
  the last good checkpoint after `max_bad_steps` consecutive non-finite steps.
  """
  _check_workdir(workdir)
  trainer = Trainer(config)
  config = trainer.config
  is_main = jax.process_index() == 0
  tokenizer = make_tokenizer(config.data, run_dir=workdir)
  check_vocab(config, tokenizer)
  data_iter = make_train_iterator(config, tokenizer, process_index=jax.process_index(),
                                  process_count=jax.process_count())
  evaluators = make_evaluators(config, tokenizer)
  ckpt = Checkpointer(workdir, keep=config.ckpt_keep, keep_period=config.ckpt_keep_period,
                      async_save=config.ckpt_async)
  start, state = restore_or_init(trainer, ckpt, data_iter)
  if start >= config.total_steps:
    log.info("The run in %s is already complete; raise --config.total_steps to train further, "
             "or use python -m clip_jax.evaluate to evaluate it.", workdir)
  if is_main:  # only once the run has started or resumed: a failed start keeps the old file
    fs.write_text(fs.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  flops_per_example = flops_lib.model_flops_per_example(trainer)
  peak = flops_lib.peak_flops_per_device(trainer.mesh.devices.flat[0], config)
  log.info("Model FLOPs per training example: %.4g (forward and backward, analytic); peak "
           "FLOP/s per device: %s.", flops_per_example,
           f"{peak:.4g}" if peak else
           f"not known for {trainer.mesh.devices.flat[0].device_kind!r} (no mfu is logged; "
           "set config.peak_tflops_per_device)")
  run = _Run(trainer, ckpt, data_iter, evaluators,
             MetricsWriter(workdir, resume_step=start, enabled=is_main),
             ProgressBar(config.total_steps, initial_step=start, enabled=is_main), start,
             flops_per_example, peak * trainer.mesh.size if peak else None)
  try:
    step, final = _train(run, state, start)
  finally:
    data_iter.close()
    run.bar.close()
    ckpt.close()
    run.writer.close()
  if is_main:
    plot_metrics(fs.join(workdir, "metrics.jsonl"), fs.join(workdir, "metrics.png"))
    if step >= config.total_steps and step > start:  # a rerun of a finished run keeps its file
      fs.write_text(fs.join(workdir, "final_metrics.json"), json.dumps(final, indent=2))
  return final
