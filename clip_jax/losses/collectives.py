"""The batch-axis collectives that every loss uses.

The losses run inside `jax.shard_map` over one or more batch axes `axis_name` (a mesh axis name,
a tuple of them, or None for whole-batch arrays outside `shard_map`). A device holds `[n, ...]`
local rows; the global batch has N = n * D rows, ordered by the linearised
`lax.axis_index(axis_name)` over all batch axes. With `axis_name=None` every collective is the
identity and D = 1.

The all-gather is differentiable and its transpose sums the partial gradients, so a loss that
computes its local rows against gathered columns and reduces with `psum` has the value and
gradients of the single-device loss on the global batch (inside `shard_map` this relies on
`check_vma=True`, the default).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
AxisName = str | Sequence[str] | None
Axes = tuple[str, ...] | None


def normalize_axes(axis_name: AxisName) -> Axes:
  """The batch axes as a tuple of names, or None for the single-device case.

  Raises:
    TypeError: `axis_name` is neither a string nor a sequence of strings.
  """
  if axis_name is None:
    return None
  if isinstance(axis_name, str):
    return (axis_name,)
  axes = tuple(axis_name)
  if not axes:
    return None
  if not all(isinstance(a, str) for a in axes):
    raise TypeError(f"axis_name must be a string or a tuple of strings, got {axis_name!r}")
  return axes


def axis_size(axis_name: AxisName) -> int:
  """Number of devices D along the batch axes (1 for None); a static Python int."""
  return 1 if axis_name is None else int(lax.axis_size(axis_name))


def axis_index(axis_name: AxisName) -> Array | int:
  """Linearised index of this device along the batch axes (0 for None)."""
  return 0 if axis_name is None else lax.axis_index(axis_name)


def global_rows(n: int, axis_name: AxisName) -> tuple[Array, int]:
  """(`[n]` int32 global indices of the local rows, global batch size N = n * D)."""
  return axis_index(axis_name) * n + jnp.arange(n), n * axis_size(axis_name)


def require_global_batch(total: int, at_least: int, what: str) -> None:
  """Raises ValueError naming `what` unless the global batch has `at_least` examples."""
  if total < at_least:
    raise ValueError(f"{what} needs a global batch of at least {at_least} examples; got {total}")


def all_gather(x: Array, axis_name: AxisName) -> Array:
  """All rows of the global batch, in index order: `[n, ...]` local -> `[N, ...]`."""
  return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def psum(x: Any, axis_name: AxisName) -> Any:
  """Sum over the batch axes (identity for None)."""
  return x if axis_name is None else lax.psum(x, axis_name)


def pmin(x: Array, axis_name: AxisName) -> Array:
  """Minimum over the devices, for metrics (no gradient)."""
  x = lax.stop_gradient(x)
  return x if axis_name is None else lax.pmin(x, axis_name)


def pmax(x: Array, axis_name: AxisName) -> Array:
  """Maximum over the devices, for metrics (no gradient)."""
  x = lax.stop_gradient(x)
  return x if axis_name is None else lax.pmax(x, axis_name)


def vary(tree: Any, axis_name: AxisName) -> Any:
  """Marks every leaf as device-varying along all batch axes (no-op where it already is).

  Inside `shard_map(..., check_vma=True)` a replicated value (e.g. the scale) that enters a
  `custom_vjp` must be cast to varying first: the custom backward then returns a per-device
  partial gradient, and the transpose of this cast is the `psum` that adds the partials.
  """
  axes = normalize_axes(axis_name)
  if axes is None:
    return tree

  def cast(x):
    x = jnp.asarray(x)
    have = jax.typeof(x).manual_axis_type.varying
    missing = tuple(a for a in axes if a not in have)
    return lax.pcast(x, missing, to="varying") if missing else x

  return jax.tree.map(cast, tree)
