"""Evaluate a run's checkpoint with the evaluators of its config.

  python -m clip_jax.evaluate --workdir /tmp/emoji_demo [--step 600] [--config other.py]

Without --config, the config saved in `<workdir>/config.json` by training is used. Only the
model's params are read from the checkpoint (no optimizer state), into a model built from the
config alone: the training data is never read (only the evaluation splits), and no optimizer or
train step is built. Several processes evaluate together with the multi-host flags of
`clip_jax.train` (--multihost, or --coordinator_address/--num_processes/--process_id). Process 0
prints one JSON object of metrics and writes it to `<workdir>/eval/<step>.json` (a later
evaluation of the same step replaces it), with the evaluators' pictures beside it
(`<step>_<eval_name>_grid.png`, `..._projection.png`, `..._confusion.png`), and adds the metrics
to the run's TensorBoard events (`<workdir>/tensorboard/`, a file of their own). The workdir may be local or on object storage
(gs://bucket/run).
"""

from __future__ import annotations

import json
import sys

import jax
import ml_collections
from absl import app, flags, logging

from clip_jax import distributed, fs
from clip_jax.cli import define_config_flag, parse_flags_or_exit
from clip_jax.config import saved_config
from clip_jax.registry import ConfigError
from clip_jax.tensorboard import TensorBoardWriter

_CONFIG = define_config_flag("Optional get_config() file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
EVAL_DIRNAME = "eval"  # <workdir>/eval/<step>.json: the metrics of each evaluated checkpoint
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_START_DISTRIBUTED = distributed.define_flags()


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None, pictures_dir: str | None = None
                        ) -> dict[str, float]:
  """Restores the model params of checkpoint `step` (latest if None) of `workdir` and runs the
  config's evaluators.

  With `pictures_dir` (local or object storage), process 0 writes each evaluator's pictures there
  as `<step>_<eval_name>_<picture>.png` (a retrieval split's "grid" and "projection", a
  classification's "confusion"; `clip_jax.evals.pictures`).

  Returns:
    {"step": the checkpoint's step, **the evaluators' metrics}.

  Raises:
    ConfigError: `workdir` has no checkpoint, or none at `step` (the message lists the steps it
      has), checked before anything is built; the checkpoint holds another model than `config`
      describes.
  """
  from clip_jax.checkpoint import Checkpointer
  from clip_jax.data import make_tokenizer
  from clip_jax.evals import make_evaluators
  from clip_jax.training.trainer import Embedder, check_vocab, run_evals

  ckpt = Checkpointer(workdir, async_save=False, read_only=True)
  try:
    available = ckpt.all_steps()
    if not available:
      raise ConfigError(f"--workdir {workdir!r} has no checkpoint in {ckpt.directory}; train "
                        "there first, or give the workdir of a training run")
    if step is not None and step not in available:
      raise ConfigError(f"--step={step}: {ckpt.directory} has no checkpoint at step {step}; "
                        f"available steps: {', '.join(map(str, available))}")
    step = available[-1] if step is None else step
    embedder = Embedder(config)
    config = embedder.config
    tokenizer = make_tokenizer(config.data, run_dir=workdir)
    check_vocab(config, tokenizer)
    params = ckpt.restore_params(step, embedder.abstract_model_params)
  finally:
    ckpt.close()
  evaluators = make_evaluators(config, tokenizer)
  metrics = run_evals(evaluators, embedder.embed, params["model"])
  if pictures_dir is not None and jax.process_index() == 0:
    fs.makedirs(pictures_dir)
    for eval_name, evaluator in evaluators.items():
      for picture, png in evaluator.pictures().items():
        fs.write_atomic(fs.join(pictures_dir, f"{step}_{eval_name}_{picture}.png"), png)
  return {"step": step, **metrics}


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing off the console
  del argv
  workdir = _WORKDIR.value
  try:
    _START_DISTRIBUTED()
    if _CONFIG.value is not None:
      config = _CONFIG.value
    else:
      path = fs.join(workdir, "config.json")
      if not fs.exists(path):
        raise ConfigError(f"{path} not found: pass --config, or a --workdir made by training")
      config = saved_config(fs.read_text(path))
    metrics = evaluate_checkpoint(config, workdir, _STEP.value,
                                  pictures_dir=fs.join(workdir, EVAL_DIRNAME))
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    line = json.dumps(metrics)
    print(line)
    fs.makedirs(fs.join(workdir, EVAL_DIRNAME))
    fs.write_text(fs.join(workdir, EVAL_DIRNAME, f"{metrics['step']}.json"), line + "\n")
    with TensorBoardWriter(workdir) as tensorboard:  # beside the training run's events
      tensorboard.write(metrics["step"], {k: v for k, v in metrics.items() if k != "step"})


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main, flags_parser=parse_flags_or_exit)
