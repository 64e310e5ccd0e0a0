"""The training step: towers -> loss inside shard_map -> grads -> optax update, one jax.jit.

    step_fn = make_train_step(model, objective, tx, schedule, mesh, batch_axes, ...)
    state, metrics = step_fn(state, batch)     # state donated; metrics replicated scalars

Batch arrays are sharded over the batch axes on dimension 0. The towers run under the compiler's
sharding propagation; the objective runs inside `jax.shard_map` over the batch axes only, on
per-device shards, where its collectives (all-gather or ring ppermute) build the global
similarity. A non-finite loss or gradient norm skips the update (params and optimizer state are
kept) and is counted in `bad_steps`; a skipped step does not advance the learning-rate schedule,
and the logged `learning_rate` is the rate applied in that step.

Frozen parameters (`config.optim.freeze`, and an objective's `Param(learned=False)`) get a zero
gradient, so they do not count in `grad_norm` and XLA drops their backward computation. The
objective's bounded parameters (`Param(low=..., high=...)`) are projected into their bounds
after the update.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax.losses.registry import Objective, project
from clip_jax.training.state import State


def make_loss_fn(model: nn.Module, objective: Objective, mesh: Mesh,
                 batch_axes: Sequence[str]) -> Callable:
  """(params, batch) -> (loss, metrics): the towers then the sharded objective."""
  batch_axes = tuple(batch_axes)

  def loss_fn(params, batch):
    outputs = dict(model.apply({"params": params["model"]}, batch, train=True))
    for key in objective.batch_keys:  # e.g. instance ids, sharded like the embeddings
      outputs[key] = batch[key]
    sharded = jax.shard_map(
        objective.apply, mesh=mesh, in_specs=(P(batch_axes), P()), out_specs=(P(), P()),
        axis_names=frozenset(batch_axes))
    return sharded(outputs, params["loss"])

  return loss_fn


def make_train_step(model: nn.Module, objective: Objective, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, batch_axes: Sequence[str],
                    state_shardings: Any, batch_keys: Sequence[str], frozen: Any = None,
                    debug_nan_steps: Sequence[int] = ()) -> Callable[[State, Mapping[str, jax.Array]],
                                                          tuple[State, dict[str, jax.Array]]]:
  """Builds the jitted, donated train step with explicit in/out shardings.

  Args:
    batch_keys: the keys of the batch dict (all sharded over `batch_axes` on dimension 0).
    frozen: a bool pytree like the params (True: frozen, gets a zero gradient), or None.
    debug_nan_steps: test-only fault injection; the updates that would make `step` equal to one
      of these values see a NaN loss.
  """
  loss_fn = make_loss_fn(model, objective, mesh, batch_axes)
  batch_sharding = NamedSharding(mesh, P(tuple(batch_axes)))
  replicated = NamedSharding(mesh, P())

  def train_step(state, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    if debug_nan_steps:
      loss = jnp.where(jnp.isin(state["step"] + 1, jnp.asarray(debug_nan_steps)), jnp.nan, loss)
    if frozen is not None:
      grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_params = optax.apply_updates(state["params"], updates)
    new_params = dict(new_params, loss=project(new_params["loss"], objective.init_params))
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = {
        "step": state["step"] + 1,
        "params": keep(new_params, state["params"]),
        "opt_state": keep(new_opt_state, state["opt_state"]),
        "rng": state["rng"],
        "bad_steps": jnp.where(ok, 0, state["bad_steps"] + 1),
        "skipped": state["skipped"] + (~ok).astype(jnp.int32),
    }
    metrics = dict(metrics)
    # optax counts applied updates only (a skipped step keeps its state), so the rate applied in
    # this step is the schedule at (steps so far) - (steps skipped so far).
    applied_lr = schedule(state["step"] - state["skipped"])
    metrics.update(loss=loss, grad_norm=grad_norm, learning_rate=applied_lr,
                   skipped=new_state["skipped"], bad_steps=new_state["bad_steps"])
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(state_shardings, {k: batch_sharding for k in batch_keys}),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_embed_fn(model: nn.Module, mesh: Mesh, batch_axes: Sequence[str],
                  batch_size: int) -> Callable[[Any, str, np.ndarray], np.ndarray]:
  """Returns embed(model_params, modality, inputs [N, ...] numpy) -> [N, d] numpy embeddings.

  Every process passes the same full `inputs`; they are cut into global batches of `batch_size`
  (the last one padded), sharded over the batch axes, embedded, and gathered back to the host.
  """
  from clip_jax.models import MultiTower

  sharding = NamedSharding(mesh, P(tuple(batch_axes)))
  replicated = NamedSharding(mesh, P())

  @functools.partial(jax.jit, static_argnames="modality", out_shardings=replicated)
  def embed(model_params, inputs, modality):
    return model.apply({"params": model_params}, inputs, modality, method=MultiTower.embed)

  def call(model_params, modality, inputs):
    inputs = np.asarray(inputs)
    n = len(inputs)
    out = []
    for start in range(0, n, batch_size):
      chunk = inputs[start:start + batch_size]
      pad = batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      global_chunk = jax.make_array_from_callback(chunk.shape, sharding, lambda idx: chunk[idx])
      out.append(np.asarray(embed(model_params, global_chunk, modality))[:batch_size - pad])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  return call
