"""The registry of towers (encoders), selected by `config.model.towers.<modality>.name`.

A tower is a `flax.linen.Module` class. The model builds it as
`cls(**tower_config_without_name, dtype=compute_dtype, remat=bool)` and calls it as
`tower(inputs, train=...)`, returning unnormalised features `[B, width]` (float32). The model then
projects them to the shared embedding size and L2-normalises them.

Optional extras a tower class may define (the model uses them when present):

* a dataclass field `config_field: str`: the model sets it to `"config.model.towers.<modality>"`
  so that errors raised while the tower runs (e.g. an image size that the patch size does not
  divide) name the right config field;
* a classmethod `check_config(kwargs: dict, field: str) -> None` that raises `ConfigError` for
  invalid values (e.g. a pooling kind outside the allowed set); `make_model` calls it at start-up.

The `check_*` helpers below are shared by the towers for such checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax.numpy as jnp

from clip_jax.registry import REQUIRED, ConfigError, Registry

# Dataclass fields of a tower that the config may not set: flax's own, and the model's.
RESERVED_FIELDS = ("parent", "name", "config_field")
# Fields every tower takes that default to the model's settings (config.model.dtype / remat).
MODEL_WIDE_FIELDS = ("dtype", "remat")


def tower_fields(tower_cls: type) -> dict[str, Any]:
  """The config fields of a tower class: {field: default, or REQUIRED}, without the reserved
  fields and without `dtype` and `remat` (which default to the model's)."""
  out = {}
  for f in dataclasses.fields(tower_cls):
    if not f.init or f.name in RESERVED_FIELDS or f.name in MODEL_WIDE_FIELDS:
      continue
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
    else:
      out[f.name] = REQUIRED
  return out


TOWERS: Registry[type] = Registry("tower", "config.model.towers.<modality>.name",
                                  fields_of=tower_fields)

# Compute dtypes a model or tower may use (by config name). Parameters are always float32.
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_choice(value: Any, choices: Iterable[Any], field: str) -> None:
  """Raises ConfigError unless `value` is one of `choices`."""
  choices = tuple(choices)
  if value not in choices:
    raise ConfigError(
        f"{field} = {value!r} is not allowed; choose one of: {', '.join(map(repr, choices))}")


def check_positive_int(value: Any, field: str) -> None:
  """Raises ConfigError unless `value` is an int > 0 (bools are rejected)."""
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{field} = {value!r} must be a positive integer")


def check_positive_number(value: Any, field: str) -> None:
  """Raises ConfigError unless `value` is a real number > 0 (bools are rejected)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise ConfigError(f"{field} = {value!r} must be a positive number")


def check_bool(value: Any, field: str) -> None:
  """Raises ConfigError unless `value` is a bool."""
  if not isinstance(value, bool):
    raise ConfigError(f"{field} = {value!r} must be True or False")


def check_divisible(value: int, divisor: int, field: str, divisor_field: str) -> None:
  """Raises ConfigError unless `divisor` divides `value`."""
  if value % divisor:
    raise ConfigError(
        f"{field} = {value} must be divisible by {divisor_field} = {divisor}")


def canonical_dtype(value: Any, field: str) -> Any:
  """Returns the jnp dtype for a config dtype ("float32" | "bfloat16", or the dtype itself)."""
  for name, dtype in DTYPES.items():
    if isinstance(value, str) and value == name:
      return dtype
    if not isinstance(value, str) and _same_dtype(value, dtype):
      return dtype
  raise ConfigError(
      f"{field} = {value!r} is not allowed; choose one of: {', '.join(map(repr, DTYPES))}")


def _same_dtype(a: Any, b: Any) -> bool:
  try:
    return jnp.dtype(a) == jnp.dtype(b)
  except (TypeError, ValueError):
    return False
