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
gradient, so they do not count in `grad_norm`. The
objective's bounded parameters (`Param(low=..., high=...)`) are projected into their bounds
after the update.

With `microbatch_size` > 0 the gradients come from `make_microbatch_grad_fn` (gradient caching:
the same loss and gradients with the towers' activations held for one micro-batch at a time);
everything after the gradients is the same step.

The model is a Flax NNX `MultiTower`; the step functions take it (abstract, from
`clip_jax.models.abstract_model`) for its structure only, and inside `jax.jit` rebuild it from
the params in the state with `nnx.merge(graphdef, params["model"])` (a trace-time operation: the
compiled step sees plain arrays). The towers' random numbers come from `state["rng"]` folded
with the step (and with the micro-batch index in the micro-batched step).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax.losses.registry import Objective, project
from clip_jax.models import MultiTower
from clip_jax.training.state import State


def sharded_objective(objective: Objective, mesh: Mesh, batch_axes: Sequence[str]) -> Callable:
  """(outputs, loss_params) -> (loss, metrics): `objective.apply` in shard_map over the batch
  axes. `outputs` are global `[B, ...]` arrays sharded over `batch_axes` on dimension 0; the loss
  and metrics are replicated scalars."""
  batch_axes = tuple(batch_axes)
  return jax.shard_map(objective.apply, mesh=mesh, in_specs=(P(batch_axes), P()),
                       out_specs=(P(), P()), axis_names=frozenset(batch_axes))


def make_loss_fn(model: MultiTower, objective: Objective, mesh: Mesh,
                 batch_axes: Sequence[str]) -> Callable:
  """(params, batch, rng=None) -> (loss, metrics): the towers (given the PRNG key `rng` for
  their stochastic layers, or None) then the sharded objective."""
  apply_objective = sharded_objective(objective, mesh, batch_axes)
  graphdef = nnx.graphdef(model)

  def loss_fn(params, batch, rng=None):
    outputs = dict(nnx.merge(graphdef, params["model"])(batch, rng=rng))
    for key in objective.batch_keys:  # e.g. instance ids, sharded like the embeddings
      outputs[key] = batch[key]
    return apply_objective(outputs, params["loss"])

  return loss_fn


def split_microbatches(x: jax.Array, num_micro: int, shards: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...]: micro-batch j takes rows j*m/S .. (j+1)*m/S - 1 (m = B / k)
  of every device's shard of B / S rows (S batch shards), so each micro-batch is spread over all
  S shards, in order, and the split moves no data between devices."""
  rows = x.shape[0] // (shards * num_micro)
  x = x.reshape((shards, num_micro, rows) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape((num_micro, shards * rows) + x.shape[3:])


def merge_microbatches(x: jax.Array, shards: int) -> jax.Array:
  """The inverse of `split_microbatches`: [k, m, ...] -> [k * m, ...] in the batch's order."""
  num_micro, m = x.shape[:2]
  x = x.reshape((num_micro, shards, m // shards) + x.shape[2:])
  return jnp.swapaxes(x, 0, 1).reshape((num_micro * m,) + x.shape[3:])


def make_microbatch_grad_fn(model: MultiTower, objective: Objective, mesh: Mesh,
                            batch_axes: Sequence[str], microbatch_size: int,
                            frozen: Any = None) -> Callable:
  """(params, batch, rng=None) -> ((loss, metrics), grads), equal to
  `value_and_grad(make_loss_fn(...))` on the same global batch, with the towers' activations
  held for one micro-batch at a time.

  Gradient caching (Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size
  under Memory Limited Setup"), in three passes over the k = B / `microbatch_size` micro-batches
  (`lax.scan`s; each micro-batch is sharded over the batch axes like a whole batch, see
  `split_microbatches`):

  1. embed every micro-batch with every tower, keeping only the embeddings `[B, d]` float32
     (nothing is differentiated, so no activations are saved);
  2. the objective over the whole global batch, in shard_map as in the plain step, and its
     gradients dL/de with respect to every modality's embeddings and dL/dtheta_loss;
  3. for each micro-batch, run the towers again under `jax.vjp` seeded with that micro-batch's
     rows of dL/de, and sum the parameter gradients (float32, like the params).

  Since L depends on a tower's parameters only through the embeddings,
  dL/dtheta = sum_j (de_j/dtheta)^T dL/de_j: the plain step's gradient, summed in another order.
  A tower whose parameters are all frozen is embedded in pass 1 only and gets a zero gradient;
  a partly frozen tower is run again (the zeroing of its frozen leaves happens in the step).
  Micro-batch j's towers get the key fold_in(rng, j) in both passes, so a stochastic tower
  (dropout) computes the same embeddings in pass 3 as in pass 1. (Its random numbers then
  differ from the plain step's, which draws them for the whole batch at once; the built-in
  towers take none, so for them the two steps are equal.)

  Cost: one more forward of each trained tower per step. Memory: besides the state and the
  batch, the activations of one micro-batch, the `[B, d]` embeddings and their gradients, the
  objective's own buffers, and one float32 gradient accumulator like the model params.

  Args:
    batch_axes: the mesh axes the batch is sharded over, on dimension 0.
    microbatch_size: examples per micro-batch over all devices; it must divide the global
      batch, and the number of batch shards must divide it (the config check says so at
      start-up). Global, like the batch size (and open_clip's batch / accum_freq), so that a
      config describes the same step on every mesh (the same number of micro-batches, each
      spread over all batch shards) and more devices only lower the memory per device.
    frozen: a bool pytree like the params (True: frozen), or None.

  Raises:
    ValueError (at trace time): the global batch is not a multiple of `microbatch_size`.
  """
  batch_axes = tuple(batch_axes)
  shards = math.prod(mesh.shape[a] for a in batch_axes)
  apply_objective = sharded_objective(objective, mesh, batch_axes)
  graphdef = nnx.graphdef(model)
  modalities = model.modalities
  trained = tuple(m for m in modalities
                  if frozen is None or not all(jax.tree.leaves(frozen["model"][m])))
  sharded = lambda x, spec: lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  micro_spec, batch_spec = P(None, batch_axes), P(batch_axes)

  def embed(towers, inputs, modality, rng):
    """Embeds one micro-batch's `inputs` with tower `modality` (other towers' params unused)."""
    return nnx.merge(graphdef, towers).embed(sharded(inputs, batch_spec), modality, rng=rng)

  def grad_fn(params, batch, rng=None):
    global_batch = batch[modalities[0]].shape[0]
    if global_batch % microbatch_size:
      raise ValueError(f"the global batch of {global_batch} is not a multiple of "
                       f"config.microbatch_size = {microbatch_size}")
    num_micro = global_batch // microbatch_size
    micro = {m: sharded(split_microbatches(batch[m], num_micro, shards), micro_spec)
             for m in modalities}
    towers = params["model"]
    micro_rngs = None if rng is None else jax.vmap(
        functools.partial(jax.random.fold_in, rng))(jnp.arange(num_micro))

    def forward(_, micro_j):
      inputs, rng_j = micro_j
      return None, {m: embed(towers, inputs[m], m, rng_j) for m in modalities}

    _, embeddings = lax.scan(forward, None, (micro, micro_rngs))
    embeddings = {m: sharded(merge_microbatches(e, shards), batch_spec)
                  for m, e in embeddings.items()}
    extras = {key: batch[key] for key in objective.batch_keys}
    (loss, metrics), (embedding_grads, loss_grads) = jax.value_and_grad(
        lambda e, p: apply_objective({**e, **extras}, p), argnums=(0, 1), has_aux=True)(
            embeddings, params["loss"])

    def backward(acc, micro_j):
      inputs, cotangents, rng_j = micro_j
      for m in trained:
        _, pullback = jax.vjp(lambda p: embed({**towers, m: p}, inputs[m], m, rng_j), towers[m])
        acc[m] = jax.tree.map(jnp.add, acc[m], pullback(cotangents[m])[0])
      return acc, None

    cotangents = {m: sharded(split_microbatches(embedding_grads[m], num_micro, shards),
                             micro_spec) for m in trained}
    zeros = {m: jax.tree.map(jnp.zeros_like, towers[m]) for m in modalities}
    model_grads, _ = lax.scan(backward, {m: zeros[m] for m in trained},
                              ({m: micro[m] for m in trained}, cotangents, micro_rngs))
    return (loss, metrics), {"model": dict(zeros, **model_grads), "loss": loss_grads}

  return grad_fn


def make_grad_fn(model: MultiTower, objective: Objective, mesh: Mesh, batch_axes: Sequence[str],
                 microbatch_size: int = 0, frozen: Any = None) -> Callable:
  """(params, batch, rng=None) -> ((loss, metrics), grads) of the train step: `value_and_grad` of
  `make_loss_fn` (microbatch_size 0), or `make_microbatch_grad_fn` (the same values)."""
  if microbatch_size:
    return make_microbatch_grad_fn(model, objective, mesh, batch_axes, microbatch_size, frozen)
  return jax.value_and_grad(make_loss_fn(model, objective, mesh, batch_axes), has_aux=True)


def make_train_step(model: MultiTower, objective: Objective, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, batch_axes: Sequence[str],
                    state_shardings: Any, batch_keys: Sequence[str], frozen: Any = None,
                    fault_nan_steps: Sequence[int] = (), microbatch_size: int = 0,
                    ) -> Callable[[State, Mapping[str, jax.Array]],
                                  tuple[State, dict[str, jax.Array]]]:
  """Builds the jitted, donated train step with explicit in/out shardings.

  Args:
    batch_keys: the keys of the batch dict (all sharded over `batch_axes` on dimension 0).
    frozen: a bool pytree like the params (True: frozen, gets a zero gradient), or None.
    fault_nan_steps: test-only fault injection (`clip_jax.training.faults.nan_steps()`): the
      updates that would make `step` equal to one of these values see a NaN loss.
    microbatch_size: 0: the towers see the whole global batch at once; > 0: gradients over
      micro-batches of this many examples (global), see `make_microbatch_grad_fn`.
  """
  grad_fn = make_grad_fn(model, objective, mesh, batch_axes, microbatch_size, frozen)
  batch_sharding = NamedSharding(mesh, P(tuple(batch_axes)))
  replicated = NamedSharding(mesh, P())

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    (loss, metrics), grads = grad_fn(state["params"], batch, rng)
    if fault_nan_steps:
      loss = jnp.where(jnp.isin(state["step"] + 1, jnp.asarray(fault_nan_steps)), jnp.nan, loss)
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
                   skipped_steps=new_state["skipped"], bad_steps=new_state["bad_steps"])
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(state_shardings, {k: batch_sharding for k in batch_keys}),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def make_embed_fn(model: MultiTower, mesh: Mesh, batch_axes: Sequence[str],
                  batch_size: int) -> Callable[[Any, str, np.ndarray], np.ndarray]:
  """Returns embed(model_params, modality, inputs [N, ...] numpy) -> [N, d] numpy embeddings.

  Every process passes the same full `inputs`; they are cut into global batches of `batch_size`
  (the last one padded), sharded over the batch axes, embedded (deterministically), and gathered
  back to the host.
  """
  graphdef = nnx.graphdef(model)
  sharding = NamedSharding(mesh, P(tuple(batch_axes)))
  replicated = NamedSharding(mesh, P())

  @functools.partial(jax.jit, static_argnames="modality", out_shardings=replicated)
  def embed(model_params, inputs, modality):
    return nnx.merge(graphdef, model_params).embed(inputs, modality)

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
