"""Parameter sharding from `config.sharding_rules`: regexes on parameter paths -> tactics.

`config.sharding_rules` is a sequence of `(regex, value)` pairs matched with `re.search`
against the "/"-joined path of every leaf of the train state (params and optimizer moments,
e.g. "params/model/image/encoder/transformer/block_0/mlp/fc1/kernel",
"opt_state/0/mu/model/..."); the first match wins and unmatched leaves are replicated. A value
is one of:

* a tactic by name, with optional keyword arguments as Python literals:
  "replicate", "fsdp", "fsdp(min_size_mb=4)", "fsdp(axis='data')", "tensor(dim=0)";
* an explicit PartitionSpec, as a tuple with one entry per leading dimension (a mesh axis, a
  tuple of axes or None): `(None, "tensor")`.

Tactics are entries of the `TACTICS` registry: a factory `(mesh, **arguments) -> Tactic`, where
a Tactic maps a leaf's (shape, dtype) to its PartitionSpec. Register your own with
`@TACTICS.register("name")`. Every rule is parsed once, before anything is created, and
mistakes raise ConfigError naming `config.sharding_rules[i]`.

`TENSOR_PARALLEL_RULES` shard the transformer blocks Megatron-style over the `tensor` axis; the
mesh's Auto axes let the compiler insert the collectives (see its comment).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax.registry import REQUIRED, ConfigError, Registry
from clip_jax.tree_paths import compile_rules, path_to_str

FIELD = "config.sharding_rules"

Tactic = Callable[[tuple[int, ...], np.dtype], P]  # (shape, dtype) -> PartitionSpec


def _arguments(factory: Callable[..., Tactic]) -> dict[str, Any]:
  """A tactic factory's keyword arguments (all but the leading `mesh`) and their defaults."""
  params = list(inspect.signature(factory).parameters.values())[1:]
  return {p.name: REQUIRED if p.default is inspect.Parameter.empty else p.default
          for p in params}


TACTICS: Registry[Callable[..., Tactic]] = Registry("sharding tactic", FIELD,
                                                    fields_of=_arguments)

# Megatron-style tensor parallelism for the transformer blocks of clip_jax.models, as sharding
# rules: the query/key/value projections and the MLP's fc1 are split by output columns
# (kernel [D_in, D_out] and bias [D_out] over `tensor` in D_out), attention's out projection and
# fc2 by input rows (kernel over `tensor` in D_in; their bias stays whole). Each head's or hidden
# unit's work then stays on one `tensor` shard and the compiler adds one reduction after each
# row-split layer. Prepend them to the fsdp rules:
#   config.sharding_rules = TENSOR_PARALLEL_RULES + ((".*", "fsdp"),)
# The parameter path names of clip_jax.models are spelled here and nowhere else.
TENSOR_PARALLEL_RULES: tuple[tuple[str, str], ...] = (
    (r"/attn/(query|key|value)/(kernel|bias)$", "tensor(dim=-1)"),
    (r"/attn/out/kernel$", "tensor(dim=0)"),
    (r"/mlp/fc1/(kernel|bias)$", "tensor(dim=-1)"),
    (r"/mlp/fc2/kernel$", "tensor(dim=0)"),
)


def _check_axis(mesh: Mesh, axis: str, argument: str) -> None:
  if axis not in mesh.axis_names:
    raise ConfigError(f"{argument}={axis!r} is not a mesh axis {mesh.axis_names}")


def _spec(entries: list[Any]) -> P:
  """The PartitionSpec of `entries` (one per dimension); P() when nothing is sharded."""
  return P(*entries) if any(e is not None for e in entries) else P()


def _shard_largest(spec: list[Any], shape: tuple[int, ...], axis: str, size: int) -> list[Any]:
  """`spec` with `axis` (of `size` devices) added on the largest still unsharded dimension that
  `size` divides; unchanged if there is none or size is 1."""
  if size == 1:
    return spec
  free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % size == 0]
  if free:
    spec = list(spec)
    spec[max(free, key=lambda d: (shape[d], -d))] = axis
  return spec


@TACTICS.register("replicate")
def replicate(mesh: Mesh) -> Tactic:
  """Every device holds the whole array."""
  del mesh
  return lambda shape, dtype: P()


@TACTICS.register("fsdp")
def fsdp(mesh: Mesh, axis: str = "fsdp", min_size_mb: float = 0.0) -> Tactic:
  """Shards the largest dimension divisible by the size of `axis` over it (the first such one
  on ties); arrays smaller than `min_size_mb` MiB, and those with no divisible dimension, are
  replicated."""
  _check_axis(mesh, axis, "axis")
  if isinstance(min_size_mb, bool) or not isinstance(min_size_mb, (int, float)) or (
      min_size_mb < 0):
    raise ConfigError(f"min_size_mb={min_size_mb!r} must be a number >= 0")

  def tactic(shape, dtype):
    if math.prod(shape) * np.dtype(dtype).itemsize < min_size_mb * 2**20:
      return P()
    return _spec(_shard_largest([None] * len(shape), shape, axis, mesh.shape[axis]))

  return tactic


