"""A small name -> factory registry shared by towers, losses, data sources and evaluators.

Every pluggable part of clip_jax is looked up by the name given in the config. An unknown name
stops with a message that names the config field and lists the registered names.

Each entry also declares its config fields and their defaults (`REQUIRED` for a field without
one), either at registration (`@SOURCES.register("emoji", fields={...})`) or through the
registry's `fields_of` (evaluators: their `FIELDS`). Switching a
component by name on the command line starts the section from these defaults
(`clip_jax.config.switch_components`).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class _Required:
  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a config field that must be given


class ConfigError(ValueError):
  """A config mistake the user can fix; the message names the field and the allowed values."""


class Registry(Generic[T]):
  """Maps names to factories (classes or functions).

  Args:
    kind: what is registered, used in error messages ("tower", "loss", ...).
    field: the config field that selects an entry, used in error messages
      (e.g. "config.model.towers.<modality>.name").
    fields_of: optional entry -> {field: default or REQUIRED}, for entries registered without
      `fields`.
  """

  def __init__(self, kind: str, field: str,
               fields_of: Callable[[T], Mapping[str, Any]] | None = None):
    self.kind = kind
    self.field = field
    self._entries: dict[str, T] = {}
    self._fields: dict[str, Mapping[str, Any]] = {}
    self._fields_of = fields_of

  def register(self, name: str,
               fields: Mapping[str, Any] | None = None) -> Callable[[T], T]:
    """Decorator: registers the decorated class or function under `name`.

    Args:
      fields: the entry's config fields (besides `name`) and their defaults, `REQUIRED` where
        there is none.
    """

    def decorate(obj: T) -> T:
      if name in self._entries and self._entries[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      if fields is not None:
        self._fields[name] = dict(fields)
      return obj

    return decorate

  def fields(self, name: str) -> dict[str, Any] | None:
    """The declared config fields of entry `name` with their defaults (without `name`), or None
    when the entry declares none."""
    if name in self._fields:
      declared = self._fields[name]
    elif self._fields_of is not None:
      declared = self._fields_of(self.get(name))
    else:
      return None
    return {k: v for k, v in declared.items() if k != "name"}

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
