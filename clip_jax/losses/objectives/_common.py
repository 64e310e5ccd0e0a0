"""Shared pieces of the paper objectives: config reading and the collectives they all use.

Every objective here is called inside `jax.shard_map` over the batch axes `axis_name` (a mesh
axis name, a tuple of them, or None for whole-batch arrays outside `shard_map`). A device holds
`[n, d]` local rows; the global batch has N = n * D rows, ordered by the linearised
`lax.axis_index(axis_name)`. The objectives compute their local rows against all-gathered
columns (`gather`) and reduce with `psum` / N, so their value and gradients equal those of the
single-device loss on the global batch (inside `shard_map` this relies on `check_vma=True`, the
default, for the transposes of the collectives).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from clip_jax.registry import ConfigError

Array = jax.Array
AxisName = str | tuple[str, ...] | None

FIELD = "config.loss"


# ----------------------------------------------------------------------------- config reading


class Fields:
  """Reads an objective's config fields, with defaults, rejecting fields it does not know.

  Args:
    loss_config: ConfigDict (or mapping) with a `name` field.
    defaults: every field the objective reads, with its default (None values in the config
      also mean "use the default").
    prefix: how the config is spelt in error messages.
  """

  def __init__(self, loss_config: Any, defaults: Mapping[str, Any], prefix: str = FIELD):
    self.prefix = prefix
    present = dict(loss_config.items()) if hasattr(loss_config, "items") else dict(loss_config)
    self.name = present.pop("name", None)
    unknown = sorted(k for k in present if k not in defaults)
    if unknown:
      raise ConfigError(
          f"{prefix}.{unknown[0]} is not a field of loss {self.name!r}; known fields: "
          f"{', '.join(['name', *sorted(defaults)])}")
    self.values = {k: (present[k] if present.get(k) is not None else v)
                   for k, v in defaults.items()}

  def field(self, key: str) -> str:
    return f"{self.prefix}.{key}"

  def raw(self, key: str) -> Any:
    return self.values[key]

  def choice(self, key: str, choices: Sequence[Any]) -> Any:
    value = self.values[key]
    if value not in tuple(choices):
      raise ConfigError(
          f"{self.field(key)} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value

  def number(self, key: str, *, low: float | None = None, low_open: bool = False,
             high: float | None = None, high_open: bool = False) -> float:
    """The field as a float in [low, high] (an end excluded where `low_open` / `high_open`)."""
    value = self.values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise ConfigError(f"{self.field(key)} must be a finite number; got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
      raise ConfigError(f"{self.field(key)} must be {'>' if low_open else '>='} {low}; "
                        f"got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
      raise ConfigError(f"{self.field(key)} must be {'<' if high_open else '<='} {high}; "
                        f"got {value!r}")
    return float(value)

  def boolean(self, key: str) -> bool:
    value = self.values[key]
    if not isinstance(value, bool):
      raise ConfigError(f"{self.field(key)} must be True or False; got {value!r}")
    return value

  def modalities(self, key: str = "modalities", *, count: int | None = None,
                 at_least: int = 2) -> tuple[str, ...]:
    """The field as a tuple of distinct modality names (exactly `count`, or >= `at_least`)."""
    value = self.values[key]
    names = (value,) if isinstance(value, str) else _as_tuple(value)
    ok = (names is not None and all(isinstance(m, str) and m for m in names)
          and len(set(names)) == len(names)
          and (len(names) == count if count is not None else len(names) >= at_least))
    if not ok:
      what = f"exactly {count}" if count is not None else f"at least {at_least}"
      raise ConfigError(f"{self.field(key)} must be {what} distinct modality names, e.g. "
                        f"('image', 'text'); got {value!r}")
    return names


def _as_tuple(value: Any) -> tuple[Any, ...] | None:
  try:
    return tuple(value)
  except TypeError:
    return None


def get_embeddings(outputs: Mapping[str, Array], modalities: Sequence[str],
                   field: str = f"{FIELD}.modalities") -> list[Array]:
  """The float32 `[n, d]` embeddings of `modalities`, with a clear error if one is missing."""
  missing = [m for m in modalities if m not in outputs]
  if missing:
    raise ConfigError(
        f"{field} = {tuple(modalities)!r} asks for {', '.join(missing)}, but the model outputs "
        f"only have: {', '.join(sorted(outputs))}")
  embs = [jnp.asarray(outputs[m], jnp.float32) for m in modalities]
  for m, e in zip(modalities, embs):
    if e.ndim != 2 or e.shape != embs[0].shape:
      raise ValueError(f"embeddings must all be [n, d] of one shape; {m!r} has {e.shape}, "
                       f"{modalities[0]!r} has {embs[0].shape}")
  return embs


def temperature(raw_scale: Array, learn_scale: bool) -> Array:
  """t = exp(t') as float32; frozen with stop_gradient unless `learn_scale`."""
  t = jnp.exp(jnp.asarray(raw_scale, jnp.float32))
  return t if learn_scale else lax.stop_gradient(t)


# ----------------------------------------------------------------------------- collectives


def axis_size(axis_name: AxisName) -> int:
  """Number of devices along the batch axes (1 for None), a Python int."""
  return 1 if axis_name is None else int(lax.axis_size(axis_name))


def row_offset(n: int, axis_name: AxisName) -> Array | int:
  """Global index of this device's first row: linearised axis index * n."""
  return 0 if axis_name is None else lax.axis_index(axis_name) * n


def gather(x: Array, axis_name: AxisName) -> Array:
  """All rows of the global batch: `[n, ...]` local -> `[N, ...]` (differentiable)."""
  return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def psum(x: Any, axis_name: AxisName) -> Any:
  return x if axis_name is None else lax.psum(x, axis_name)


def pmin(x: Array, axis_name: AxisName) -> Array:
  """Minimum over the devices, for metrics (no gradient)."""
  x = lax.stop_gradient(x)
  return x if axis_name is None else lax.pmin(x, axis_name)


def pmax(x: Array, axis_name: AxisName) -> Array:
  """Maximum over the devices, for metrics (no gradient)."""
  x = lax.stop_gradient(x)
  return x if axis_name is None else lax.pmax(x, axis_name)


def global_rows(n: int, axis_name: AxisName) -> tuple[Array, int]:
  """(`[n]` global indices of the local rows, global batch size N)."""
  return row_offset(n, axis_name) + jnp.arange(n), n * axis_size(axis_name)


def require_global_batch(total: int, at_least: int, what: str) -> None:
  if total < at_least:
    raise ValueError(f"{what} needs a global batch of at least {at_least} examples; got {total}")


# ----------------------------------------------------------------------------- numerics


def dot_t(a: Array, b: Array, precision: Any = None) -> Array:
  """a @ b.T for `[n, d]` and `[m, d]` -> `[n, m]`, in float32."""
  return jnp.einsum("nd,md->nm", a, b, precision=precision,
                    preferred_element_type=jnp.float32)


def masked_logsumexp(logits: Array, mask: Array, axis: int = -1) -> Array:
  """log sum_{mask} exp(logits) along `axis`; -inf where the mask is empty.

  NaN-free in value and gradient: masked entries never reach `exp` (they enter as -inf), and
  rows with an empty mask have a zero gradient.
  """
  masked = jnp.where(mask, logits, -jnp.inf)
  m = jnp.max(masked, axis=axis, keepdims=True)
  m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  total = jnp.sum(jnp.exp(masked - m), axis=axis)
  m = jnp.squeeze(m, axis)
  has = jnp.any(mask, axis=axis)
  return jnp.where(has, m + jnp.log(jnp.where(has, total, 1.0)), -jnp.inf)


def logsumexp(logits: Array, axis: int = -1) -> Array:
  """Plain logsumexp (finite logits)."""
  m = lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
  return jnp.squeeze(m, axis) + jnp.log(jnp.sum(jnp.exp(logits - m), axis=axis))

