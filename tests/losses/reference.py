"""Single-device float64 numpy references for the contrastive losses, written from the formulas.

Nothing here imports clip_jax. Values follow the papers' definitions directly (full N x N logit
matrices, explicit targets); gradients are hand-derived and are themselves checked against
central finite differences (`check_grads_by_finite_differences`, called by
`test_references_match_finite_differences` in test_softmax.py / test_sigmoid.py).

Below the references, a small JAX harness (also independent of clip_jax) runs a loss function
inside `jax.shard_map` and differentiates through it, the way a trainer would.

The tests import this file as `losses_reference` (registered by tests/losses/conftest.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np


def unit_rows(a: np.ndarray) -> np.ndarray:
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def random_pairs(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  """Two [n, d] float64 arrays of unit rows, loosely correlated row by row."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = x + 1.5 * rng.normal(size=(n, d))
  return unit_rows(x), unit_rows(y)


def _log_sigmoid(u: np.ndarray) -> np.ndarray:
  return -np.logaddexp(0.0, -u)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
  m = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


# ----------------------------------------------------------------------------------------------
# Sigmoid (SigLIP): L = (1/N) sum_ij [-q_ij log s(u_ij) - (1 - q_ij) log s(-u_ij)],
# u = t x y^T + b, q = (1 - eps) I + eps / 2.


def sigmoid_targets(n: int, eps: float) -> np.ndarray:
  return (1.0 - eps) * np.eye(n) + eps / 2.0


def sigmoid_loss(x, y, t, b, eps=0.0) -> float:
  n = x.shape[0]
  u = t * (x @ y.T) + b
  q = sigmoid_targets(n, eps)
  return float(np.sum(-q * _log_sigmoid(u) - (1.0 - q) * _log_sigmoid(-u)) / n)


def sigmoid_grads(x, y, t, b, eps=0.0):
  """(dL/dx, dL/dy, dL/dt, dL/db): dL/du_ij = (sigmoid(u_ij) - q_ij) / N."""
  n = x.shape[0]
  s = x @ y.T
  u = t * s + b
  g = (1.0 / (1.0 + np.exp(-u)) - sigmoid_targets(n, eps)) / n
  return t * g @ y, t * g.T @ x, float(np.sum(g * s)), float(np.sum(g))


# ----------------------------------------------------------------------------------------------
# Softmax (CLIP): l = t x y^T; L = 1/2 [CE over rows + CE over columns], targets
# q = (1 - eps) I + eps / N.


def softmax_targets(n: int, eps: float) -> np.ndarray:
  return (1.0 - eps) * np.eye(n) + eps / n


def softmax_loss(x, y, t, eps=0.0) -> float:
  n = x.shape[0]
  logits = t * (x @ y.T)
  q = softmax_targets(n, eps)
  log_p_rows = logits - _logsumexp(logits, axis=1)[:, None]  # x -> y: softmax over columns
  log_p_cols = logits - _logsumexp(logits, axis=0)[None, :]  # y -> x: softmax over rows
  image_to_text = -np.sum(q * log_p_rows) / n
  text_to_image = -np.sum(q * log_p_cols) / n
  return float((image_to_text + text_to_image) / 2.0)


def softmax_grads(x, y, t, eps=0.0):
  """(dL/dx, dL/dy, dL/dt): dL/dl = (P_rows - q + P_cols - q) / (2N)."""
  n = x.shape[0]
  s = x @ y.T
  logits = t * s
  p_rows = np.exp(logits - _logsumexp(logits, axis=1)[:, None])
  p_cols = np.exp(logits - _logsumexp(logits, axis=0)[None, :])
  q = softmax_targets(n, eps)
  g = (p_rows - q + p_cols - q) / (2.0 * n)
  return t * g @ y, t * g.T @ x, float(np.sum(g * s))


# ----------------------------------------------------------------------------------------------


def finite_difference(f: Callable[..., float], args: list, index: int, h: float = 1e-6):
  """Central differences of scalar f w.r.t. args[index] (an array or a float), in float64."""
  base = np.asarray(args[index], np.float64)
  grad = np.zeros_like(base)
  for pos in np.ndindex(base.shape):
    plus, minus = base.copy(), base.copy()
    plus[pos] += h
    minus[pos] -= h
    a_plus, a_minus = list(args), list(args)
    a_plus[index], a_minus[index] = plus, minus
    grad[pos] = (f(*a_plus) - f(*a_minus)) / (2 * h)
  return grad


def check_grads_by_finite_differences(loss: Callable[..., float], grads: Callable[..., tuple],
                                      scalars: tuple[float, ...]) -> None:
  """Asserts that the hand-derived `grads(x, y, *scalars, eps)` are the central differences of
  `loss(x, y, *scalars, eps)`, for 5 x 3 embeddings and label smoothing eps = 0 and 0.2."""
  x, y = random_pairs(0, 5, 3)
  for eps in (0.0, 0.2):
    args = [x, y, *scalars]
    f = lambda *a: loss(*a, eps=eps)
    for i, want in enumerate(grads(*args, eps=eps)):
      np.testing.assert_allclose(finite_difference(f, args, i), want, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# JAX harness (not a reference): the loss under shard_map, differentiated from outside.

# (mesh shape, axis names) of the sharded variants the losses are tested on; None: no shard_map.
SHARDINGS = [
    (None, ("data",)),
    ((1,), ("data",)),
    ((2,), ("data",)),
    ((4,), ("data",)),
    ((8,), ("data",)),
    ((4, 2), ("data", "fsdp")),
]


def f32(*arrays) -> list:
  """The arguments as float32 JAX arrays."""
  import jax.numpy as jnp
  return [jnp.asarray(a, jnp.float32) for a in arrays]


@functools.lru_cache(maxsize=None)
def mesh(shape: tuple[int, ...], names: tuple[str, ...]):
  """An Auto-typed mesh over the first prod(shape) simulated devices."""
  import jax
  size = int(np.prod(shape))
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=jax.devices()[:size])


def sharded_value_and_grad(loss_fn: Callable, mesh_shape: tuple[int, ...] | None,
                           names: tuple[str, ...] = ("data",), num_scalars: int = 2):
  """jit(value_and_grad) of loss_fn(x, y, *scalars, axis_name=...) over all arguments.

  With mesh_shape None the loss runs on the whole batch with axis_name=None; otherwise inside
  `jax.shard_map` with in_specs (P(names), P(names), P(), ...) and out_specs P(), so the scalars
  are replicated inputs whose gradients come from JAX's transpose of the replication.
  """
  import jax
  from jax.sharding import PartitionSpec as P

  if mesh_shape is None:
    f = lambda *args: loss_fn(*args, axis_name=None)
  else:
    axis = names if len(names) > 1 else names[0]
    f = jax.shard_map(lambda *args: loss_fn(*args, axis_name=axis), mesh=mesh(mesh_shape, names),
                      in_specs=(P(names), P(names)) + (P(),) * num_scalars, out_specs=P())
  return jax.jit(jax.value_and_grad(f, argnums=tuple(range(2 + num_scalars))))


def objective_grads(objective, x, y, loss_params):
  """((loss, metrics), d loss / d loss_params) of a registered objective, whole batch.

  x, y: `[n, d]` image and text embeddings (cast to float32); loss_params: the raw parameters.
  """
  import jax

  x, y = f32(x, y)

  def f(params):
    return objective.apply({"image": x, "text": y}, params)

  return jax.value_and_grad(f, has_aux=True)(loss_params)
