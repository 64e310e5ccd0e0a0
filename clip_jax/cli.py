"""The command line of the CLIs (absl flags): `--config <file>` with `--config.<field>=<value>`
overrides, components switched by name, and one-line errors instead of tracebacks.

    _CONFIG = define_config_flag("Path to a get_config() file.")
    app.run(main, flags_parser=parse_flags_or_exit)

A component switched on the command line (`--config.loss.name=softmax` on a sigmoid config)
starts from its own declared defaults (`switch_components`); a field its schema declares can be
overridden even when the file does not set it (`add_overridden_fields`).
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Any

import ml_collections

from clip_jax.config import add_defaults, import_modules
from clip_jax.registry import REQUIRED

# The argv being parsed by `parse_flags_or_exit`, and the component switches it asked for.
_ARGV: list[str] = []
_SWITCHES: list[tuple[str, str]] = []


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """absl flags parser for the CLIs: a bad --config override exits with a one-line message.

  Used as `app.run(main, flags_parser=parse_flags_or_exit)`; without it, an unknown field such as
  `--config.total_stepz=3` ends in a traceback from inside ml_collections.
  """
  from absl import flags

  _ARGV[:] = argv
  try:
    remaining = flags.FLAGS(argv)
    if _SWITCHES and "config" in flags.FLAGS:
      config = flags.FLAGS["config"].value
      for path, note in _SWITCHES:
        print(f"{note}. Now config.{path} = {_section(config, path).to_dict()}", flush=True)
    return remaining
  except Exception as e:  # noqa: BLE001  (flag parsing raises many types; all are user errors)
    import re

    arg = next((a for a in argv[1:] if a.startswith("--config.") and
                a[len("--config."):].split("=")[0].split(".")[-1] in str(e)), None)
    name = arg.split("=")[0] if arg else "--config"
    suggestion = re.search(r'Did you mean "([^"]+)"', str(e))
    unknown_flag = re.search(r"Unknown command line flag '(config\.[^']+)'", str(e))
    if unknown_flag:
      import difflib

      def dotted(node, prefix):
        for key, value in node.items():
          yield f"{prefix}.{key}"
          if isinstance(value, ml_collections.ConfigDict):
            yield from dotted(value, f"{prefix}.{key}")

      config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
      known = list(dotted(config, "config")) if config is not None else []
      close = difflib.get_close_matches(unknown_flag.group(1), known, n=1)
      missing = _missing_section(config, unknown_flag.group(1))
      if missing:  # e.g. --config.evals.fs.name where config.evals has no "fs"
        message = _new_section_message(f"--{unknown_flag.group(1)}", missing)
      else:
        message = f"--{unknown_flag.group(1)} is not a known field" + (
            f"; did you mean --{close[0]}?" if close
            else "; see the config file for the known fields")
    elif isinstance(e, KeyError) and arg is None and _flag_with_key(argv, _key(e)):
      # A section the file lacks, e.g. --config.evals.fs.name when config.evals has no "fs".
      message = _new_section_message(_flag_with_key(argv, _key(e)), _key(e))
    elif isinstance(e, (AttributeError, KeyError)):
      message = f"{name} is not a known field" + (
          f"; did you mean {name.rsplit('.', 1)[0]}.{suggestion.group(1)}?" if suggestion
          else "; see the config file for the known fields")
    else:
      # A ConfigError raised while the --config file was read comes wrapped by absl as
      # "flag --config=<file>: <message>"; the message alone names the field.
      text = re.sub(r"^flag --config=[^:]*: ", "", str(e).replace("\\n", " ").strip())
      message = text if re.match(r"^-*config[.:]", text) else f"{name}: {text}"
    print(f"Config error: {message}", file=sys.stderr)
    sys.exit(2)


def _key(error: KeyError) -> str:
  """The missing key of a KeyError from ml_collections, without the quotes it adds."""
  return str(error.args[0] if error.args else "").strip("'\"")


def _flag_with_key(argv: list[str], key: Any) -> str | None:
  """The first `--config.a.b.c` flag of argv with `key` as one of its sections (not its last
  component), without its value; None if there is none."""
  for a in argv[1:]:
    if a.startswith("--config."):
      flag = a.split("=")[0]
      if key in flag[len("--config."):].split(".")[:-1]:
        return flag
  return None


def _missing_section(config: Any, dotted_path: str) -> str | None:
  """The first section of "config.a.b.field" that `config` lacks, or None when every section
  exists (then only the field itself is unknown)."""
  if config is None:
    return None
  node = config
  for key in dotted_path.split(".")[1:-1]:
    if not hasattr(node, "get") or key not in node:
      return key
    node = node[key]
  return None


def _new_section_message(flag: str, key: str) -> str:
  """The error for a flag that sets a field of a section the config file does not have."""
  return (f"{flag}: the config has no section {key!r}, and the command line can only set fields "
          "of sections the config file has; add a new section (an eval, a tower) in a config "
          "file whose get_config() starts from this one")


def component_sections(config: ml_collections.ConfigDict) -> list[tuple[str, Any, tuple[str, ...]]]:
  """Every section of `config` that selects a registered component by its `name` field.

  Returns:
    [(dotted path below `config`, the registry, the section's fields that are not the
    component's own and are kept when it is switched)], parents before children.
  """
  import clip_jax.data  # noqa: F401  (the imports register the components)
  import clip_jax.evals  # noqa: F401
  import clip_jax.losses  # noqa: F401
  import clip_jax.models  # noqa: F401
  from clip_jax.data.registry import SHARED_FIELDS, SOURCES
  from clip_jax.data.tokenizer import TOKENIZERS
  from clip_jax.evals.registry import EVALUATORS
  from clip_jax.losses.registry import LOSSES
  from clip_jax.models.registry import MODEL_WIDE_FIELDS, TOWERS

  sections = [("loss", LOSSES, ()), ("data", SOURCES, SHARED_FIELDS),
              ("data.tokenizer", TOKENIZERS, ())]
  towers = config.get("model", {}).get("towers", None) or {}
  sections += [(f"model.towers.{m}", TOWERS, MODEL_WIDE_FIELDS) for m in towers]
  sections += [(f"evals.{e}", EVALUATORS, ()) for e in (config.get("evals", None) or {})]
  return sections


def _section(config: ml_collections.ConfigDict, path: str) -> Any:
  node = config
  for key in path.split("."):
    if not hasattr(node, "get") or key not in node:
      return None
    node = node[key]
  return node


def command_line_values(argv: list[str]) -> dict[str, str]:
  """{dotted path below config: raw value} for each `--config.<path>=<value>` (or
  `--config.<path> <value>`) in argv."""
  out = {}
  for i, arg in enumerate(argv):
    if not arg.startswith("--config."):
      continue
    path, eq, value = arg[len("--config."):].partition("=")
    if eq:
      out[path] = value
    elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
      out[path] = argv[i + 1]
  return out


def _literal(raw: str) -> Any:
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def switch_components(config: ml_collections.ConfigDict,
                      overrides: dict[str, str]) -> list[tuple[str, str]]:
  """Switches components by name: each section whose `name` the command line changes is rebuilt.

  A component switched by name (for example `--config.loss.name=softmax` on a sigmoid config)
  starts from ITS OWN declared defaults: the file's settings of the old component are dropped
  (so softmax gets softmax's `init_scale`, not sigmoid's), except the section's shared fields
  (`component_sections`) and the file's values of fields the new component requires and has no
  default for (or, when the file lacks one, the value the command line gives). Every declared
  field with a default is then present, so any of them can be overridden on the same command
  line.

  Args:
    config: the file's config, changed in place.
    overrides: the command line's {dotted path: raw value}, e.g. {"loss.name": "softmax"} (see
      `command_line_values`); a section is switched when it holds "<section>.name".

  Returns:
    [(section path, a line saying what was switched and dropped)], one per switched section.

  Raises:
    ConfigError: a requested name that is not registered (naming the field and the choices).
  """
  notes = []
  for path, registry, shared in component_sections(config):
    section = _section(config, path)
    new = overrides.get(f"{path}.name")
    if new is None or section is None or not hasattr(section, "get") or section.get(
        "name") == new:
      continue
    registry.get(new, field=f"config.{path}.name")
    declared = registry.fields(new)
    old = dict(section.items())
    rebuilt = {"name": new}
    rebuilt.update({k: v for k, v in declared.items() if v is not REQUIRED and v is not None})
    rebuilt.update({k: old[k] for k in shared if k in old})
    for k, v in declared.items():
      if v is REQUIRED and k in old:
        rebuilt[k] = old[k]
      elif v is REQUIRED and f"{path}.{k}" in overrides:  # the flag parser sets the real value
        rebuilt[k] = _literal(overrides[f"{path}.{k}"])
    dropped = sorted(k for k in old if k != "name" and (k not in rebuilt or rebuilt[k] != old[k]))
    parent_path, _, key = path.rpartition(".")
    parent = _section(config, parent_path) if parent_path else config
    with config.unlocked():
      parent[key] = ml_collections.ConfigDict(rebuilt)
    applies = "apply" if len(dropped) > 1 else "applies"
    notes.append((path,
        f"config.{path}.name: {old.get('name')!r} -> {new!r} (command line); {new!r} starts "
        f"from its defaults" + (f"; the file's {', '.join(dropped)} no longer {applies}"
                                if dropped else "")))
  return notes


def add_overridden_fields(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Adds each field the command line overrides that the file's section lacks but its component
  declares (e.g. `--config.loss.max_scale=100` on a sigmoid config that never sets it, a
  pipeline field such as `--config.data.num_threads=0` on any data section, or a config.model
  field such as `--config.model.attention_impl=cudnn`), with the
  component's default (or the command line's value where there is none), so that the flag
  parser can then apply the override. Changes `config` in place."""
  from clip_jax import schema
  from clip_jax.data.registry import PipelineFields
  from clip_jax.models.model import ModelFields

  sections = [("model", config.get("model"), schema.defaults(ModelFields))]  # no component name
  for path, registry, _ in component_sections(config):
    section = _section(config, path)
    if section is None or not hasattr(section, "get") or section.get("name") not in registry:
      continue
    declared = dict(registry.fields(section.name))
    if path == "data":  # config.data also holds the pipeline's fields (num_threads, augment, ...)
      declared.update(schema.defaults(PipelineFields))
    sections.append((path, section, declared))
  for path, section, declared in sections:
    if section is None or not hasattr(section, "get"):
      continue
    for key, raw in overrides.items():
      field = key[len(path) + 1:] if key.startswith(f"{path}.") else ""
      if field and "." not in field and field in declared and field not in section:
        default = declared[field]
        with config.unlocked():
          section[field] = (_literal(raw) if default is REQUIRED or default is None
                            else default)


def define_config_flag(help_text: str) -> Any:
  """Defines the absl `--config` flag: a get_config() file plus `--config.<field>=` overrides.

  The file's config is completed with the optional defaults before the overrides apply, so every
  documented field (e.g. `--config.init_from=...`) can be set even when the file does not; a
  component switched by name on the command line starts from its own defaults
  (`switch_components`), and what then applies is printed once the flags are parsed.
  """
  from absl import flags
  from ml_collections import config_flags

  holder = config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)
  parser = flags.FLAGS["config"].parser
  load = parser.parse

  def parse(path):
    file_path = path.split(":", 1)[0]
    if not os.path.isfile(file_path):
      raise ValueError(f"{file_path!r}: no such config file")
    config = load(path)
    if not isinstance(config, ml_collections.ConfigDict):
      return config
    overrides = command_line_values(_ARGV or sys.argv)
    import_modules(_literal(overrides["imports"]) if "imports" in overrides
                   else config.get("imports", ()))
    _SWITCHES[:] = switch_components(config, overrides)
    add_overridden_fields(config, overrides)
    return add_defaults(config)

  parser.parse = parse
  return holder
