"""Config loading helpers, shared defaults, and start-up validation with actionable errors.

Configs are ml_collections `get_config()` files (see configs/). `validate_config` runs once at
start-up, before anything is compiled, and raises `ConfigError` naming the field and the allowed
values for every mistake it can see without building the model.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import sys
from typing import Any

import ml_collections

from clip_jax import schema
from clip_jax.registry import REQUIRED, ConfigError


def _positive_int(value: Any, path: str) -> int:
  """The check of a count such as `total_steps`: an int > 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{path} = {value!r} must be a positive integer")
  return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFields:
  """The top-level fields of a training config. The sections (mesh ... evals) are required
  here and checked on their own: the mesh by `parse_mesh_shape`, `optim` by `OptimFields`, each
  component by its registry's schema."""

  total_steps: int = schema.field(check=_positive_int)
  batch_size: int = schema.field(check=_positive_int)  # global
  seed: int = schema.field()
  log_every_steps: int = schema.field(check=_positive_int)
  eval_every_steps: int = schema.field(check=_positive_int)
  ckpt_every_steps: int = schema.field(check=_positive_int)
  mesh: Any = schema.field()
  batch_axes: Any = schema.field()
  sharding_rules: Any = schema.field()
  data: Any = schema.field()
  model: Any = schema.field()
  loss: Any = schema.field()
  optim: Any = schema.field()
  evals: Any = schema.field()
  imports: Any = ()              # modules to import first: users' own registered components
  eval_batch_size: int = 0       # 0 -> batch_size
  microbatch_size: int = 0       # > 0: global examples per micro-batch of the step (0: off)
  ckpt_keep: int = 3             # keep the last K checkpoints ...
  ckpt_keep_period: int = 0      # ... plus every M-th step (0: none)
  ckpt_async: bool = True        # write checkpoints in the background
  max_bad_steps: int = 5         # stop after this many consecutive non-finite steps
  init_from: str = ""            # params-only initialisation from another checkpoint
  init_from_rules: Any = ()      # ((regex, "load"|"init"), ...) for init_from
  distributed: Any = None        # multi-host settings (see launch/)


# Top-level fields of earlier versions, still in the config.json of their runs: dropped when such
# a file is read back (`saved_config`). The test-only fault hooks now live in
# clip_jax.training.faults.
RETIRED_FIELDS = ("debug_nan_steps", "debug_signal")
# The argv being parsed by `parse_flags_or_exit`, and the component switches it asked for.
_ARGV: list[str] = []
_SWITCHES: list[tuple[str, str]] = []


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a Python file (for tools and tests; the CLI uses absl flags).

  As with `--config`, "file.py:arg" calls `get_config("arg")` (everything after the first ":").

  Raises:
    ConfigError: the file does not exist or has no get_config().
  """
  file_path, has_arg, arg = path.partition(":")
  if not os.path.exists(file_path):
    raise ConfigError(f"--config {file_path!r}: no such file")
  spec = importlib.util.spec_from_file_location("_clip_jax_config", file_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config {file_path!r} has no get_config() function")
  return module.get_config(arg) if has_arg else module.get_config()


def saved_config(text: str) -> ml_collections.ConfigDict:
  """The config a training run saved as `<workdir>/config.json` (its JSON `text`), without the
  fields of earlier versions that no longer exist (`RETIRED_FIELDS`)."""
  fields = json.loads(text)
  for name in RETIRED_FIELDS:
    fields.pop(name, None)
  return ml_collections.ConfigDict(fields)


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every optional top-level field present."""
  return add_defaults(ml_collections.ConfigDict(config.to_dict()))


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    process_count: int = 1) -> None:
  """Checks a training config before anything is built.

  Raises:
    ConfigError: naming the field and the allowed values, for unknown fields (with the closest
      known one) in any section, missing or invalid values (`RunFields`, `OptimFields`,
      `ModelFields` and every component's schema, towers too), a global batch not divisible by
      the batch shards or processes, a `microbatch_size` that does not cut it into micro-batches
      divisible by the batch shards, a mesh that does not match the devices, and unknown loss,
      tower, data source, tokenizer or evaluator names.
  """
  # Imported here: these modules register the names that validation checks against.
  import clip_jax.data  # noqa: F401
  import clip_jax.evals  # noqa: F401
  import clip_jax.losses  # noqa: F401
  import clip_jax.models  # noqa: F401
  from clip_jax.data.registry import parse_data
  from clip_jax.data.tokenizer import TOKENIZERS
  from clip_jax.evals.registry import EVALUATORS
  from clip_jax.losses.registry import LOSSES
  from clip_jax.mesh import parse_mesh_shape
  from clip_jax.models import parse_model_config
  from clip_jax.optim import parse_optim

  import_modules(config.get("imports", ()))
  run = schema.parse(RunFields, config, "config")

  names, sizes = parse_mesh_shape(config.mesh, num_devices)
  axis_size = dict(zip(names, sizes))
  batch_axes = tuple(config.batch_axes)
  bad = [a for a in batch_axes if a not in axis_size]
  if not batch_axes or bad:
    raise ConfigError(f"config.batch_axes = {batch_axes!r} must be a non-empty subset of the "
                      f"mesh axes {names}")
  shards = math.prod(axis_size[a] for a in batch_axes)
  for field, value in (("batch_size", run.batch_size), ("eval_batch_size", run.eval_batch_size)):
    if value and value % shards:
      raise ConfigError(
          f"config.{field} = {value} is not divisible by the {shards} batch shards (mesh axes "
          f"{batch_axes} over {num_devices} devices); use a multiple of {shards}")
    if value and value % process_count:
      raise ConfigError(f"config.{field} = {value} is not divisible by the {process_count} "
                        "processes")

  _check_microbatch_size(run.microbatch_size, run.batch_size, shards, batch_axes, num_devices)
  parse_optim(config.optim)
  parse_model_config(config.model)
  LOSSES.parse(config.loss)
  parse_data(config.data)
  TOKENIZERS.parse(config.data.tokenizer, "config.data.tokenizer")
  for eval_name, eval_config in (config.evals or {}).items():
    EVALUATORS.parse(eval_config, f"config.evals.{eval_name}")


