"""The sigmoid (SigLIP) loss against the float64 numpy reference, on 1 to 8 devices."""

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
from clip_jax.losses import sigmoid_loss
from clip_jax.registry import ConfigError
from clip_jax.losses.registry import initial_values, project


N, DIM = 16, 8  # global batch: 2 rows per device on 8 devices
T, B = 10.0, -3.0


def _assert_matches(got, x, y, t, b, eps=0.0, rtol=1e-5, atol=1e-5):
  value, (dx, dy, dt, db) = got
  want_dx, want_dy, want_dt, want_db = ref.sigmoid_grads(x, y, t, b, eps)
  np.testing.assert_allclose(value, ref.sigmoid_loss(x, y, t, b, eps), rtol=rtol, atol=atol)
  np.testing.assert_allclose(dx, want_dx, rtol=rtol, atol=atol)
  np.testing.assert_allclose(dy, want_dy, rtol=rtol, atol=atol)
  np.testing.assert_allclose(dt, want_dt, rtol=rtol, atol=atol)
  np.testing.assert_allclose(db, want_db, rtol=rtol, atol=atol)
  assert all(np.isfinite(np.asarray(a)).all() for a in (value, dx, dy, dt, db))


@functools.lru_cache(maxsize=None)
def _compiled(impl, mesh_shape, names=("data",), eps=0.0, chunk_size=None):
  loss = functools.partial(sigmoid_loss, impl=impl, label_smoothing=eps, chunk_size=chunk_size)
  return ref.sharded_value_and_grad(loss, mesh_shape, names)


def test_references_match_finite_differences():
  ref.check_grads_by_finite_differences(ref.sigmoid_loss, ref.sigmoid_grads, (4.0, -1.5))


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
@pytest.mark.parametrize("mesh_shape,names", ref.SHARDINGS)
def test_sharded_matches_reference(impl, mesh_shape, names):
  x, y = ref.random_pairs(1, N, DIM)
  got = _compiled(impl, mesh_shape, names)(*ref.f32(x, y, T, B))
  _assert_matches(got, x, y, T, B)


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
def test_label_smoothing(impl):
  x, y = ref.random_pairs(2, N, DIM)
  got = _compiled(impl, (4,), eps=0.1)(*ref.f32(x, y, T, B))
  _assert_matches(got, x, y, T, B, eps=0.1)
  # Smoothing changes the loss (the targets really moved).
  assert abs(float(got[0]) - ref.sigmoid_loss(x, y, T, B)) > 1e-3


@hypothesis.settings(max_examples=8, deadline=None, derandomize=True)
@hypothesis.given(
    n_local=st.sampled_from([1, 3]),
    dim=st.sampled_from([2, 5]),
    duplicates=st.booleans(),
    scales=st.sampled_from([(1.0, 0.0), (100.0, -10.0), (10.0, -10.0), (0.01, 5.0)]),
    chunk_size=st.sampled_from([None, 2]),
    seed=st.integers(0, 2**16),
)
def test_property_ring_matches_reference(n_local, dim, duplicates, scales, chunk_size, seed):
  """Random shapes, duplicated embeddings and extreme t, b: finite and equal to the reference."""
  t, b = scales
  x, y = ref.random_pairs(seed, 4 * n_local, dim)
  if duplicates:  # every row and column appears twice: ties in logits, equal positives
    x[1::2], y[1::2] = x[0::2], y[0::2]
    x[-1] = x[0]
  got = _compiled("ring", (4,), chunk_size=chunk_size)(*ref.f32(x, y, t, b))
  # float32 inputs: logits up to 100 carry ~1e-5 relative rounding of the embeddings.
  scale = max(1.0, abs(ref.sigmoid_loss(x, y, t, b)))
  _assert_matches(got, x, y, t, b, rtol=2e-5, atol=2e-5 * scale)


# ----------------------------------------------------------------------------------------------
# The registered objective and its options.


def _objective(**fields):
  config = ml_collections.ConfigDict(dict(name="sigmoid", **fields))
  return losses.make_objective(config, axis_name=None)


