"""What one config builds on one mesh, from the config alone (no batch is drawn to learn shapes).

    embedder = Embedder(config)   # mesh, model, input specs, params layout, embed: evaluation
    trainer = Trainer(config)     # + objective, optimizer, train state layout, jitted train step
    state = trainer.init_state()
    state, metrics = trainer.train_step(state, trainer.global_batch(local_batch))

The input shapes come from `clip_jax.data.train_batch_spec(config)`: "image" float32
[B, S, S, 3], "text" int32 [B, L], one float32 [B, S, S, 3] entry per extra view, and
"instance_id" int32 [B] with several captions per example. Each tower reads the entry of its
modality; the objective may read more (`Objective.batch_keys`). A tower or objective that reads
an entry the data config does not provide is a ConfigError here, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from clip_jax import config as config_lib
from clip_jax import mesh as mesh_lib
from clip_jax.data import train_batch_spec
from clip_jax.losses.registry import Objective, fixed_mask, make_objective
from clip_jax.models import abstract_model, parse_model_config
from clip_jax.optim import frozen_mask, make_optimizer
from clip_jax.registry import ConfigError
from clip_jax.sharding import shardings_for
from clip_jax.training import faults
from clip_jax.training import state as state_lib
from clip_jax.training.step import make_embed_fn, make_train_step


class Embedder:
  """The model on a mesh and the layout of its params: everything evaluation needs.

  Args:
    config: the run's config (optional fields are filled in; it is validated).
    devices: the devices of the mesh (default: all).
    batch_spec: {batch key: jax.ShapeDtypeStruct [B, ...]}; default
      `train_batch_spec(config)`.

  Attributes:
    config, mesh, batch_axes, batch_sharding, model_spec, model (the MultiTower's structure,
    params abstract), modalities (the towers' batch keys), batch_spec, embed (see
    `make_embed_fn`), and `abstract_model_params` (computed on first use).

  Raises:
    ConfigError: an invalid config, or a tower whose modality the batch spec lacks.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, devices=None,
               batch_spec: Mapping[str, jax.ShapeDtypeStruct] | None = None):
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
    self.batch_spec = dict(batch_spec if batch_spec is not None else train_batch_spec(config))
    absent = [m for m in self.modalities if m not in self.batch_spec]
    if absent:
      raise ConfigError(
          f"config.model.towers.{absent[0]} reads the batch entry {absent[0]!r}, which the data "
          f"does not provide (config.data gives {sorted(self.batch_spec)}); for an extra image "
          "view, add it to config.data.extra_views")
    sample = state_lib.sample_inputs(self.batch_spec, self.modalities)
    self.model = abstract_model(self.model_spec, sample)  # the structure; params are in the state
    self.init_model = state_lib.make_model_init_fn(self.model_spec, sample)
    self.embed = make_embed_fn(self.model, self.mesh, self.batch_axes,
                               config.eval_batch_size or config.batch_size)

  @functools.cached_property
  def abstract_model_params(self) -> dict[str, Any]:
    """{"model": the model's params as ShapeDtypeStructs carrying their shardings}: the part of
    the train state's params that evaluation reads, laid out as in training."""
    params = {"params": {"model": jax.eval_shape(self.init_model, jax.random.key(0))}}
    shardings = shardings_for(params, self.config.sharding_rules, self.mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        params, shardings)["params"]


