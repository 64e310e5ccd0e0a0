"""CLIP: the symmetric softmax contrastive loss (InfoNCE; Radford et al. 2021, "Learning
Transferable Visual Models From Natural Language Supervision").

For a global batch of N pairs (x_i, y_i) of L2-normalised embeddings and scale t > 0 (already
exponentiated), with logits l_ij = t x_i . y_j:

    L_x->y = (1/N) sum_i CE(l_i., i),   L_y->x = (1/N) sum_j CE(l_.j, j),   L = (L_x->y + L_y->x) / 2

With label smoothing eps the one-hot target over the N classes becomes
q = (1 - eps) onehot + eps / N, so

    CE(l_i., i) = logsumexp_j l_ij - (1 - eps) l_ii - (eps / N) sum_j l_ij.

Sharding: called inside `jax.shard_map` over `axis_name`, each device holds `[n, d]` shards of x
and y (global row order = shard order along the linearised axis index, N = n D) and gets the
global loss. Two implementations:

* "all_gather": local x rows against the gathered y and local y rows against the gathered x,
  `2 [n, N]` logits per device.
* "ring" (default): the y blocks travel around the ring with `lax.ppermute`. Each device keeps
  an online logsumexp for its own x rows (x->y), and each travelling y block carries the online
  logsumexp of its own columns over the x rows it has visited (y->x); these column statistics
  come home to their owner at the end. A `custom_vjp` re-runs the ring in the backward pass,
  recomputing each block's probabilities from the saved logsumexps (as in flash attention), with
  the y gradient travelling with its block. Only the local x, y, t and the `[n]` row/column
  logsumexps are kept for the backward pass, so memory is independent of D.

The label-dependent terms (l_ii and the row/column sums of the logits, which only need the
global sums of x and y) are computed outside the ring with ordinary autodiff.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from clip_jax.losses import collectives as C
from clip_jax.losses import ring as R
from clip_jax.losses import registry as reg
from clip_jax.losses.numerics import dot_t, logsumexp

Array = jax.Array


def softmax_loss(x: Array, y: Array, scale: Array | float, *, axis_name: C.AxisName = None,
                 impl: str = "ring", chunk_size: int | None = None,
                 label_smoothing: float = 0.0) -> Array:
  """The symmetric CLIP loss over the global batch (see the module docstring for the formula).

  Args:
    x: `[n, d]` local shard of L2-normalised embeddings of the first modality.
    y: `[n, d]` local shard of the second modality, paired with x row by row.
    scale: scalar t > 0 (already exponentiated); replicated.
    axis_name: batch mesh axis (or tuple of axes) of the enclosing `shard_map`, or None when x
      and y are the whole batch.
    impl: "ring" (memory-flat in the number of devices) or "all_gather".
    chunk_size: ring only: process each `[n, n]` block in column chunks of this many columns
      (need not divide n). None or 0: whole blocks.
    label_smoothing: eps in [0, 1); targets (1 - eps) onehot + eps / N over the N classes.

  Returns:
    Scalar float32 loss, the same on every device. Gradients w.r.t. x, y and scale equal those
    of the single-device loss on the global batch, also when the scale enters the enclosing
    `shard_map` replicated (in_specs `P()`).
  """
  R.check_args(x, y, impl, label_smoothing)
  axes = C.normalize_axes(axis_name)
  t = jnp.asarray(scale, jnp.float32)
  eps = float(label_smoothing)
  size = C.axis_size(axes)
  n = x.shape[0]
  total = n * size
  if impl == "all_gather":
    if chunk_size:
      raise ValueError("chunk_size applies to impl='ring' only")
    row_lse, col_lse = _all_gather_lse(x, y, t, axes)
  else:
    lay = R.layout(n, chunk_size)
    xv, yv, tv = C.vary((x, y, t), axes)
    row_lse, col_lse = _ring_lse(xv, yv, tv, axes, size, lay)
  # Both directions share the positive logits l_ii; subtract them row by row (not from the sum
  # of the logsumexps) to keep float32 cancellation small when lse_i ~ l_ii.
  pos = (1.0 - eps) * t * jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32), axis=1)
  local = jnp.sum(row_lse - pos) + jnp.sum(col_lse - pos)
  if eps:
    # sum_j l_ij over the local rows = t (sum_i x_i) . (sum_j y_j), and likewise for columns.
    x_sum = jnp.sum(x.astype(jnp.float32), axis=0)
    y_sum = jnp.sum(y.astype(jnp.float32), axis=0)
    local = local - (eps / total) * t * (
        jnp.dot(x_sum, C.psum(y_sum, axes)) + jnp.dot(y_sum, C.psum(x_sum, axes)))
  return C.psum(local, axes) / (2 * total)


def _all_gather_lse(x, y, t, axes):
  """`[n]` logsumexps of the local x rows (over all y) and the local y rows (over all x)."""
  x_all = C.all_gather(x, axes)
  y_all = C.all_gather(y, axes)
  return (logsumexp(t * dot_t(x, y_all), axis=1),
          logsumexp(t * dot_t(y, x_all), axis=1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _ring_lse(x, y, t, axes, size, lay):
  """(row_lse, col_lse), `[n]` each: lse_j(l_ij) of the local rows i and lse_i(l_ij) of the
  local columns j, over the global batch."""
  return _ring_fwd(x, y, t, axes, size, lay)[0]


def _ring_fwd(x, y, t, axes, size, lay):
  n = x.shape[0]

  def step(s, travelling, row_lse, exchange):
    def chunk_body(k, carry):
      (y_blk, col_lse), row_lse = carry
      logits = t * dot_t(x, R.take_chunk(y_blk, k, lay.chunk))  # [n, chunk]
      valid = k * lay.chunk + jnp.arange(lay.chunk) < n
      row_lse = jnp.logaddexp(
          row_lse, logsumexp(jnp.where(valid[None, :], logits, -jnp.inf), axis=1))
      # Padded columns get finite garbage, dropped at the end.
      col_c = jnp.logaddexp(R.take_chunk(col_lse, k, lay.chunk), logsumexp(logits, axis=0))
      col_lse = R.set_chunk(col_lse, k, lay.chunk, col_c)
      return exchange(R.after((y_blk, col_lse), row_lse), k), row_lse

    return R.chunk_loop(lay.num_chunks, chunk_body, (travelling, row_lse))

  neg_inf = lambda m: C.vary(jnp.full((m,), -jnp.inf, jnp.float32), axes)
  travelling = (R.pad_rows(y, lay.rows), neg_inf(lay.rows))
  (_, col_lse), row_lse = R.ring_loop(size, step, travelling, neg_inf(n), axes, lay)
  col_lse = R.shift_all(col_lse, lay, axes, size)[:n]  # column statistics of block k+1 go home
  return (row_lse, col_lse), (x, y, t, row_lse, col_lse)


def _ring_bwd(axes, size, lay, res, cotangents):
  x, y, t, row_lse, col_lse = res
  g_row, g_col = cotangents
  n = x.shape[0]
  x32 = x.astype(jnp.float32)

  def step(s, travelling, local, exchange):
    def chunk_body(k, carry):
      (y_blk, col_blk, g_blk, dy_blk), (dx, dt) = carry
      y_c = R.take_chunk(y_blk, k, lay.chunk)
      logits = t * dot_t(x, y_c)
      valid = k * lay.chunk + jnp.arange(lay.chunk) < n
      col_c = R.take_chunk(col_blk, k, lay.chunk)
      g_c = R.take_chunk(g_blk, k, lay.chunk)
      # d/dl_ij of lse_j(l_i.) and lse_i(l_.j): the row softmax times the row's cotangent plus
      # the column softmax times the column's cotangent (which travelled with its block).
      p = (g_row[:, None] * jnp.exp(logits - row_lse[:, None])
           + g_c[None, :] * jnp.exp(logits - col_c[None, :]))
      dl = jnp.where(valid[None, :], p, 0.0)
      dl_y = dl @ y_c.astype(jnp.float32)  # [n, d]
      # dt = sum_ij dl_ij x_i.y_j = sum_i x_i.(dl y)_i: no second [n, chunk] buffer needed.
      dx, dt = dx + t * dl_y, dt + jnp.sum(x32 * dl_y)
      dl = R.after(dl, dx)  # one [n, d] product at a time
      dy_blk = R.add_chunk(dy_blk, k, lay.chunk, t * (dl.T @ x32))
      return exchange(R.after((y_blk, col_blk, g_blk, dy_blk), dx), k), (dx, dt)

    return R.chunk_loop(lay.num_chunks, chunk_body, (travelling, local))

  zeros = lambda shape: C.vary(jnp.zeros(shape, jnp.float32), axes)
  # The column terms of a travelling block belong to its owner: their logsumexps and cotangents
  # travel with the block.
  travelling = (R.pad_rows(y, lay.rows), R.pad_rows(col_lse, lay.rows),
                R.pad_rows(g_col.astype(jnp.float32), lay.rows), zeros((lay.rows, y.shape[1])))
  local = (zeros(x.shape), zeros(()))
  (*_, dy), (dx, dt) = R.ring_loop(size, step, travelling, local, axes, lay)
  dy = R.shift_all(dy, lay, axes, size)[:n]  # the accumulated gradient of block k+1 goes home
  return dx.astype(x.dtype), dy.astype(y.dtype), dt.astype(t.dtype)


_ring_lse.defvjp(_ring_fwd, _ring_bwd)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftmaxFields(reg.ContrastiveFields):
  """`config.loss` of "softmax": `ContrastiveFields` (modalities, impl, chunk_size,
  label_smoothing, learn_scale, max_scale; CLIP uses max_scale 100, as open_clip clamps t) and
  init_scale (t' with t = exp(t'))."""

  init_scale: float = math.log(1 / 0.07)


@reg.LOSSES.register("softmax", fields=SoftmaxFields)
def softmax_objective(loss_config: Any, *, axis_name: C.AxisName) -> reg.Objective:
  """The CLIP objective between two modalities (config fields: `SoftmaxFields`).

  Params: {"scale": t'}. Metrics: loss, scale (t).
  """
  f: SoftmaxFields = reg.LOSSES.parse(loss_config, name="softmax")

  def loss_fn(embeddings, t, outputs):
    del outputs
    x, y = embeddings
    return softmax_loss(x, y, t, axis_name=axis_name, impl=f.impl,
                        chunk_size=f.chunk_size or None, label_smoothing=f.label_smoothing), {}

  return reg.scaled_objective(loss_fn, modalities=f.modalities, init_scale=f.init_scale,
                              learn_scale=f.learn_scale, max_scale=f.max_scale)
