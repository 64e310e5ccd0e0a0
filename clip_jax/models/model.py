"""The multi-tower contrastive model (Flax NNX), built from `config.model`.

Every modality named under `config.model.towers` gets a tower (a registered NNX module, built
eagerly from its config section) that reads `batch[<modality>]`, then a bias-free projection to
`embed_dim`, then L2 normalisation. Adding a third modality (e.g. `towers.audio =
ConfigDict(name="vit", ...)` reading `batch["audio"]`) is a config change only.

    spec = parse_model_config(config.model)          # start-up: every field checked
    model = MultiTower(spec, {"image": images, "text": tokens}, rngs=nnx.Rngs(0))
    graphdef, params = split_params(model)            # params: a plain dict of arrays
    embeddings = nnx.merge(graphdef, params)(batch)   # e.g. in jax.jit: {modality: [B, d]}

Parameters (`params`):

    {<modality>: {"encoder": <tower params>, "projection": {"kernel": [width, embed_dim]}}}

The learnable temperature / bias of the objective are not here (the loss owns them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.models import bert as _bert  # noqa: F401  (registers "bert")
from clip_jax.models import layers
from clip_jax.models import text as _text  # noqa: F401  (registers "text_transformer")
from clip_jax.models import vit as _vit  # noqa: F401  (registers "vit")
from clip_jax import schema
from clip_jax.models.registry import TOWERS, ConfigError, canonical_dtype

Array = jax.Array


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  """x / max(||x||, eps) along the last axis, in float32. [..., d] -> [..., d]."""
  x = x.astype(jnp.float32)
  sq_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


@dataclasses.dataclass(frozen=True)
class TowerSpec:
  """A checked `config.model.towers.<modality>` section.

  Attributes:
    name: the registered tower name. cls: its class.
    kwargs: the constructor's keyword arguments: the section's fields, declared defaults filled
      in, and `dtype` (a jnp dtype), `remat`, `remat_policy` (a name in
      `layers.REMAT_POLICIES`) and `attention_impl` (None or a name in `layers.ATTENTION_IMPLS`).
    field: "config.model.towers.<modality>", named in errors.
  """

  name: str
  cls: type
  kwargs: dict[str, Any]
  field: str

  def build(self, inputs: jax.ShapeDtypeStruct, rngs: nnx.Rngs) -> nnx.Module:
    """The tower for batch entries shaped like `inputs` [B, ...].

    Raises:
      ConfigError naming the field for inputs the tower cannot take (e.g. an image size its
      patch size does not divide) and for `attention_impl = "cudnn"` when JAX's default backend
      is not a GPU; TypeError for a tower class without `out_features`.
    """
    if self.kwargs["attention_impl"] == "cudnn" and jax.default_backend() != "gpu":
      raise ConfigError(
          f"{self.field}.attention_impl = 'cudnn' (or config.model.attention_impl) needs a GPU; "
          f"JAX's backend here is {jax.default_backend()!r}: leave attention_impl unset (None) "
          "or set 'xla'")
    check_inputs = getattr(self.cls, "check_inputs", None)
    if check_inputs is not None:
      check_inputs(self.kwargs, self.field, inputs)
    tower = self.cls(inputs, **self.kwargs, rngs=rngs)
    if not isinstance(getattr(tower, "out_features", None), int):
      raise TypeError(f"tower {self.name!r} ({self.cls.__name__}) must set an int attribute "
                      "`out_features`, the width of its features")
    return tower


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A checked `config.model`: the shared embedding size and the towers by modality (in config
  order)."""

  embed_dim: int
  towers: dict[str, TowerSpec]


