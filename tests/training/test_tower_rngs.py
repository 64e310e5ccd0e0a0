"""The towers' random numbers come from explicit keys: the train step's, and in the micro-batched
step the same key for a micro-batch in both of its passes.

A test-only flat tower with dropout on its inputs (tests/training/conftest.py) stands for a
stochastic tower; the built-in towers draw no random numbers.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from clip_jax.config import load_config_file
from clip_jax.data import make_tokenizer, make_train_iterator
from clip_jax.training.trainer import Trainer
from clip_jax.training.step import make_grad_fn, sharded_objective

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")
MICRO = 8  # two micro-batches of the global batch of 16


def test_dropout_keys_of_the_train_step_and_of_both_micro_batch_passes():
  config = load_config_file(TINY)
  config.mesh = (("data", 1), ("fsdp", 1))
  config.evals = ml_collections.ConfigDict()
  for modality in ("image", "text"):
    config.model.towers[modality] = ml_collections.ConfigDict(dict(
        name="_test_flat_tower", width=16, dropout=0.5))
  batch = next(make_train_iterator(config, make_tokenizer(config.data)))
  trainer = Trainer(config, devices=jax.devices()[:1])
  state = trainer.init_state()
  params = jax.device_get(state["params"])
  inputs = trainer.global_batch(batch)
  # The key of the first step: state["rng"] folded with step 0.
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0)

  # The train step draws from its key: its loss is the loss with that key; another key gives
  # another loss.
  grad_fn = jax.jit(make_grad_fn(trainer.model, trainer.objective, trainer.mesh,
                                 trainer.batch_axes))
  (loss, _), _ = grad_fn(params, inputs, rng)
  (other_loss, _), _ = grad_fn(params, inputs, jax.random.key(1))
  _, metrics = trainer.train_step(state, inputs)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  assert abs(float(loss) - float(other_loss)) > 1e-3

  # Micro-batched: loss and gradients are those of the embeddings of micro-batch j drawn with
  # fold_in(rng, j), so pass 3 (under vjp) saw the random numbers of pass 1.
  micro_fn = jax.jit(make_grad_fn(trainer.model, trainer.objective, trainer.mesh,
                                  trainer.batch_axes, microbatch_size=MICRO))
  (micro_loss, _), micro_grads = micro_fn(params, inputs, rng)
  apply_objective = sharded_objective(trainer.objective, trainer.mesh, trainer.batch_axes)

  def reference(params):
    model = nnx.merge(nnx.graphdef(trainer.model), params["model"])
    outputs = {m: jnp.concatenate([
        model.embed(inputs[m][j * MICRO:(j + 1) * MICRO], m, rng=jax.random.fold_in(rng, j))
        for j in range(len(batch["image"]) // MICRO)]) for m in ("image", "text")}
    return apply_objective(outputs, params["loss"])

  (want_loss, _), want_grads = jax.jit(jax.value_and_grad(reference, has_aux=True))(params)
  np.testing.assert_allclose(micro_loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(micro_grads), jax.device_get(want_grads))
