"""Device mesh from the config, regex sharding rules for parameters, and batch shardings.

The mesh uses `AxisType.Auto` on purpose: the towers are written for compiler-propagated
(GSPMD) sharding, with explicit shardings at the jit boundary (state and batch) and explicit
collectives only inside the loss's `shard_map`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from clip_jax.registry import ConfigError

FSDP_AXIS = "fsdp"


def parse_mesh_shape(mesh_config: Sequence[Sequence[Any]], num_devices: int) -> tuple[
    tuple[str, ...], tuple[int, ...]]:
  """Resolves `config.mesh` (a sequence of (axis name, size), one size may be -1) for a device count.

  Raises:
    ConfigError: naming `config.mesh` when the sizes cannot cover exactly `num_devices` devices.
  """
  try:
    names = tuple(str(name) for name, _ in mesh_config)
    sizes = [int(size) for _, size in mesh_config]
  except (TypeError, ValueError):
    raise ConfigError(
        f"config.mesh = {mesh_config!r} must be a sequence of (axis_name, size) pairs, e.g. "
        "(('data', -1), ('fsdp', 1), ('tensor', 1))") from None
  if len(set(names)) != len(names):
    raise ConfigError(f"config.mesh = {mesh_config!r} repeats an axis name")
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(
        f"config.mesh = {mesh_config!r}: sizes must be positive, with at most one -1 "
        "(meaning: all remaining devices)")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(
          f"config.mesh = {mesh_config!r} does not fit {num_devices} devices: the fixed axes "
          f"take {known}, which does not divide {num_devices}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(
        f"config.mesh = {mesh_config!r} covers {math.prod(sizes)} devices but JAX has "
        f"{num_devices}; make the sizes multiply to {num_devices} or set one size to -1")
  return names, tuple(sizes)


def make_mesh(mesh_config: Sequence[Sequence[Any]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the device mesh (Auto axis types) described by `config.mesh`."""
  devices = list(devices) if devices is not None else jax.devices()
  names, sizes = parse_mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def validate_batch_axes(mesh: Mesh, batch_axes: Sequence[str]) -> tuple[str, ...]:
  batch_axes = tuple(batch_axes)
  unknown = [a for a in batch_axes if a not in mesh.axis_names]
  if not batch_axes or unknown:
    raise ConfigError(
        f"config.batch_axes = {batch_axes!r} must be a non-empty subset of the mesh axes "
        f"{mesh.axis_names}")
  return batch_axes


def batch_size_per_shard(mesh: Mesh, batch_axes: Sequence[str]) -> int:
  """The number of batch shards: the product of the batch axes' sizes."""
  return math.prod(mesh.shape[a] for a in batch_axes)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str]) -> NamedSharding:
  """Sharding of a batch array `[B, ...]`: dimension 0 over the batch axes."""
  return NamedSharding(mesh, P(tuple(batch_axes)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_to_str(path: tuple[Any, ...]) -> str:
  """A pytree key path as a "/"-joined string, e.g. "model/image/encoder/block_0/mlp/kernel"."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """[(path string, leaf)] for every leaf of `tree`."""
  return [(path_to_str(p), leaf) for p, leaf in jax.tree.flatten_with_path(tree)[0]]


def compile_rules(rules: Sequence[Sequence[Any]], field: str) -> list[tuple[re.Pattern, Any]]:
  """Compiles (regex, value) rules, raising ConfigError naming `field` for bad regexes."""
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ConfigError(f"{field}[{i}] = {rule!r} must be a (regex, value) pair")
    pattern, value = rule
    try:
      compiled.append((re.compile(pattern), value))
    except re.error as e:
      raise ConfigError(f"{field}[{i}]: {pattern!r} is not a valid regex ({e})") from None
  return compiled


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh) -> P:
  """Shards the largest dimension divisible by the fsdp axis size; replicates if none is."""
  size = mesh.shape.get(FSDP_AXIS, 1)
  if size == 1 or not shape:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % size == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return P(*spec)
  return P()


def _rule_spec(value: Any, path: str, shape: tuple[int, ...], mesh: Mesh, field: str) -> P:
  if value == "replicate":
    return P()
  if value == "fsdp":
    return _fsdp_spec(shape, mesh)
  if isinstance(value, (tuple, list)):
    if len(value) > len(shape):
      raise ConfigError(
          f"{field}: spec {tuple(value)!r} has more entries than {path} has dimensions {shape}")
    for dim, axes in enumerate(value):
      for axis in (axes if isinstance(axes, (tuple, list)) else (axes,)):
        if axis is not None and axis not in mesh.axis_names:
          raise ConfigError(f"{field}: axis {axis!r} in {tuple(value)!r} is not a mesh axis "
                            f"{mesh.axis_names}")
      n = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, (tuple, list)) else (axes,))
                    if a is not None)
      if shape[dim] % n:
        raise ConfigError(f"{field}: {path} dimension {dim} (size {shape[dim]}) is not divisible "
                          f"by the {n} devices of {axes!r}")
    return P(*value)
  raise ConfigError(
      f"{field}: rule value {value!r} must be 'replicate', 'fsdp' or a PartitionSpec tuple")


def param_partition_specs(tree: Any, rules: Sequence[Sequence[Any]], mesh: Mesh,
                          field: str = "config.sharding_rules") -> Any:
  """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs) from regex rules.

  The first rule whose regex matches (re.search) the leaf's "/"-joined path wins; leaves no rule
  matches, and scalars, are replicated.
  """
  compiled = compile_rules(rules, field)

  def spec(path, leaf):
    name = path_to_str(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for pattern, value in compiled:
      if pattern.search(name):
        return _rule_spec(value, name, shape, mesh, field)
    return P()

  return jax.tree.map_with_path(spec, tree)


def shardings_for(tree: Any, rules: Sequence[Sequence[Any]], mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `tree` from regex rules (see `param_partition_specs`)."""
  specs = param_partition_specs(tree, rules, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def host_local_batch_size(global_batch: int) -> int:
  return global_batch // jax.process_count()


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding,
                    global_batch: int) -> dict[str, jax.Array]:
  """Assembles this process's slice of the batch into global arrays sharded over the batch axes."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

  return {k: put(v) for k, v in local_batch.items()}
