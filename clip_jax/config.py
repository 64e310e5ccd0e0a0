"""Config loading helpers, shared defaults, and start-up validation with actionable errors.

Configs are ml_collections `get_config()` files (see configs/). `validate_config` runs once at
start-up, before anything is compiled, and raises `ConfigError` naming the field and the allowed
values for every mistake it can see without building the model. The command line (`--config`
and its overrides) is `clip_jax.cli`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import os
import re
import types
from typing import Any, Sequence

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
  # Peak dense bf16 TFLOP/s of one device, for the logged mfu; 0: from the device kind
  # (clip_jax.training.flops.PEAK_FLOPS_PER_DEVICE; no mfu for an unknown kind, e.g. a CPU).
  peak_tflops_per_device: float = schema.field(0.0, schema.number(low=0.0))
  init_from: str = ""            # params-only initialisation from another checkpoint, or
                                 # released weights: "<source>:<name>[:<checkpoint>]"
  init_from_rules: Any = ()      # ((regex, "load"|"init"), ...) for init_from
  distributed: Any = None        # multi-host settings (see launch/)


# Top-level fields of earlier versions, still in the config.json of their runs: dropped when such
# a file is read back (`saved_config`). The test-only fault hooks now live in
# clip_jax.training.faults.
RETIRED_FIELDS = ("debug_nan_steps", "debug_signal")


def load_config_module(path: str) -> types.ModuleType:
  """The Python module of config file `path`, executed (for config files that build on another's
  functions, e.g. `load_config_module(os.path.join(os.path.dirname(__file__), "emoji.py"))`).

  Raises:
    ConfigError: the file does not exist.
  """
  if not os.path.exists(path):
    raise ConfigError(f"--config {path!r}: no such file")
  name = "_clip_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a Python file (for tools and tests; the CLI uses absl flags).

  As with `--config`, "file.py:arg" calls `get_config("arg")` (everything after the first ":").

  Raises:
    ConfigError: the file does not exist or has no get_config().
  """
  file_path, has_arg, arg = path.partition(":")
  module = load_config_module(file_path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config {file_path!r} has no get_config() function")
  return module.get_config(arg) if has_arg else module.get_config()


def config_arg_pairs(arg: str) -> list[str]:
  """The "key=value" pairs of a config file's ":arg": a new pair starts only at a comma followed
  by "<name>=", so a comma inside a value (a brace pattern "shard-{a,b}.tar") stays in it."""
  return [pair for pair in re.split(r",(?=[A-Za-z_]\w*=)", arg) if pair]


def split_config_arg(arg: str, keys: Sequence[str]) -> tuple[dict[str, str], str]:
  """({key: value} of the ":arg" pairs whose key is one of `keys` (a config file's own
  arguments, e.g. "data"), the other pairs as an arg for `apply_config_arg`)."""
  own, rest = {}, []
  for pair in config_arg_pairs(arg):
    key, _, value = pair.partition("=")
    if key in keys:
      own[key] = value
    else:
      rest.append(pair)
  return own, ",".join(rest)


def apply_config_arg(config: ml_collections.ConfigDict, arg: str,
                     file: str) -> ml_collections.ConfigDict:
  """Sets the fields named in a config file's ":arg" (`--config file.py:k=v,k=v`) and returns
  `config`.

  Each key is a field of `config.data`, else a top-level field, and must already be set there;
  its value is converted to that field's type (int, float, str, or bool from "true"/"false"). A
  new pair starts only at a comma followed by "<name>=", so a comma inside a value (a brace
  pattern "shard-{a,b}.tar") stays in it.

  Raises:
    ConfigError: naming `file` and the key: an unknown key (listing the known ones), a pair
      without "=", or a value of the wrong type.
  """
  for pair in config_arg_pairs(arg):
    key, eq, raw = pair.partition("=")
    section = config.data if key in config.data else config
    if not eq or key not in section or isinstance(section[key], ml_collections.ConfigDict):
      known = sorted(k for k in [*config.data.keys(), *config.keys()]
                     if not isinstance(config.get(k, config.data.get(k)),
                                       ml_collections.ConfigDict))
      raise ConfigError(f"--config {file}:{arg}: {pair!r} is not key=value for a field of "
                        f"config.data or config; known keys: {', '.join(known)}")
    old = section[key]
    try:
      if isinstance(old, bool):
        value = {"true": True, "false": False}[raw.lower()]
      else:
        value = type(old)(raw) if isinstance(old, (int, float, str)) else None
    except (KeyError, ValueError):
      value = None
    if value is None:
      raise ConfigError(f"--config {file}:{arg}: {key} = {raw!r} is not of type "
                        f"{type(old).__name__}, as its default {old!r} is")
    section[key] = value
  return config


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
