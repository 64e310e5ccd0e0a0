"""A small name -> factory registry shared by towers, losses, data sources and evaluators.

Every pluggable part of clip_jax is looked up by the name given in the config. An unknown name
stops with a message that names the config field and lists the registered names.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A config mistake the user can fix; the message names the field and the allowed values."""


class Registry(Generic[T]):
  """Maps names to factories (classes or functions).

  Args:
    kind: what is registered, used in error messages ("tower", "loss", ...).
    field: the config field that selects an entry, used in error messages
      (e.g. "config.model.towers.<modality>.name").
  """

  def __init__(self, kind: str, field: str):
    self.kind = kind
    self.field = field
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: registers the decorated class or function under `name`."""

    def decorate(obj: T) -> T:
      if name in self._entries and self._entries[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return decorate

  def get(self, name: str, field: str | None = None) -> T:
    """Returns the entry for `name`, or raises ConfigError naming the field and the choices."""
    try:
      return self._entries[name]
    except KeyError:
      raise ConfigError(
          f"{field or self.field} = {name!r} is not a known {self.kind}; "
          f"choose one of: {', '.join(sorted(self._entries))}") from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))
