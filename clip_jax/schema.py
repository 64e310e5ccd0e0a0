"""Config schemas: every config section declares its fields once, and one parser reads them all.

A schema is a frozen, keyword-only dataclass whose fields are the section's config fields, with
their types, defaults and checks:

    from clip_jax import schema

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class DclFields:
      modalities: tuple[str, ...] = schema.field(("image", "text"), schema.modalities(count=2))
      weighting: str = schema.field("none", schema.one_of("none", "dclw"))
      sigma: float = schema.field(0.5, schema.number(low=0.0, low_open=True))
      detach_weights: bool = True  # checked by its annotation: True or False

    f = schema.parse(DclFields, {"sigma": 0.2}, "config.loss", owner="loss 'dcl'")  # a DclFields

Registered components are read through their registry (`LOSSES.parse(config.loss)`), which
picks the schema by the section's `name`.

The rules, the same for every section (top level, `optim`, and every registered component:
loss, data source, tokenizer, evaluator):

* Type: a field without a `check` is checked by its annotation when that is `bool`, `int`,
  `float` or `str`; other annotations are documentation only.
* Default: a field declared without one (or with `REQUIRED`) must be given.
* None: a value of None means "not set": the field takes its default. A field whose default is
  None is optional and off unless set; checks run only on values other than None.
* Check: `check(value, path) -> value` raises ConfigError naming `path` (e.g.
  "config.loss.sigma must be > 0.0; got -1.0") or returns the value to use (e.g. a float for an
  int given to a float field). Checks run on defaults too.
* Cross-field checks: a schema may define a method `check(self, path)`; `parse` calls it last.
* Unknown fields are errors naming the field, its section's owner and the closest declared
  field ("did you mean ...?").
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import typing
from typing import Any, Callable, Iterable, Mapping, TypeVar

import numpy as np

T = TypeVar("T")
Check = Callable[[Any, str], Any]  # (value, config path) -> the value to use; or ConfigError


class ConfigError(ValueError):
  """A config mistake the user can fix; the message names the field and the allowed values."""


class _Required:
  def __repr__(self) -> str:
    return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a config field that must be given


def field(default: Any = REQUIRED, check: Check | None = None, *,
          factory: Callable[[], Any] | None = None) -> Any:
  """Declares one field of a schema dataclass.

  Args:
    default: the value when the config does not set the field; `REQUIRED` (or leaving it out)
      makes the field required.
    check: (value, path) -> value; None checks by the annotation (see the module docstring).
    factory: instead of `default`, a function returning a fresh default (for mutable values such
      as a ConfigDict).
  """
  metadata = {"check": check}
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  if default is REQUIRED:
    return dataclasses.field(metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def _default(f: dataclasses.Field) -> Any:
  if f.default is not dataclasses.MISSING:
    return f.default
  if f.default_factory is not dataclasses.MISSING:
    return f.default_factory()
  return REQUIRED


def defaults(schema: type) -> dict[str, Any]:
  """{field: its default, or REQUIRED} of a schema dataclass, in declaration order."""
  return {f.name: _default(f) for f in dataclasses.fields(schema) if f.init}


def from_defaults(name: str, declared: Mapping[str, Any], bases: tuple[type, ...] = ()) -> type:
  """A schema dataclass from {field: default or REQUIRED} (fields not type-checked), for
  components registered with a plain mapping; it extends the schema dataclasses `bases`."""
  def spec(value: Any) -> Any:
    if value is not REQUIRED and type(value).__hash__ is None:  # mutable: a fresh copy each time
      return field(factory=functools.partial(copy.deepcopy, value))
    return field(value)

  return dataclasses.make_dataclass(name, [(k, Any, spec(v)) for k, v in declared.items()],
                                    bases=bases, frozen=True, kw_only=True)


def reject_unknown(keys: Iterable[str], known: Iterable[str], path: str,
                   owner: str | None = None) -> None:
  """Raises ConfigError for the first of `keys` (sorted) that is not in `known`.

  The message names `<path>.<key>`, the section's owner (e.g. "loss 'dcl'") if given, the
  closest known field and all of them.
  """
  known = sorted(known)
  unknown = sorted(set(keys) - set(known))
  if not unknown:
    return
  key = unknown[0]
  close = difflib.get_close_matches(key, known, n=1)
  raise ConfigError(
      f"{path}.{key} is not " + (f"a field of {owner}" if owner else "a known field")
      + (f"; did you mean {close[0]!r}?" if close else ".")
      + f" Known fields: {', '.join(known) or '(none)'}")


def parse(schema: type[T], section: Any, path: str, owner: str | None = None) -> T:
  """Reads a config section against its schema.

  Args:
    schema: a dataclass declaring the section's fields (see the module docstring).
    section: ConfigDict or mapping of field values (for a registered component, without its
      `name`; see `Registry.parse`).
    path: the section's config path in messages, e.g. "config.loss".
    owner: what the section configures, e.g. "loss 'dcl'", for messages.

  Returns:
    An instance of `schema`: every field set, defaults filled in, checks applied.

  Raises:
    ConfigError: `section` is not a mapping, or it has an unknown field, lacks a required one,
      or a value fails its check; the message names `<path>.<field>`.
  """
  if not hasattr(section, "items"):
    raise ConfigError(f"{path} = {section!r} must be a ConfigDict of fields")
  given = dict(section.items())
  declared = [f for f in dataclasses.fields(schema) if f.init]
  reject_unknown(given, [f.name for f in declared], path, owner)
  checks = _checks(schema)
  values = {}
  for f in declared:
    value = given.get(f.name)
    if value is None:
      value = _default(f)
    if value is REQUIRED:
      raise ConfigError(f"{path}.{f.name} is required" + (f" for {owner}" if owner else "")
                        + "; it has no default")
    if value is not None and checks[f.name] is not None:
      value = checks[f.name](value, f"{path}.{f.name}")
    values[f.name] = value
  parsed = schema(**values)
  if callable(getattr(parsed, "check", None)):
    parsed.check(path)
  return parsed


@functools.cache
def _checks(schema: type) -> dict[str, Check | None]:
  """Each field's check: the declared one, or the one its annotation implies."""
  hints = typing.get_type_hints(schema)
  by_type = {bool: boolean(), int: integer(), float: number(), str: string()}
  return {f.name: f.metadata.get("check") or by_type.get(hints.get(f.name))
          for f in dataclasses.fields(schema) if f.init}