def _check_microbatch_size(micro: int, batch_size: int, shards: int,
                           batch_axes: tuple[str, ...], num_devices: int) -> None:
  """`config.microbatch_size` (global, 0 = off) divides the batch and is split over the shards."""
  if micro < 0:
    raise ConfigError(f"config.microbatch_size = {micro!r} must be 0 (off) or a positive "
                      "integer: the global number of examples per micro-batch")
  if micro and (batch_size % micro or micro % shards):
    fits = [m for m in range(shards, batch_size + 1, shards) if batch_size % m == 0]
    closest = min(fits, key=lambda m: abs(m - micro))
    raise ConfigError(
        f"config.microbatch_size = {micro} must divide config.batch_size = {batch_size} and be a "
        f"multiple of the {shards} batch shards (mesh axes {batch_axes} over {num_devices} "
        f"devices), since every micro-batch is sharded like the batch; use e.g. {closest}, or "
        "0 to turn micro-batching off")


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
      message = f"--{unknown_flag.group(1)} is not a known field" + (
          f"; did you mean --{close[0]}?" if close
          else "; see the config file for the known fields")
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


def add_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the missing optional top-level fields to `config` in place; returns it."""
  with config.unlocked():
    for key, value in schema.defaults(RunFields).items():
      if key not in config and value is not REQUIRED:
        config[key] = value
  return config


def import_modules(modules: Any) -> None:
  """Imports `config.imports` (module names, e.g. ("my_pkg.my_losses",)) so that the components
  they register (`@LOSSES.register(...)`, `@SOURCES.register(...)`, ...) can be named in the
  config. Runs before the config is validated or a component is switched by name.

  Raises:
    ConfigError: `modules` is not a tuple of module names, or one cannot be imported (the
      message names it and says to check PYTHONPATH).
  """
  if isinstance(modules, str) or not all(isinstance(m, str) and m for m in modules):
    raise ConfigError(f"config.imports = {modules!r} must be a tuple of module names, e.g. "
                      "('my_pkg.my_losses',)")
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ConfigError(f"config.imports: cannot import {name!r} ({e}); install it or add its "
                        "directory to PYTHONPATH") from None


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
    notes.append((path,
        f"config.{path}.name: {old.get('name')!r} -> {new!r} (command line); {new!r} starts "
        f"from its defaults" + (f"; the file's {', '.join(dropped)} no longer apply" if dropped
                                else "")))
  return notes


def add_overridden_fields(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Adds each field the command line overrides that the file's section lacks but its component
  declares (e.g. `--config.loss.max_scale=100` on a sigmoid config that never sets it), with the
  component's default (or the command line's value where there is none), so that the flag
  parser can then apply the override. Changes `config` in place."""
  for path, registry, _ in component_sections(config):
    section = _section(config, path)
    if section is None or not hasattr(section, "get") or section.get("name") not in registry:
      continue
    declared = registry.fields(section.name)
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