def resolve_tower(modality: str, tower_config: Any, dtype: Any = "float32",
                  remat: bool = False, remat_policy: str | None = None,
                  attention_impl: str | None = None) -> TowerSpec:
  """Looks up and checks the tower for `config.model.towers.<modality>`.

  Args:
    modality: the batch key the tower reads.
    tower_config: ConfigDict/mapping with `name` (a registered tower) and the tower's fields;
      it may override any of the model's `dtype`, `remat`, `remat_policy` and `attention_impl`
      for this tower.
    dtype, remat, remat_policy, attention_impl: the model's (`ModelFields`), used unless the
      tower config sets its own.

  Raises:
    ConfigError naming `config.model.towers.<modality>.<field>` for an unknown tower name, an
    unknown or missing field, or an invalid value; naming the fields that clash (the tower's or
    the model's, whichever set them) for a remat policy without remat, or attention_impl
    "cudnn" with a float32 compute dtype.
  """
  field = f"config.model.towers.{modality}"
  name = TOWERS.select(tower_config, field)
  fields = TOWERS.parse(tower_config, field)
  kwargs = {f.name: getattr(fields, f.name) for f in dataclasses.fields(fields)}
  model_values = dict(dtype=dtype, remat=remat, remat_policy=remat_policy,
                      attention_impl=attention_impl)
  # Where each model-wide value comes from, for errors: the tower's field or the model's.
  source = {key: f"{field}.{key}" if kwargs[key] is not None else f"config.model.{key}"
            for key in model_values}
  for key, value in model_values.items():
    if kwargs[key] is None:
      kwargs[key] = value
  kwargs["dtype"] = canonical_dtype(kwargs["dtype"], source["dtype"])
  kwargs["remat"] = schema.boolean()(kwargs["remat"], source["remat"])
  if kwargs["remat_policy"] is None:
    kwargs["remat_policy"] = layers.REMAT_POLICY
  elif not kwargs["remat"] and kwargs["remat_policy"] != layers.REMAT_POLICY:
    raise ConfigError(
        f"{source['remat_policy']} = {kwargs['remat_policy']!r} applies only to rematerialised "
        f"blocks, but {source['remat']} = False; set {source['remat']} = True or leave "
        f"{source['remat_policy']} unset")
  if kwargs["attention_impl"] == "cudnn" and kwargs["dtype"] != jnp.bfloat16:
    raise ConfigError(
        f"{source['attention_impl']} = 'cudnn' needs a bfloat16 compute dtype (cuDNN's fused "
        f"attention takes no float32), but {source['dtype']} = "
        f"{jnp.dtype(kwargs['dtype']).name!r}; set it to 'bfloat16', or attention_impl to "
        "'xla'")
  return TowerSpec(name, TOWERS.get(name), kwargs, field)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFields:
  """The fields of `config.model` (its towers are read against their own schemas).

  Attributes:
    embed_dim: the shared embedding size every tower is projected to.
    dtype: the compute dtype ("float32" | "bfloat16"; params are float32), unless a tower
      sets its own.
    remat: rematerialise every tower's blocks in the backward pass, unless a tower sets its own.
    remat_policy: what a rematerialised block saves for the backward pass (a name in
      `layers.REMAT_POLICIES`; None: "full", only the block's input), unless a tower sets its
      own. Needs remat.
    attention_impl: `jax.nn.dot_product_attention`'s implementation, "xla" or "cudnn" (GPU and
      bfloat16 only); None: JAX's choice (XLA's). Unless a tower sets its own.
    towers: {modality: ConfigDict(name=<registered tower>, **its fields)}.
  """

  embed_dim: int = schema.field(check=schema.integer(low=1))
  dtype: Any = schema.field("float32", canonical_dtype)
  remat: bool = False
  remat_policy: str | None = schema.field(None, schema.one_of(*layers.REMAT_POLICIES))
  attention_impl: str | None = schema.field(None, schema.one_of(*layers.ATTENTION_IMPLS))
  towers: Any = schema.field()


def parse_model_config(model_config: Any) -> ModelSpec:
  """Checks the whole `config.model` at start-up, before any input shape is known.

  Args:
    model_config: ConfigDict with embed_dim, dtype ("float32" | "bfloat16"), remat (bool),
      remat_policy, attention_impl (`ModelFields`) and towers ({modality:
      ConfigDict(name=<registered tower>, **tower fields)}).

  Raises:
    ConfigError naming the offending field (e.g. `config.model.towers.image.pooling`) and the
    allowed values.
  """
  model = schema.parse(ModelFields, model_config, "config.model", owner="the model")
  towers = model.towers
  if not hasattr(towers, "items") or not towers:
    raise ConfigError("config.model.towers must map at least one modality to a tower config "
                      f"(ConfigDict(name=...)); got {towers!r}")
  specs = {}
  for modality, tower_config in towers.items():
    if (not modality.isidentifier() or modality.startswith("_")
        or hasattr(MultiTower, modality) or modality == "modalities"):
      raise ConfigError(f"config.model.towers.{modality}: the modality name must be a Python "
                        "identifier that is not an attribute of the model (e.g. 'image', "
                        "'text', 'audio')")
    specs[modality] = resolve_tower(modality, tower_config, model.dtype, model.remat,
                                    model.remat_policy, model.attention_impl)
  return ModelSpec(model.embed_dim, specs)


class ModalityEmbedder(nnx.Module):
  """Tower ("encoder") + bias-free projection ("projection") + L2 norm, for one modality.

  [B, ...] -> [B, embed_dim] float32, L2-normalised.
  """

  def __init__(self, modality: str, encoder: nnx.Module, embed_dim: int, dtype: Any, *,
               rngs: nnx.Rngs):
    self.modality = modality
    self.encoder = encoder
    self.projection = layers.dense(encoder.out_features, embed_dim, dtype, rngs, use_bias=False)

  def __call__(self, inputs: Array, rngs: nnx.Rngs | None = None) -> Array:
    return l2_normalize(self.projection(self.encoder(inputs, rngs=rngs)))