# ------------------------------------------------------------------------------------------------
# Checks: each returns a `Check`, (value, path) -> value, whose message reads
# "<path> must be <what>; got <value>".


def _bad(path: str, what: str, value: Any) -> ConfigError:
  return ConfigError(f"{path} must be {what}; got {value!r}")


def _in_bounds(value: Any, path: str, low: float | None, high: float | None, low_open: bool,
               high_open: bool) -> None:
  if low is not None and (value <= low if low_open else value < low):
    raise _bad(path, f"{'>' if low_open else '>='} {low}", value)
  if high is not None and (value >= high if high_open else value > high):
    raise _bad(path, f"{'<' if high_open else '<='} {high}", value)


def boolean() -> Check:
  """True or False (numpy bools too)."""
  def check(value: Any, path: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
      raise _bad(path, "True or False", value)
    return bool(value)
  return check


def integer(low: int | None = None, high: int | None = None) -> Check:
  """An int (not a bool; numpy ints too) in [low, high]."""
  def check(value: Any, path: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
      raise _bad(path, "an integer", value)
    _in_bounds(value, path, low, high, False, False)
    return int(value)
  return check


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
  """A finite real number (returned as a float) in [low, high], an end excluded where open."""
  def check(value: Any, path: str) -> float:
    if (isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)):
      raise _bad(path, "a finite number", value)
    _in_bounds(value, path, low, high, low_open, high_open)
    return float(value)
  return check


def string(nonempty: bool = False) -> Check:
  """A str (a non-empty one if `nonempty`)."""
  def check(value: Any, path: str) -> str:
    if not isinstance(value, str) or (nonempty and not value):
      raise _bad(path, "a non-empty string" if nonempty else "a string", value)
    return value
  return check


def existing_file(what: str) -> Check:
  """A non-empty string naming a local file that exists (`~` expanded; returned as the expanded
  path). `what` says what the file is, for the error (e.g. "a SentencePiece .model file")."""
  def check(value: Any, path: str) -> str:
    value = string(nonempty=True)(value, path)
    expanded = os.path.expanduser(value)
    if not os.path.isfile(expanded):
      raise ConfigError(f"{path} = {value!r}: no such file; set it to {what}")
    return expanded
  return check


def one_of(*choices: Any) -> Check:
  """One of `choices`."""
  def check(value: Any, path: str) -> Any:
    if value not in choices:
      raise _bad(path, f"one of {', '.join(map(repr, choices))}", value)
    return value
  return check


def modalities(count: int | None = None, at_least: int = 2) -> Check:
  """Distinct modality names (exactly `count`, or at least `at_least`), returned as a tuple; a
  single name is a tuple of one."""
  def check(value: Any, path: str) -> tuple[str, ...]:
    try:
      names = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
      names = ()
    ok = (all(isinstance(m, str) and m for m in names) and len(set(names)) == len(names)
          and (len(names) == count if count is not None else len(names) >= at_least))
    if not ok:
      what = f"exactly {count}" if count is not None else f"at least {at_least}"
      raise _bad(path, f"{what} distinct modality names, e.g. ('image', 'text')", value)
    return names
  return check
