"""A small name -> factory registry shared by towers, losses, data sources and evaluators.

Every pluggable part of clip_jax is looked up by the name given in the config. An unknown name
stops with a message that names the config field and lists the registered names.

One factory contract: a registered factory is called with its config section (the ConfigDict
that holds its `name`) and keyword context, `factory(section, **context)`, and reads its fields
with `REGISTRY.parse(section, name=<its name>)` (so a wrapper registered under another name can
reuse it):

    loss        LOSSES      objective = factory(config.loss, axis_name=batch_axes)
    data source SOURCES     source = factory(config.data)
    tokenizer   TOKENIZERS  tokenizer = factory(config.data.tokenizer, max_len=..., data_config=...)
    evaluator   EVALUATORS  evaluator = cls(config.evals.<e>, eval_name=e, tokenizer=...,
                                        load_split=...)

Towers and sharding tactics are built from values rather than from a section: a tower class
gets its parsed fields as keyword arguments (`clip_jax.models.registry`), a tactic its
arguments (`clip_jax.sharding`).

Each entry also declares its config fields: a schema dataclass (`clip_jax.schema`: types,
defaults, checks) at registration (`@LOSSES.register("dcl", fields=DclFields)`), a plain
{field: default or REQUIRED} mapping (fields not type-checked), or through the registry's
`fields_of` (evaluators: their `Fields`). `Registry.parse` reads a section against the selected
entry's schema; switching a component by name on the command line starts the section from these
defaults (`clip_jax.cli.switch_components`).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from clip_jax import schema
from clip_jax.schema import REQUIRED, ConfigError

__all__ = ["REQUIRED", "ConfigError", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to factories (classes or functions), each with a schema of its config fields.

  Args:
    kind: what is registered, used in error messages ("tower", "loss", ...).
    field: the config field that selects an entry, used in error messages
      (e.g. "config.model.towers.<modality>.name").
    fields_of: optional entry -> its schema dataclass or {field: default or REQUIRED}, for
      entries registered without `fields`.
    base: optional schema dataclass of the fields every entry takes (towers: dtype, remat);
      each entry's schema must extend it, and a mapping of fields is made into one that does.
  """

  def __init__(self, kind: str, field: str,
               fields_of: Callable[[T], type | Mapping[str, Any]] | None = None,
               base: type | None = None):
    self.kind = kind
    self.field = field
    self._entries: dict[str, T] = {}
    self._schemas: dict[str, type] = {}
    self._fields_of = fields_of
    self._base = base

  def register(self, name: str,
               fields: type | Mapping[str, Any] | None = None) -> Callable[[T], T]:
    """Decorator: registers the decorated class or function under `name`.

    Args:
      fields: the entry's config fields besides `name`: a schema dataclass, or {field: default,
        `REQUIRED` where there is none}. None: from `fields_of`, else no fields of its own.
    """

    def decorate(obj: T) -> T:
      if name in self._entries and self._entries[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      declared = self._as_schema(name, fields) if fields is not None else None
      self._entries[name] = obj
      self._schemas.pop(name, None)
      if declared is not None:
        self._schemas[name] = declared
      return obj

    return decorate

  def _as_schema(self, name: str, declared: type | Mapping[str, Any]) -> type:
    bases = (self._base,) if self._base is not None else ()
    if isinstance(declared, Mapping):
      return schema.from_defaults(f"{name}_fields",
                                  {k: v for k, v in declared.items() if k != "name"}, bases)
    if bases and not issubclass(declared, bases[0]):
      raise TypeError(f"the fields of {self.kind} {name!r} ({declared.__name__}) must extend "
                      f"{bases[0].__name__}")
    return declared

  def schema(self, name: str) -> type:
    """The schema dataclass of entry `name`; raises ConfigError for an unknown name."""
    entry = self.get(name)
    if name not in self._schemas:
      declared = self._fields_of(entry) if self._fields_of is not None else {}
      self._schemas[name] = self._as_schema(name, declared)
    return self._schemas[name]

  def fields(self, name: str) -> dict[str, Any]:
    """The config fields of entry `name` (without `name`) with their defaults or REQUIRED."""
    return schema.defaults(self.schema(name))

  def parse(self, section: Any, path: str | None = None, *, name: str | None = None) -> Any:
    """Reads a config section that selects an entry by its `name` field (`schema.parse`).

    Args:
      section: ConfigDict or mapping with `name` and the entry's fields.
      path: the section's config path (default: `field` without ".name").
      name: read the section as this entry's (default: the section's `name`); a factory passes
        its own name, so that a wrapper registered under another name can reuse it.

    Returns:
      An instance of the entry's schema dataclass.

    Raises:
      ConfigError: naming the field: not a ConfigDict, no or an unknown `name`, an unknown
        field (with the closest known one), a missing required field or a failed check.
    """
    path = path or self.field.removesuffix(".name")
    if name is None:
      name = self.select(section, path)
    given = {k: v for k, v in section.items() if k != "name"}
    return schema.parse(self.schema(name), given, path, owner=f"{self.kind} {name!r}")

  def select(self, section: Any, path: str | None = None) -> str:
    """The registered name a config section selects by its `name` field.

    Raises:
      ConfigError: `section` is not a ConfigDict, or its `name` is missing or unknown (naming
        `<path>.name` and the choices).
    """
    path = path or self.field.removesuffix(".name")
    if not hasattr(section, "items"):
      raise ConfigError(f"{path} = {section!r} must be a ConfigDict with a `name` (one of: "
                        f"{', '.join(self.names())})")
    name = section.get("name")
    if name is None:
      raise ConfigError(f"{path}.name is missing; choose one of: {', '.join(self.names())}")
    self.get(name, field=f"{path}.name")
    return name

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