@TACTICS.register("tensor")
def tensor(mesh: Mesh, dim: int = -1, axis: str = "tensor",
           fsdp_axis: str | None = "fsdp") -> Tactic:
  """Shards dimension `dim` over `axis` (tensor parallelism: -1 splits a kernel [D_in, D_out]
  by output columns, 0 by input rows), then the largest other dimension divisible by the size
  of `fsdp_axis` over that (None: no fsdp). Arrays with fewer dimensions than `dim` needs are
  replicated; a `dim` that `axis` does not divide is an error naming the array's shape."""
  _check_axis(mesh, axis, "axis")
  if fsdp_axis is not None:
    _check_axis(mesh, fsdp_axis, "fsdp_axis")
  if isinstance(dim, bool) or not isinstance(dim, int):
    raise ConfigError(f"dim={dim!r} must be an int (a dimension index, -1 the last)")

  def tactic(shape, dtype):
    del dtype
    if not -len(shape) <= dim < len(shape):
      return P()
    if shape[dim] % mesh.shape[axis]:
      raise ConfigError(f"dimension {dim} of shape {shape} is not divisible by the "
                        f"{mesh.shape[axis]} devices of {axis!r}")
    spec = [None] * len(shape)
    spec[dim] = axis
    if fsdp_axis is not None:
      spec = _shard_largest(spec, shape, fsdp_axis, mesh.shape[fsdp_axis])
    return _spec(spec)

  return tactic


def _explicit(spec: Sequence[Any], mesh: Mesh) -> Tactic:
  """The PartitionSpec `spec` itself, checked against each array's shape."""
  entries = [tuple(a) if isinstance(a, (tuple, list)) else a for a in spec]
  for axes in entries:
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in mesh.axis_names:
        raise ConfigError(f"axis {axis!r} in {tuple(spec)!r} is not a mesh axis "
                          f"{mesh.axis_names}")

  def tactic(shape, dtype):
    del dtype
    if len(entries) > len(shape):
      raise ConfigError(f"spec {tuple(spec)!r} has more entries than the shape {shape}")
    for dim, axes in enumerate(entries):
      n = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))
                    if a is not None)
      if shape[dim] % n:
        raise ConfigError(f"dimension {dim} of shape {shape} is not divisible by the {n} "
                          f"devices of {axes!r}")
    return P(*entries)

  return tactic


_NOT_A_CALL = "not a tactic name or a call such as \"fsdp(min_size_mb=4)\""


def _parse_call(text: str) -> tuple[str, dict[str, Any]]:
  """"name" or "name(key=literal, ...)" -> (name, {key: value}); ValueError if neither."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError:
    raise ValueError(_NOT_A_CALL) from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(_NOT_A_CALL)
  if node.args:
    raise ValueError("give tactic arguments by name, e.g. \"fsdp(min_size_mb=4)\"")
  try:
    return node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError:
    raise ValueError("tactic arguments must be Python literals (numbers, strings, None)") from None


def parse_rule_value(value: Any, mesh: Mesh) -> Tactic:
  """A rule value (tactic string or explicit spec, see the module docstring) -> its Tactic.

  Raises:
    ConfigError: an unknown tactic (listing the registered ones), an unknown or missing
      argument, an argument the tactic rejects, an axis not in `mesh`, or a value of another
      type. The message does not name the rule; `parse_rules` prefixes it.
  """
  if isinstance(value, (tuple, list, P)):
    return _explicit(tuple(value), mesh)
  if not isinstance(value, str):
    raise ConfigError("the value must be a tactic string such as \"fsdp\" or \"replicate\", "
                      "or a PartitionSpec tuple such as (None, \"tensor\")")
  try:
    name, arguments = _parse_call(value)
  except ValueError as e:
    raise ConfigError(f"{value!r}: {e}") from None
  if name not in TACTICS:
    raise ConfigError(f"{name!r} is not a known sharding tactic; choose one of: "
                      f"{', '.join(TACTICS.names())}, or give a PartitionSpec tuple")
  declared = TACTICS.fields(name)
  unknown = sorted(set(arguments) - set(declared))
  missing = sorted(k for k, v in declared.items() if v is REQUIRED and k not in arguments)
  if unknown or missing:
    raise ConfigError(
        f"{'unknown' if unknown else 'missing'} argument {(unknown or missing)[0]!r}; "
        f"{name!r} takes {', '.join(f'{k}={v!r}' for k, v in declared.items()) or 'none'}")
  return TACTICS.get(name)(mesh, **arguments)


def parse_rules(rules: Sequence[Sequence[Any]], mesh: Mesh,
                field: str = FIELD) -> list[tuple[re.Pattern, Tactic, str]]:
  """[(compiled regex, Tactic, the rule as "field[i] = (regex, value)")] for `rules`.

  Raises:
    ConfigError: naming `field[i]` and its value for a malformed rule (see `parse_rule_value`).
  """
  parsed = []
  for i, (pattern, value) in enumerate(compile_rules(rules, field)):
    label = f"{field}[{i}] = {(pattern.pattern, value)!r}"
    try:
      parsed.append((pattern, parse_rule_value(value, mesh), label))
    except ConfigError as e:
      raise ConfigError(f"{label}: {e}") from None
  return parsed


def param_partition_specs(tree: Any, rules: Sequence[Sequence[Any]], mesh: Mesh,
                          field: str = FIELD) -> Any:
  """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs) from `rules`.

  The first rule whose regex matches (re.search) the leaf's "/"-joined path wins; leaves that
  no rule matches, and scalars, are replicated.

  Raises:
    ConfigError: naming `field[i]` for a malformed rule, or naming the rule and the parameter
      path for a spec that does not fit the parameter's shape.
  """
  parsed = parse_rules(rules, mesh, field)

  def spec(path, leaf):
    name = path_to_str(path)
    shape = tuple(getattr(leaf, "shape", ()))
    if not shape:
      return P()
    for pattern, tactic, label in parsed:
      if pattern.search(name):
        try:
          return tactic(shape, np.dtype(getattr(leaf, "dtype", np.float32)))
        except ConfigError as e:
          raise ConfigError(f"{label} on {name}: {e}") from None
    return P()

  return jax.tree.map_with_path(spec, tree)


def shardings_for(tree: Any, rules: Sequence[Sequence[Any]], mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `tree` from `rules` (see `param_partition_specs`)."""
  specs = param_partition_specs(tree, rules, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))
