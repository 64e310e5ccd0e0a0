"""The device mesh from `config.mesh`, and the batch's sharding over `config.batch_axes`.

The mesh uses `AxisType.Auto` on purpose: the towers are written for compiler-propagated
(GSPMD) sharding, with explicit shardings at the jit boundary (state and batch) and explicit
collectives only inside the loss's `shard_map`. Parameter shardings: `clip_jax.sharding`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from clip_jax.registry import ConfigError


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


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str]) -> NamedSharding:
  """Sharding of a batch array `[B, ...]`: dimension 0 over the batch axes."""
  return NamedSharding(mesh, P(tuple(batch_axes)))


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding,
                    global_batch: int) -> dict[str, jax.Array]:
  """Assembles this process's slice of the batch into global arrays sharded over the batch axes."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

  return {k: put(v) for k, v in local_batch.items()}
