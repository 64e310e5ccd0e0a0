"""Mesh construction from the config, and global batches sharded over the batch axes."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax import mesh as mesh_lib
from clip_jax.registry import ConfigError


def test_mesh_fills_minus_one():
  mesh = mesh_lib.make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("mesh_config, message", [
    ((("data", 3), ("fsdp", 1)), "covers 3 devices but JAX has 8"),
    ((("data", -1), ("fsdp", 3)), "does not fit 8 devices"),
    ((("data", -1), ("fsdp", -1)), "at most one -1"),
    ((("data", 4), ("data", 2)), "repeats an axis name"),
    (("data",), "must be a sequence of (axis_name, size) pairs"),
])
def test_mesh_errors_name_the_field(mesh_config, message):
  with pytest.raises(ConfigError, match="config.mesh") as e:
    mesh_lib.make_mesh(mesh_config)
  assert message in str(e.value)


def test_to_global_batch_shards_over_batch_axes():
  mesh = mesh_lib.make_mesh((("data", 4), ("fsdp", 2)))
  sharding = mesh_lib.batch_sharding(mesh, ("data", "fsdp"))
  batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
  out = mesh_lib.to_global_batch(batch, sharding, 16)
  np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
  assert out["image"].sharding.spec == P(("data", "fsdp"))
  assert len(out["image"].addressable_shards) == 8
  assert out["image"].addressable_shards[0].data.shape == (2, 3)
