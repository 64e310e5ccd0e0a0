"""SigLIP: the pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training").

For a global batch of N pairs (x_i, y_i) of L2-normalised embeddings, with scale t > 0 (already
exponentiated) and bias b:

    u_ij = t x_i . y_j + b,         z_ij = +1 if i == j else -1
    L    = -(1/N) sum_i sum_j log sigmoid(z_ij u_ij)

i.e. a binary logistic loss over all N^2 pairs, summed over the N columns and averaged over the N
rows. Label smoothing eps moves the binary targets toward 1/2,

    q_ij = (1 - eps) [i == j] + eps / 2,
    L    = (1/N) sum_ij [ -q_ij log sigmoid(u_ij) - (1 - q_ij) log sigmoid(-u_ij) ]
         = (1/N) sum_ij [ softplus(-z_ij u_ij) + (eps / 2) z_ij u_ij ],

which is the plain loss for eps = 0.

Sharding: called inside `jax.shard_map` over `axis_name`, each device holds `[n, d]` shards of x
and y (global row order = shard order along the linearised axis index, N = n D) and gets the
global loss. Two implementations:

* "all_gather": local rows against the all-gathered y, `[n, N]` logits per device.
* "ring" (default): the y blocks travel around the ring with `lax.ppermute`; each device adds one
  `[n, n]` block (optionally in `[n, chunk]` column chunks) per step. A `custom_vjp` recomputes
  the blocks in the backward ring, where the gradient for each travelling y block travels with it
  and comes home to its owner at the end. Memory per device is independent of D: the only
  residuals are the local x, y, t, b, and blocks are shifted in place piece by piece (see
  `clip_jax.losses.ring`), so a device holds its own x, y, one travelling block (plus its
  gradient accumulator in the backward pass) and one `[n, chunk]` logit tile.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from clip_jax.losses import collectives as C
from clip_jax.losses import ring as R
from clip_jax.losses import registry as reg
from clip_jax.losses.numerics import dot_t

Array = jax.Array


def sigmoid_loss(x: Array, y: Array, scale: Array | float, bias: Array | float, *,
                 axis_name: C.AxisName = None, impl: str = "ring", chunk_size: int | None = None,
                 label_smoothing: float = 0.0) -> Array:
  """The SigLIP loss over the global batch (see the module docstring for the formula).

  Args:
    x: `[n, d]` local shard of L2-normalised embeddings of the first modality (rows).
    y: `[n, d]` local shard of the second modality, paired with x row by row.
    scale: scalar t > 0 (already exponentiated); replicated.
    bias: scalar b; replicated.
    axis_name: batch mesh axis (or tuple of axes) of the enclosing `shard_map`, or None when x
      and y are the whole batch.
    impl: "ring" (memory-flat in the number of devices) or "all_gather".
    chunk_size: ring only: process each `[n, n]` block in column chunks of this many columns
      (need not divide n). None or 0: whole blocks.
    label_smoothing: eps in [0, 1); binary targets become (1 - eps) [i == j] + eps / 2.

  Returns:
    Scalar float32 loss, the same on every device. Gradients w.r.t. x, y, scale and bias equal
    those of the single-device loss on the global batch, also when scale and bias enter the
    enclosing `shard_map` replicated (in_specs `P()`).
  """
  R.check_args(x, y, impl, label_smoothing)
  axes = C.normalize_axes(axis_name)
  t = jnp.asarray(scale, jnp.float32)
  b = jnp.asarray(bias, jnp.float32)
  eps = float(label_smoothing)
  size = C.axis_size(axes)
  n = x.shape[0]
  if impl == "all_gather":
    if chunk_size:
      raise ValueError("chunk_size applies to impl='ring' only")
    local = _all_gather_sum(x, y, t, b, axes=axes, eps=eps)
  else:
    lay = R.layout(n, chunk_size)
    x, y, t, b = C.vary((x, y, t, b), axes)
    local = _ring_sum(x, y, t, b, axes, size, eps, lay)
  return C.psum(local, axes) / (n * size)


def _all_gather_sum(x, y, t, b, *, axes, eps):
  """Sum of the per-pair losses of the local rows against all N columns."""
  n = x.shape[0]
  y_all = C.all_gather(y, axes)
  u = t * dot_t(x, y_all) + b
  cols = jnp.arange(y_all.shape[0])
  rows, _ = C.global_rows(n, axes)
  z = jnp.where(rows[:, None] == cols[None, :], 1.0, -1.0)
  return jnp.sum(jax.nn.softplus(-z * u) + (0.5 * eps) * z * u)


def _signs(n: int, k: Array | int, chunk: int, diagonal: Array) -> tuple[Array, Array]:
  """(z, valid) for column chunk k of a block: z = +1 on the diagonal of the own block."""
  rows = jnp.arange(n)
  cols = k * chunk + jnp.arange(chunk)
  # Written so that the [n, chunk] comparison depends on `diagonal` (the ring step): XLA then
  # cannot hoist a loop-invariant [n, n] mask out of the ring loop and keep it alive throughout.
  shifted = cols + jnp.where(diagonal, 0, n)
  z = jnp.where(rows[:, None] == shifted[None, :], 1.0, -1.0)
  return z, cols < n


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _ring_sum(x, y, t, b, axes, size, eps, lay):
  """Sum over the local rows and all N columns of the per-pair losses (no normalisation)."""
  return _ring_fwd(x, y, t, b, axes, size, eps, lay)[0]


def _ring_fwd(x, y, t, b, axes, size, eps, lay):
  n = x.shape[0]

  def step(s, y_blk, total, exchange):
    def chunk_body(k, carry):
      y_blk, total = carry
      z, valid = _signs(n, k, lay.chunk, s == 0)
      u = t * dot_t(x, R.take_chunk(y_blk, k, lay.chunk)) + b
      pair = jax.nn.softplus(-z * u) + (0.5 * eps) * z * u
      total = total + jnp.sum(jnp.where(valid[None, :], pair, 0.0))
      return exchange(R.after(y_blk, total), k), total

    return R.chunk_loop(lay.num_chunks, chunk_body, (y_blk, total))

  zero = C.vary(jnp.zeros((), jnp.float32), axes)
  _, total = R.ring_loop(size, step, R.pad_rows(y, lay.rows), zero, axes, lay)
  return total, (x, y, t, b, total)


def _ring_bwd(axes, size, eps, lay, res, g):
  x, y, t, b, total = res
  # The backward ring needs nothing from the forward one. This (numerically void) dependency
  # makes XLA finish the forward ring first instead of interleaving the two and keeping
  # buffers of both alive at once.
  t = t + 0.0 * total
  n = x.shape[0]
  x32 = x.astype(jnp.float32)

  def step(s, travelling, local, exchange):
    def chunk_body(k, carry):
      (y_blk, dy_blk), (dx, dt, db) = carry
      z, valid = _signs(n, k, lay.chunk, s == 0)
      y_c = R.take_chunk(y_blk, k, lay.chunk)
      u = t * dot_t(x, y_c) + b
      # d pair / d u = -z sigmoid(-z u) + (eps / 2) z, times the incoming cotangent.
      du = g * jnp.where(valid[None, :], z * ((0.5 * eps) - jax.nn.sigmoid(-z * u)), 0.0)
      du_y = du @ y_c.astype(jnp.float32)  # [n, d]
      # dt = sum_ij du_ij x_i.y_j = sum_i x_i.(du y)_i: no second [n, chunk] buffer needed.
      dx, dt, db = dx + t * du_y, dt + jnp.sum(x32 * du_y), db + jnp.sum(du)
      du = R.after(du, dx)  # one [n, d] product at a time
      dy_blk = R.add_chunk(dy_blk, k, lay.chunk, t * (du.T @ x32))
      return exchange(R.after((y_blk, dy_blk), dx), k), (dx, dt, db)

    return R.chunk_loop(lay.num_chunks, chunk_body, (travelling, local))

  zeros = lambda shape: C.vary(jnp.zeros(shape, jnp.float32), axes)
  travelling = (R.pad_rows(y, lay.rows), zeros((lay.rows, y.shape[1])))
  local = (zeros(x.shape), zeros(()), zeros(()))
  (_, dy), (dx, dt, db) = R.ring_loop(size, step, travelling, local, axes, lay)
  dy = R.shift_all(dy, lay, axes, size)[:n]  # the accumulated gradient of block k+1 goes home
  return dx.astype(x.dtype), dy.astype(y.dtype), dt.astype(t.dtype), db.astype(b.dtype)


_ring_sum.defvjp(_ring_fwd, _ring_bwd)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SigmoidFields(reg.ContrastiveFields):
  """`config.loss` of "sigmoid": `ContrastiveFields` (modalities, impl, chunk_size,
  label_smoothing, learn_scale, max_scale) and init_scale (t' with t = exp(t')), init_bias (b's
  initial value), use_bias (False: b = 0 and no bias parameter)."""

  init_scale: float = math.log(10.0)
  init_bias: float = -10.0
  use_bias: bool = True


@reg.LOSSES.register("sigmoid", fields=SigmoidFields)
def sigmoid_objective(loss_config: Any, *, axis_name: C.AxisName) -> reg.Objective:
  """The SigLIP objective between two modalities (config fields: `SigmoidFields`).

  Params: {"scale": t', "bias": b} ("bias" only with use_bias). Metrics: loss, scale (t) and
  bias (with use_bias).
  """
  f: SigmoidFields = reg.LOSSES.parse(loss_config, name="sigmoid")
  init_params = {"scale": reg.scale_param(f.init_scale, learn_scale=f.learn_scale,
                                          max_scale=f.max_scale)}
  if f.use_bias:
    init_params["bias"] = reg.Param(f.init_bias)

  def apply(outputs: Mapping[str, jax.Array],
            loss_params: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    x, y = reg.get_embeddings(outputs, f.modalities)
    t = reg.temperature(loss_params["scale"], f.learn_scale)
    b = jnp.asarray(loss_params["bias"], jnp.float32) if f.use_bias else jnp.float32(0.0)
    loss = sigmoid_loss(x, y, t, b, axis_name=axis_name, impl=f.impl,
                        chunk_size=f.chunk_size or None, label_smoothing=f.label_smoothing)
    metrics = {"loss": loss, "scale": t}
    if f.use_bias:
      metrics["bias"] = b
    return loss, metrics

  return reg.Objective(init_params=init_params, apply=apply, modalities=f.modalities)