class MultiTower(nnx.Module):
  """One tower per modality, projected to a shared `embed_dim` and L2-normalised.

  Each modality's `ModalityEmbedder` is the attribute of that name, so parameter paths start
  with the modality.

  Args:
    spec: the checked `config.model` (`parse_model_config`).
    inputs: {modality: an array or `jax.ShapeDtypeStruct` shaped like that batch entry,
      [B, ...] (B is not used)}, e.g. image float32 [1, 224, 224, 3], text int32 [1, 77].
    rngs: the `params` stream draws the initial parameters.

  Raises:
    ConfigError naming the field for a modality missing from `inputs` or inputs a tower cannot
    take.
  """

  def __init__(self, spec: ModelSpec, inputs: Mapping[str, Any], *, rngs: nnx.Rngs):
    self.modalities = tuple(spec.towers)
    missing = [m for m in self.modalities if m not in inputs]
    if missing:
      raise ConfigError(
          f"config.model.towers.{missing[0]} reads the batch entry {missing[0]!r}, which the "
          f"inputs do not have (they have {sorted(inputs)})")
    for modality, tower in spec.towers.items():
      x = inputs[modality]
      encoder = tower.build(jax.ShapeDtypeStruct(x.shape, x.dtype), rngs)
      setattr(self, modality, ModalityEmbedder(modality, encoder, spec.embed_dim,
                                               tower.kwargs["dtype"], rngs=rngs))

  def __call__(self, batch: Mapping[str, Array], *,
               rng: jax.Array | None = None) -> dict[str, Array]:
    """Embeds every modality of the model.

    Args:
      batch: {modality: inputs}, e.g. "image" float32 [B, H, W, 3], "text" int32 [B, L] (pad 0).
        Keys that are not modalities of the model (e.g. "instance_id") are ignored. Under a mesh
        the batch dimension is sharded over the batch axes (e.g. ("data", "fsdp")).
      rng: a PRNG key for the towers' stochastic layers (training), or None (deterministic, as
        in evaluation); see `embed`.

    Returns:
      {modality: [B, embed_dim] float32, L2-normalised}.
    """
    missing = [m for m in self.modalities if m not in batch]
    if missing:
      raise ConfigError(
          f"the batch has no {', '.join(map(repr, missing))} entry but config.model.towers "
          f"defines tower(s) for it; batch keys: {', '.join(map(repr, batch))}")
    return {m: self.embed(batch[m], m, rng=rng) for m in self.modalities}

  def embed(self, inputs: Array, modality: str, *, rng: jax.Array | None = None) -> Array:
    """Embeds one modality: inputs [B, ...] -> [B, embed_dim] float32, L2-normalised.

    Args:
      rng: None, or a PRNG key: the tower then gets `nnx.Rngs(fold_in(rng, i))`, i the
        modality's index in the config, so every tower draws its own numbers and the same key
        gives the same numbers whether the towers run together or one at a time.
    """
    if modality not in self.modalities:
      raise ConfigError(f"{modality!r} is not a modality of the model; config.model.towers has: "
                        f"{', '.join(self.modalities)}")
    rngs = None
    if rng is not None:
      rngs = nnx.Rngs(jax.random.fold_in(rng, self.modalities.index(modality)))
    return getattr(self, modality)(inputs, rngs)


def split_params(model: MultiTower) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """(graphdef, params) of `model`: `params` is the plain nested dict of its `nnx.Param` arrays
  (the layout in the module docstring), and `nnx.merge(graphdef, params)` rebuilds the model.

  Raises:
    TypeError naming the paths of variables that are not `nnx.Param` (a tower must not keep
    other state, e.g. an RNG stream: random numbers come in through the call).
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  others = ["/".join(map(str, path)) for path, _ in nnx.to_flat_state(rest)]
  if others:
    raise TypeError(f"the towers hold variables other than nnx.Param: {', '.join(others)}; "
                    "keep only parameters in a tower and take random numbers from the `rngs` "
                    "of its call")
  return graphdef, nnx.to_pure_dict(params)


def abstract_model(spec: ModelSpec, inputs: Mapping[str, Any]) -> MultiTower:
  """`MultiTower(spec, inputs)` built abstractly (`nnx.eval_shape`): its parameters are
  `jax.ShapeDtypeStruct`s and nothing is allocated. For the model's structure (`nnx.graphdef`)
  and parameter shapes."""
  return nnx.eval_shape(lambda: MultiTower(spec, inputs, rngs=nnx.Rngs(0)))


def make_model(model_config: Any, inputs: Mapping[str, Any], *, rngs: nnx.Rngs) -> MultiTower:
  """`MultiTower(parse_model_config(model_config), inputs, rngs=rngs)`: checks `config.model`
  and builds the model eagerly for batch entries shaped like `inputs`."""
  return MultiTower(parse_model_config(model_config), inputs, rngs=rngs)
