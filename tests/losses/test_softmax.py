"""The softmax (CLIP) loss against the float64 numpy reference, on 1 to 8 devices."""

from __future__ import annotations

import functools
import math
import re

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import clip_jax.losses as losses
import losses_reference as ref  # tests/losses/reference.py, registered by conftest.py
from clip_jax.losses import softmax_loss
from clip_jax.registry import ConfigError
from clip_jax.losses.registry import initial_values, project


N, DIM = 16, 8  # global batch: 2 rows per device on 8 devices
T = 10.0


def _assert_matches(got, x, y, t, eps=0.0, rtol=1e-5, atol=1e-5):
  value, (dx, dy, dt) = got
  want_dx, want_dy, want_dt = ref.softmax_grads(x, y, t, eps)
  np.testing.assert_allclose(value, ref.softmax_loss(x, y, t, eps), rtol=rtol, atol=atol)
  np.testing.assert_allclose(dx, want_dx, rtol=rtol, atol=atol)
  np.testing.assert_allclose(dy, want_dy, rtol=rtol, atol=atol)
  np.testing.assert_allclose(dt, want_dt, rtol=rtol, atol=atol)
  assert all(np.isfinite(np.asarray(a)).all() for a in (value, dx, dy, dt))


@functools.lru_cache(maxsize=None)
def _compiled(impl, mesh_shape, names=("data",), eps=0.0, chunk_size=None):
  loss = functools.partial(softmax_loss, impl=impl, label_smoothing=eps, chunk_size=chunk_size)
  return ref.sharded_value_and_grad(loss, mesh_shape, names, num_scalars=1)


def test_references_match_finite_differences():
  ref.check_grads_by_finite_differences(ref.softmax_loss, ref.softmax_grads, (4.0,))


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
@pytest.mark.parametrize("mesh_shape,names", ref.SHARDINGS)
def test_sharded_matches_reference(impl, mesh_shape, names):
  x, y = ref.random_pairs(1, N, DIM)
  got = _compiled(impl, mesh_shape, names)(*ref.f32(x, y, T))
  _assert_matches(got, x, y, T)


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
def test_label_smoothing(impl):
  x, y = ref.random_pairs(2, N, DIM)
  got = _compiled(impl, (4,), eps=0.1)(*ref.f32(x, y, T))
  _assert_matches(got, x, y, T, eps=0.1)
  assert abs(float(got[0]) - ref.softmax_loss(x, y, T)) > 1e-3


@hypothesis.settings(max_examples=8, deadline=None, derandomize=True)
@hypothesis.given(
    n_local=st.sampled_from([1, 3]),
    dim=st.sampled_from([2, 5]),
    duplicates=st.booleans(),
    t=st.sampled_from([1.0, 100.0, 0.01, 30.0]),
    chunk_size=st.sampled_from([None, 2]),
    seed=st.integers(0, 2**16),
)
def test_property_ring_matches_reference(n_local, dim, duplicates, t, chunk_size, seed):
  """Random shapes, duplicated embeddings and extreme t: finite and equal to the reference."""
  x, y = ref.random_pairs(seed, 4 * n_local, dim)
  if duplicates:  # ties in the logits, several equal rows in a softmax
    x[1::2], y[1::2] = x[0::2], y[0::2]
    x[-1] = x[0]
  got = _compiled("ring", (4,), chunk_size=chunk_size)(*ref.f32(x, y, t))
  # float32 inputs: logits up to 100 carry ~1e-5 relative rounding of the embeddings.
  scale = max(1.0, abs(ref.softmax_loss(x, y, t)))
  _assert_matches(got, x, y, t, rtol=2e-5, atol=2e-5 * scale)


# ----------------------------------------------------------------------------------------------
# The registered objective and its options.


def _objective(**fields):
  config = ml_collections.ConfigDict(dict(name="softmax", **fields))
  return losses.make_objective(config, axis_name=None)


def test_objective_defaults_and_metrics():
  objective = _objective()
  assert initial_values(objective.init_params) == {"scale": pytest.approx(math.log(1 / 0.07))}
  x, y = ref.random_pairs(3, 8, DIM)
  (loss, metrics), grads = ref.objective_grads(objective, x, y,
                                               {"scale": jnp.float32(math.log(T))})
  np.testing.assert_allclose(loss, ref.softmax_loss(x, y, T), rtol=1e-5)
  assert set(metrics) == {"loss", "scale"}
  np.testing.assert_allclose(metrics["scale"], T, rtol=1e-6)
  _, _, dt = ref.softmax_grads(x, y, T)
  np.testing.assert_allclose(grads["scale"], T * dt, rtol=1e-5, atol=1e-6)


def test_objective_options():
  x, y = ref.random_pairs(4, 8, DIM)
  # CLIP's bound t <= 100 is a projection of t' after the update (the trainer applies it), not a
  # clamp in the loss: the loss uses exp(t') as given and keeps its gradient.
  objective = _objective(max_scale=100.0, modalities=("text", "image"))
  assert objective.init_params["scale"].high == pytest.approx(math.log(100.0))
  params = {"scale": jnp.float32(math.log(150.0))}
  np.testing.assert_allclose(project(params, objective.init_params)["scale"], math.log(100.0),
                             rtol=1e-6)
  (loss, metrics), grads = ref.objective_grads(objective, x, y, params)
  np.testing.assert_allclose(metrics["scale"], 150.0, rtol=1e-5)
  np.testing.assert_allclose(loss, ref.softmax_loss(y, x, 150.0), rtol=1e-5)
  assert float(grads["scale"]) != 0.0
  (loss, _), grads = ref.objective_grads(_objective(learn_scale=False, label_smoothing=0.2),
                                         x, y, {"scale": jnp.float32(math.log(T))})
  np.testing.assert_allclose(loss, ref.softmax_loss(x, y, T, eps=0.2), rtol=1e-5)
  # A fixed scale is left out of the optimizer by the trainer (tests/training/test_loss_params.py).
  assert not _objective(learn_scale=False).init_params["scale"].learned


@pytest.mark.parametrize("fields,message", [
    (dict(impl="ringg"), "config.loss.impl must be one of 'ring', 'all_gather'"),
    (dict(label_smoothing=-0.1), "config.loss.label_smoothing"),
    (dict(chunk_size=2.5), "config.loss.chunk_size"),
    (dict(use_bias=True), "config.loss.use_bias is not a field"),
    (dict(max_scale=-1.0), "config.loss.max_scale"),
    (dict(learn_scale="yes"), "config.loss.learn_scale"),
])
def test_objective_config_errors(fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    _objective(**fields)