def test_objective_defaults_and_metrics():
  objective = _objective()
  assert initial_values(objective.init_params) == {"scale": pytest.approx(math.log(10.0)), "bias": -10.0}
  assert objective.modalities == ("image", "text")
  x, y = ref.random_pairs(3, 8, DIM)
  params = {"scale": jnp.float32(math.log(T)), "bias": jnp.float32(B)}
  (loss, metrics), grads = ref.objective_grads(objective, x, y, params)
  np.testing.assert_allclose(loss, ref.sigmoid_loss(x, y, T, B), rtol=1e-5)
  assert set(metrics) == {"loss", "scale", "bias"}
  np.testing.assert_allclose(metrics["scale"], T, rtol=1e-6)
  # The raw parameter is t' = log t, so dL/dt' = t dL/dt.
  _, _, dt, db = ref.sigmoid_grads(x, y, T, B)
  np.testing.assert_allclose(grads["scale"], T * dt, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads["bias"], db, rtol=1e-5, atol=1e-6)


def test_objective_options():
  x, y = ref.random_pairs(4, 8, DIM)
  params = {"scale": jnp.float32(math.log(200.0)), "bias": jnp.float32(B)}
  # max_scale bounds t' by a projection after the update (the trainer applies it); the loss uses
  # exp(t') as given and keeps the gradient of t'.
  objective = _objective(max_scale=100.0)
  assert objective.init_params["scale"].high == pytest.approx(math.log(100.0))
  np.testing.assert_allclose(project(params, objective.init_params)["scale"], math.log(100.0),
                             rtol=1e-6)
  np.testing.assert_allclose(project(params, objective.init_params)["bias"], B)
  (loss, metrics), grads = ref.objective_grads(objective, x, y, params)
  np.testing.assert_allclose(metrics["scale"], 200.0, rtol=1e-5)
  np.testing.assert_allclose(loss, ref.sigmoid_loss(x, y, 200.0, B), rtol=1e-5)
  assert float(grads["scale"]) != 0.0 and float(grads["bias"]) != 0.0
  # learn_scale=False: the scale is declared fixed; the trainer keeps it out of the optimizer
  # (tests/training/test_loss_params.py).
  objective = _objective(learn_scale=False)
  assert not objective.init_params["scale"].learned and objective.init_params["bias"].learned
  params = {"scale": jnp.float32(math.log(T)), "bias": jnp.float32(B)}
  (loss, _), grads = ref.objective_grads(objective, x, y, params)
  np.testing.assert_allclose(loss, ref.sigmoid_loss(x, y, T, B), rtol=1e-5)
  # use_bias=False: no bias parameter, b = 0.
  objective = _objective(use_bias=False, label_smoothing=0.1, impl="all_gather")
  assert set(objective.init_params) == {"scale"}
  (loss, metrics), _ = ref.objective_grads(objective, x, y, {"scale": params["scale"]})
  np.testing.assert_allclose(loss, ref.sigmoid_loss(x, y, T, 0.0, eps=0.1), rtol=1e-5)
  assert "bias" not in metrics


@pytest.mark.parametrize("fields,message", [
    (dict(impl="flash"), "config.loss.impl must be one of 'ring', 'all_gather'"),
    (dict(label_smoothing=1.0), "config.loss.label_smoothing"),
    (dict(chunk_size=-1), "config.loss.chunk_size"),
    (dict(chunk_size=4, impl="all_gather"), "config.loss.chunk_size"),
    (dict(use_bais=False), "config.loss.use_bais is not a field"),
    (dict(modalities=("image",)), "config.loss.modalities"),
])
def test_objective_config_errors(fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    _objective(**fields)


def test_objective_missing_modality():
  objective = _objective(modalities=("image", "audio"))
  x, y = ref.f32(*ref.random_pairs(5, 4, DIM))
  with pytest.raises(ConfigError, match="audio"):
    objective.apply({"image": x, "text": y}, initial_values(objective.init_params))
