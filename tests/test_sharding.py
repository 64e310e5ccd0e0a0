"""Sharding rules: regexes on parameter paths -> tactics (with arguments) or explicit specs."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax import mesh as mesh_lib
from clip_jax import sharding
from clip_jax.registry import ConfigError


def test_rules_first_match_wins_and_fsdp_picks_largest_divisible_dim():
  mesh = mesh_lib.make_mesh((("data", 4), ("fsdp", 2), ("tensor", 1)))
  tree = {"model": {"image": {"kernel": np.zeros((6, 16)), "bias": np.zeros((16,))},
                    "text": {"embedding": np.zeros((7, 3))}},
          "loss": {"scale": np.zeros(())}}
  rules = ((r"image/bias$", "replicate"), (r"text/", ("tensor", None)), (r".*", "fsdp"))
  specs = sharding.param_partition_specs(tree, rules, mesh)
  assert specs["model"]["image"]["kernel"] == P(None, "fsdp")  # 16 is the largest, divisible
  assert specs["model"]["image"]["bias"] == P()
  assert specs["model"]["text"]["embedding"] == P("tensor", None)
  assert specs["loss"]["scale"] == P()  # scalars are replicated
  # 7 and 3 are not divisible by fsdp=2: replicated.
  specs = sharding.param_partition_specs(tree, ((".*", "fsdp"),), mesh)
  assert specs["model"]["text"]["embedding"] == P()


@sharding.TACTICS.register("first_dim_test_only")
def _first_dim(mesh, axis: str = "data"):
  del mesh
  return lambda shape, dtype: P(axis)


@pytest.mark.parametrize("value, shape, dtype, want", [
    ("fsdp(min_size_mb=1)", (256, 1024), np.float32, P(None, "fsdp")),  # 1 MiB: sharded
    ("fsdp(min_size_mb=1)", (256, 1024), np.float16, P()),  # 0.5 MiB: replicated
    ("fsdp(min_size_mb=1)", (8,), np.float32, P()),
    ("fsdp(axis='data')", (9, 4), np.float32, P(None, "data")),  # 9 is not divisible by 2
    ("fsdp(axis='tensor')", (8, 8), np.float32, P("tensor", None)),  # a tie: the first dim
    ("tensor", (16, 32), np.float32, P("fsdp", "tensor")),  # column split, fsdp on D_in
    ("tensor(dim=0)", (32, 16), np.float32, P("tensor", "fsdp")),  # row split
    ("tensor(dim=0, fsdp_axis=None)", (32, 16), np.float32, P("tensor", None)),
    ("tensor", (32,), np.float32, P("tensor")),  # a column-split layer's bias
    ("tensor(dim=1)", (32,), np.float32, P()),  # no dimension 1: replicated
    ("first_dim_test_only(axis='fsdp')", (4, 4), np.float32, P("fsdp")),  # a user's tactic
])
def test_tactic_specs(value, shape, dtype, want):
  mesh = mesh_lib.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  tree = {"w": jax.ShapeDtypeStruct(shape, dtype)}
  assert sharding.param_partition_specs(tree, ((".*", value),), mesh)["w"] == want


def test_tensor_parallel_rules_split_blocks_megatron_style():
  mesh = mesh_lib.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  block = "params/model/text/encoder/transformer/block_0"
  shapes = {"attn/query/kernel": (16, 16), "attn/query/bias": (16,), "attn/out/kernel": (16, 16),
            "attn/out/bias": (16,), "mlp/fc1/kernel": (16, 32), "mlp/fc2/kernel": (32, 16),
            "attn_norm/scale": (16,)}
  tree = {f"{block}/{k}": np.zeros(s, np.float32) for k, s in shapes.items()}
  specs = sharding.param_partition_specs(
      tree, sharding.TENSOR_PARALLEL_RULES + ((".*", "fsdp"),), mesh)
  assert {k[len(block) + 1:]: v for k, v in specs.items()} == {
      "attn/query/kernel": P("fsdp", "tensor"), "attn/query/bias": P("tensor"),
      "attn/out/kernel": P("tensor", "fsdp"), "attn/out/bias": P("fsdp"),
      "mlp/fc1/kernel": P("fsdp", "tensor"), "mlp/fc2/kernel": P("tensor", "fsdp"),
      "attn_norm/scale": P("fsdp")}


@pytest.mark.parametrize("value, message", [
    ("shard_everything", "'shard_everything' is not a known sharding tactic; choose one of: "),
    ("fsdp(min_size=4)", "unknown argument 'min_size'; 'fsdp' takes axis='fsdp', min_size_mb=0.0"),
    ("fsdp(4)", "give tactic arguments by name"),
    ("fsdp(min_size_mb=x)", "must be Python literals"),
    ("fsdp(", "'fsdp(': not a tactic name or a call"),
    ("fsdp(min_size_mb=-1)", "min_size_mb=-1 must be a number >= 0"),
    ("fsdp(axis='model')", "axis='model' is not a mesh axis ('data', 'fsdp')"),
    ("tensor", "axis='tensor' is not a mesh axis"),
    (3, "must be a tactic string"),
    (("model_parallel",), "is not a mesh axis"),
    (("data",), "on kernel: dimension 0 of shape (6, 3) is not divisible by the 8 devices"),
    (("fsdp", None, None), "has more entries than the shape (6, 3)"),
])
def test_bad_rule_values_are_named_errors(value, message):
  mesh = mesh_lib.make_mesh((("data", 8), ("fsdp", 1)))
  rules = ((r"^loss/", "replicate"), (r"kernel", value))
  with pytest.raises(ConfigError) as e:
    sharding.param_partition_specs({"kernel": np.zeros((6, 3))}, rules, mesh)
  assert str(e.value).startswith(f"config.sharding_rules[1] = ('kernel', {value!r})"), e.value
  assert message in str(e.value)


@pytest.mark.parametrize("rules, message", [
    (((r"(", "fsdp"),), "not a valid regex"),
    (((r".*", "shard_everything"),), "is not a known sharding tactic"),
    (((r".*", ("model_parallel",)),), "is not a mesh axis"),
    (((r"kernel", ("data",)),), "is not divisible"),
])
def test_rule_errors_name_the_field(rules, message):
  mesh = mesh_lib.make_mesh((("data", 8),))
  with pytest.raises(ConfigError, match="config.sharding_rules") as e:
    sharding.param_partition_specs({"kernel": np.zeros((6, 3))}, rules, mesh)
  assert message in str(e.value)
