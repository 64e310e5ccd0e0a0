"""The train state, created directly in its sharded layout.

The state is a plain dict pytree:
  step      int32 []              number of optimizer updates applied
  params    {"model": the MultiTower's params (a plain dict, `split_params`), "loss": the
            objective's raw parameters}
  opt_state the optax state for `params`
  rng       uint32 [2]            a raw PRNG key, folded with the step for stochastic layers
  bad_steps int32 []              consecutive non-finite steps (divergence guard)
  skipped   int32 []              all updates skipped for a non-finite loss or gradient norm

`create_state` follows eval_shape -> shardings from the regex rules -> jit(init, out_shardings),
so no full copy of the parameters ever exists on one device.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from clip_jax.losses.registry import Objective, initial_values, project
from clip_jax.models import ModelSpec, MultiTower, split_params
from clip_jax.sharding import shardings_for

State = dict[str, Any]


def sample_inputs(batch_spec: Mapping[str, jax.ShapeDtypeStruct],
                  modalities: Sequence[str]) -> dict[str, np.ndarray]:
  """One zero example of each modality, with the trailing shape and dtype of its [B, ...] entry
  in `batch_spec`: what the towers are built for."""
  return {m: np.zeros((1,) + tuple(batch_spec[m].shape[1:]), batch_spec[m].dtype)
          for m in modalities}


def make_model_init_fn(model_spec: ModelSpec,
                       sample: Mapping[str, np.ndarray]) -> Callable[[jax.Array], Any]:
  """Returns rng -> the params of the MultiTower built for inputs shaped like `sample` (a plain
  dict, `split_params`)."""
  def init(rng):
    return split_params(MultiTower(model_spec, sample, rngs=nnx.Rngs(rng)))[1]

  return init


def make_init_fn(init_model: Callable[[jax.Array], Any],
                 objective: Objective) -> Callable[[jax.Array], dict[str, Any]]:
  """Returns rng -> params {"model": init_model(rng), "loss": the objective's parameters}."""
  def init(rng):
    # Bounded parameters start inside their bounds (the same projection as after each update).
    loss_params = project(initial_values(objective.init_params), objective.init_params)
    return {"model": init_model(rng), "loss": loss_params}

  return init


def make_state_fn(init_params: Callable, tx: optax.GradientTransformation,
                  seed: int) -> Callable[[], State]:
  def make_state():
    init_rng, state_rng = jax.random.split(jax.random.key(seed))
    params = init_params(init_rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(state_rng),  # raw uint32 [2]: plain to checkpoint
            "bad_steps": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

  return make_state


def state_shardings(make_state: Callable[[], State], rules, mesh: Mesh) -> tuple[Any, Any]:
  """(abstract state, NamedShardings) for the state that `make_state` builds."""
  abstract = jax.eval_shape(make_state)
  shardings = shardings_for(abstract, rules, mesh)
  # Counters and the key stay replicated whatever the rules say.
  rep = NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings.update(step=rep, rng=rep, bad_steps=rep, skipped=rep)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def create_state(make_state: Callable[[], State], shardings: Any) -> State:
  """Runs `make_state` under jit with the given out_shardings: created already sharded."""
  return jax.jit(make_state, out_shardings=shardings)()


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
