"""The float32 arithmetic that every loss uses: similarity products and logsumexp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def dot_t(a: Array, b: Array, precision: lax.Precision | None = None) -> Array:
  """a @ b.T accumulated in float32: `[m, d] x [k, d] -> [m, k]`.

  `precision` is passed to `lax.dot_general` (e.g. `Precision.HIGHEST` where the products
  cancel heavily); None is the backend's default.
  """
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)


def logsumexp(logits: Array, axis: int = -1, mask: Array | None = None) -> Array:
  """log sum exp(logits) along `axis`, over the entries where `mask` is True (all if None).

  Args:
    logits: float array; -inf entries count as absent.
    axis: the reduced axis.
    mask: optional bool array broadcastable to `logits`.

  Returns:
    `logits.shape` without `axis`; -inf where no entry is present (all -inf, or an empty mask).
    With a mask the value and the gradient are NaN-free: masked entries never reach `exp`, and
    a row with an empty mask has a zero gradient. Without one, a row of -inf has a NaN gradient.
  """
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  m = jnp.max(logits, axis=axis, keepdims=True)
  m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  total = jnp.sum(jnp.exp(logits - m), axis=axis)
  m = jnp.squeeze(m, axis)
  if mask is None:
    return m + jnp.log(total)
  has = jnp.any(jnp.broadcast_to(mask, logits.shape), axis=axis)
  return jnp.where(has, m + jnp.log(jnp.where(has, total, 1.0)), -jnp.inf)