class Trainer(Embedder):
  """An `Embedder` plus the objective, optimizer, train state layout and the jitted train step.

  Args:
    config, devices, batch_spec: as for `Embedder`.
    objective: the objective to train (default: `make_objective(config.loss, ...)`).

  Attributes (besides the Embedder's):
    objective, frozen (bool pytree like the params), tx, schedule, abstract_state and
    state_shardings (the train state's layout), batch_keys (the batch entries sent to the
    devices), train_step (see `make_train_step`).

  Raises:
    ConfigError: as `Embedder`, and for an objective that needs a tower or a batch entry that
      the config does not give.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, devices=None,
               batch_spec: Mapping[str, jax.ShapeDtypeStruct] | None = None,
               objective: Objective | None = None):
    super().__init__(config, devices=devices, batch_spec=batch_spec)
    config = self.config
    self.objective = objective or make_objective(config.loss, axis_name=self.batch_axes)
    missing = [m for m in self.objective.modalities if m not in self.modalities]
    if missing:
      raise ConfigError(f"config.loss.name = {config.loss.name!r} needs the modalities "
                        f"{self.objective.modalities}, but config.model.towers has no {missing}")
    missing = [k for k in self.objective.batch_keys if k not in self.batch_spec]
    if missing:
      hint = ("; set config.data.captions_per_example >= 2 for instance ids"
              if "instance_id" in missing else "")
      raise ConfigError(
          f"config.loss.name = {config.loss.name!r} reads the batch entries {missing}, which "
          f"the data does not provide (config.data gives {sorted(self.batch_spec)}){hint}")
    # Only what the towers and the objective read goes to the devices.
    self.batch_keys = tuple(k for k in self.batch_spec
                            if k in self.modalities or k in self.objective.batch_keys)
    optimization = make_optimization(config, self.init_model, self.objective)
    self.frozen, self.tx = optimization.frozen, optimization.tx
    self.schedule, self.make_state = optimization.schedule, optimization.make_state
    self.abstract_state, self.state_shardings = state_lib.state_shardings(
        self.make_state, config.sharding_rules, self.mesh)
    self.train_step = make_train_step(
        self.model, self.objective, self.tx, self.schedule, self.mesh, self.batch_axes,
        self.state_shardings, self.batch_keys, frozen=self.frozen,
        fault_nan_steps=faults.nan_steps(), microbatch_size=config.microbatch_size)

  def init_state(self) -> state_lib.State:
    return state_lib.create_state(self.make_state, self.state_shardings)

  def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded over the batch axes (only the
    entries in `batch_keys`)."""
    return mesh_lib.to_global_batch({k: local_batch[k] for k in self.batch_keys},
                                    self.batch_sharding, self.config.batch_size)


@dataclasses.dataclass(frozen=True)
class Optimization:
  """What the optimizer of a config needs, on no mesh.

  Attributes:
    abstract_params: {"model": ..., "loss": ...} as ShapeDtypeStructs.
    frozen: bool pytree like the params (True: not updated).
    tx, schedule: the optax transformation and the learning-rate schedule.
    make_state: () -> State, to run under jit or `jax.eval_shape`.
  """

  abstract_params: Any
  frozen: Any
  tx: Any
  schedule: Any
  make_state: Any


def make_optimization(config: ml_collections.ConfigDict, init_model,
                      objective: Objective) -> Optimization:
  """The `Optimization` of `config` for the model params `init_model` (rng -> params) and
  `objective`."""
  init_params = state_lib.make_init_fn(init_model, objective)
  abstract_params = jax.eval_shape(init_params, jax.random.key(0))
  fixed = {"model": jax.tree.map(lambda _: False, abstract_params["model"]),
           "loss": fixed_mask(objective.init_params)}
  frozen = frozen_mask(config.optim, abstract_params, fixed)
  tx, schedule = make_optimizer(config.optim, config.total_steps, abstract_params, frozen)
  return Optimization(abstract_params, frozen, tx, schedule,
                      state_lib.make_state_fn(init_params, tx, config.seed))


def check_vocab(config: ml_collections.ConfigDict, tokenizer) -> None:
  """Every tower with a `vocab_size` must cover the tokenizer's ids."""
  for modality, tower in config.model.towers.items():
    if "vocab_size" in tower and tower.vocab_size < tokenizer.vocab_size:
      raise ConfigError(
          f"config.model.towers.{modality}.vocab_size = {tower.vocab_size} is smaller than the "
          f"tokenizer's vocabulary ({tokenizer.vocab_size} ids from config.data.tokenizer); set "
          f"it to at least {tokenizer.vocab_size}")


def run_evals(evaluators: Mapping[str, Any], embed, model_params) -> dict[str, float]:
  """The metrics of every evaluator for `embed` (an `Embedder.embed`) with `model_params`."""
  metrics: dict[str, float] = {}
  for evaluator in evaluators.values():
    metrics.update(evaluator(lambda modality, x: embed(model_params, modality, x)))
  return metrics
