"""The registry of towers (encoders), selected by `config.model.towers.<modality>.name`.

A tower is a Flax NNX module class, registered with its config fields and their defaults
(`@TOWERS.register("my_tower", fields={"width": REQUIRED, ...})`). The model builds it eagerly as

    cls(inputs, **fields, dtype=compute_dtype, remat=bool, remat_policy=str,
        attention_impl=str | None, rngs=nnx.Rngs)

where `inputs` is the `jax.ShapeDtypeStruct` of the batch entry it reads (`[B, ...]`; B is not
used) and `fields` are the section's values, declared defaults filled in. A tower

* holds only `nnx.Param` variables (the trainer differentiates and checkpoints them; random
  numbers come in through the call, never from state kept in the module);
* has an attribute `out_features: int`, the width of its features;
* is called as `tower(x, rngs=None)`: x `[B, ...]` -> unnormalised features `[B, out_features]`
  float32. `rngs` (an `nnx.Rngs`) is given in training, for stochastic layers such as dropout,
  and is None in evaluation. The model then projects the features to the shared embedding size
  and L2-normalises them.

A tower's fields are a schema dataclass that extends `TowerFields` (`clip_jax.schema`: types,
defaults, checks, and a cross-field `check(self, path)` such as `resolve_size` for named sizes
like `variant="B/16"`), or a plain {field: default or REQUIRED} mapping (those fields are not
type-checked). Every tower also takes `dtype`, `remat`, `remat_policy` and `attention_impl`
(`TowerFields`), which default to config.model's; a tower without attention or blocks to
rematerialise may ignore the last two.
`parse_model_config` reads each tower section against its schema at start-up. A tower class may
also define a classmethod `check_inputs(kwargs: dict, field: str, inputs)` that raises
`ConfigError` for input shapes it cannot take; `TowerSpec.build` calls it before building.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax.numpy as jnp

from clip_jax import schema
from clip_jax.models import layers
from clip_jax.registry import REQUIRED, ConfigError, Registry  # noqa: F401  (REQUIRED: for towers)

# The field named in errors of a tower built outside a model.
GENERIC_FIELD = "config.model.towers.<modality>"

# Compute dtypes a model or tower may use (by config name). Parameters are always float32.
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def canonical_dtype(value: Any, field: str) -> Any:
  """Returns the jnp dtype for a config dtype ("float32" | "bfloat16", or the dtype itself)."""
  for name, dtype in DTYPES.items():
    if isinstance(value, str) and value == name:
      return dtype
    if not isinstance(value, str) and _same_dtype(value, dtype):
      return dtype
  raise ConfigError(
      f"{field} = {value!r} is not allowed; choose one of: {', '.join(map(repr, DTYPES))}")


def _same_dtype(a: Any, b: Any) -> bool:
  try:
    return jnp.dtype(a) == jnp.dtype(b)
  except (TypeError, ValueError):
    return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class TowerFields:
  """The fields every tower takes; a tower's schema extends this dataclass.

  Attributes:
    dtype: the tower's compute dtype ("float32" | "bfloat16"); None: config.model.dtype.
    remat: rematerialise the tower's blocks in the backward pass; None: config.model.remat.
    remat_policy: what a rematerialised block saves for the backward pass, a name in
      `layers.REMAT_POLICIES` ("full": only its input); None: config.model.remat_policy.
    attention_impl: the attention's implementation, "xla" or "cudnn" (`layers.ATTENTION_IMPLS`);
      None: config.model.attention_impl.
  """

  dtype: Any = schema.field(None, canonical_dtype)
  remat: Any = schema.field(None, schema.boolean())
  remat_policy: Any = schema.field(None, schema.one_of(*layers.REMAT_POLICIES))
  attention_impl: Any = schema.field(None, schema.one_of(*layers.ATTENTION_IMPLS))


# Fields every tower takes that default to the model's settings (config.model.dtype, remat,
# remat_policy, attention_impl).
MODEL_WIDE_FIELDS = tuple(schema.defaults(TowerFields))

TOWERS: Registry[type] = Registry("tower", "config.model.towers.<modality>.name",
                                  base=TowerFields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerFields(TowerFields):
  """The fields of a transformer tower.

  Its shape: a named size (`variant`) or its explicit width, depth, heads and MLP ratio, fields
  given explicitly overriding the size's values. A subclass sets the class attributes `SIZES`
  ({size name: (width, depth, num_heads, mlp_dim)}) and `WITH_PATCH` (the variant is
  "<size>/<patch>" and the schema has a `patch_size` field); `check` resolves the shape
  (`resolve_size`), so a bad combination is named at start-up.

  Its layers: `norm_eps`, the epsilon of every LayerNorm (default 1e-6; open_clip and OpenAI
  CLIP use 1e-5), and `activation`, the MLPs' nonlinearity: "gelu_tanh" (GELU's tanh
  approximation, the default), "gelu" (exact) or "quick_gelu" (x * sigmoid(1.702 x), OpenAI
  CLIP's). `key_bias`: the attention's key projection has a bias (default False: the softmax
  cancels it; True holds the key biases of released open_clip, OpenAI and Hugging Face weights,
  so that they are exported as they were read).
  """

  SIZES: ClassVar[Mapping[str, tuple[int, int, int, int]]] = {}
  WITH_PATCH: ClassVar[bool] = False

  variant: str | None = schema.field(None, schema.string(nonempty=True))
  width: int | None = schema.field(None, schema.integer(low=1))
  depth: int | None = schema.field(None, schema.integer(low=1))
  num_heads: int | None = schema.field(None, schema.integer(low=1))
  mlp_ratio: float | None = schema.field(None, schema.number(low=0, low_open=True))
  norm_eps: float = schema.field(layers.NORM_EPS, schema.number(low=0, low_open=True))
  activation: str = schema.field(layers.ACTIVATION, schema.one_of(*layers.ACTIVATIONS))
  key_bias: bool = False

  def check(self, path: str) -> None:
    resolve_size(vars(self), self.SIZES, path, with_patch=self.WITH_PATCH)


def resolve_size(kwargs: Mapping[str, Any], sizes: Mapping[str, tuple[int, int, int, int]],
                 field: str, with_patch: bool) -> dict[str, int]:
  """The transformer shape of a tower config: its explicit fields, else its named size.

  Args:
    kwargs: the tower's config; reads `variant`, `width`, `depth`, `num_heads`, `mlp_ratio`
      and, with `with_patch`, `patch_size` (None where not set).
    sizes: {size name: (width, depth, num_heads, mlp_dim)}.
    field: the tower's config path, for errors.
    with_patch: the variant is "<size>/<patch>" (a ViT) rather than "<size>".

  Returns:
    {"width", "depth", "num_heads", "mlp_dim"} (and "patch_size" with `with_patch`). The MLP
    size is round(width * mlp_ratio), where mlp_ratio defaults to the named size's
    mlp_dim / width, or 4 without a named size.

  Raises:
    ConfigError naming `<field>.variant` for an unknown size or a malformed variant, the
    missing fields when neither they nor a variant are given, a field that is not a positive
    integer, and a width that num_heads does not divide.
  """
  variant = kwargs.get("variant")
  names = ("patch_size",) * with_patch + ("width", "depth", "num_heads")
  example = "'B/16'" if with_patch else "'B'"
  named: dict[str, Any] = {}
  ratio = 4.0
  if variant is not None:
    size, _, patch = str(variant).partition("/")
    if (size not in sizes or not isinstance(variant, str)
        or (with_patch and not patch.isdigit()) or (not with_patch and patch)):
      form = "'<size>/<patch size>'" if with_patch else "a size name"
      raise ConfigError(f"{field}.variant = {variant!r} is not {form} with a known size (e.g. "
                        f"{example}); sizes: {', '.join(sizes)}")
    width, depth, num_heads, mlp_dim = sizes[size]
    named = dict(width=width, depth=depth, num_heads=num_heads)
    if with_patch:
      named["patch_size"] = int(patch)
    ratio = mlp_dim / width
  shape = {n: kwargs[n] if kwargs.get(n) is not None else named.get(n) for n in names}
  missing = [f"{field}.{n}" for n in names if shape[n] is None]
  if missing:
    raise ConfigError(f"{field} is missing required field(s): {', '.join(missing)}; set them, "
                      f"or a named size {field}.variant (e.g. {example})")
  if kwargs.get("mlp_ratio") is not None:
    ratio = schema.number(low=0, low_open=True)(kwargs["mlp_ratio"], f"{field}.mlp_ratio")
  for name in names:
    shape[name] = schema.integer(low=1)(shape[name], f"{field}.{name}")
  if shape["width"] % shape["num_heads"]:
    raise ConfigError(f"{field}.width = {shape['width']} must be divisible by "
                      f"{field}.num_heads = {shape['num_heads']}")
  shape["mlp_dim"] = int(round(shape["width"] * ratio))
  return shape
