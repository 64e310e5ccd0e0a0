"""How the paper objectives read their config: `Fields`, with defaults and named errors."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from clip_jax.registry import ConfigError

FIELD = "config.loss"


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
    names = (value,) if isinstance(value, str) else as_tuple(value)
    ok = (names is not None and all(isinstance(m, str) and m for m in names)
          and len(set(names)) == len(names)
          and (len(names) == count if count is not None else len(names) >= at_least))
    if not ok:
      what = f"exactly {count}" if count is not None else f"at least {at_least}"
      raise ConfigError(f"{self.field(key)} must be {what} distinct modality names, e.g. "
                        f"('image', 'text'); got {value!r}")
    return names


def as_tuple(value: Any) -> tuple[Any, ...] | None:
  """`tuple(value)`, or None when `value` is not iterable."""
  try:
    return tuple(value)
  except TypeError:
    return None
