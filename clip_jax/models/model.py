"""The multi-tower contrastive model, built from `config.model`.

Every modality named under `config.model.towers` gets a tower (looked up by name in TOWERS) that
reads `batch[<modality>]`, then a bias-free projection to `embed_dim`, then L2 normalisation.
Adding a third modality (e.g. `towers.audio = ConfigDict(name="vit", ...)` reading
`batch["audio"]`) is a config change only.

Parameters:

    {<modality>: {"encoder": <tower params>, "projection": {"kernel": [width, embed_dim]}}}

The learnable temperature / bias of the objective are not here (the loss owns them).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models import layers
from clip_jax.models import text as _text  # noqa: F401  (registers "text_transformer")
from clip_jax.models import vit as _vit  # noqa: F401  (registers "vit")
from clip_jax.models.registry import (MODEL_WIDE_FIELDS, REQUIRED, TOWERS, ConfigError,
                                      canonical_dtype, check_bool, tower_fields)

Array = jax.Array

def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  """x / max(||x||, eps) along the last axis, in float32. [..., d] -> [..., d]."""
  x = x.astype(jnp.float32)
  sq_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


def _as_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    return dict(config.to_dict())
  if isinstance(config, Mapping):
    return dict(config)
  raise ConfigError(f"expected a ConfigDict or mapping, got {type(config).__name__}")


def resolve_tower(modality: str, tower_config: Any, dtype: Any = "float32",
                  remat: bool = False) -> tuple[type, dict[str, Any]]:
  """Looks up and checks the tower for `config.model.towers.<modality>`.

  Args:
    modality: the batch key the tower reads.
    tower_config: ConfigDict/mapping with `name` (a registered tower) and the tower's kwargs;
      it may override the model's `dtype` and `remat` for this tower.
    dtype: the model's compute dtype (used unless the tower config sets its own).
    remat: the model's remat flag (used unless the tower config sets its own).

  Returns:
    (tower class, kwargs) such that `cls(**kwargs)` builds the tower.

  Raises:
    ConfigError naming `config.model.towers.<modality>.<field>` for an unknown tower name, an
    unknown or missing kwarg, or an invalid value.
  """
  field = f"config.model.towers.{modality}"
  kwargs = _as_dict(tower_config)
  if "name" not in kwargs:
    raise ConfigError(f"{field}.name is missing; choose one of: {', '.join(TOWERS.names())}")
  name = kwargs.pop("name")
  tower_cls = TOWERS.get(name, field=f"{field}.name")
  declared = tower_fields(tower_cls)
  allowed = [*declared, *MODEL_WIDE_FIELDS]
  for key in kwargs:
    if key not in allowed:
      close = difflib.get_close_matches(key, allowed, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(
          f"{field}.{key} is not a parameter of tower {name!r}{hint}; allowed fields: "
          f"{', '.join(allowed)}")
  kwargs.setdefault("dtype", dtype)
  kwargs.setdefault("remat", remat)
  kwargs["dtype"] = canonical_dtype(kwargs["dtype"], f"{field}.dtype")
  check_bool(kwargs["remat"], f"{field}.remat")
  missing = [n for n, default in declared.items() if n not in kwargs and default is REQUIRED]
  if missing:
    raise ConfigError(f"{field} is missing required field(s) of tower {name!r}: "
                      f"{', '.join(f'{field}.{n}' for n in missing)}")
  if "config_field" in {f.name for f in dataclasses.fields(tower_cls)}:
    kwargs["config_field"] = field
  check_config = getattr(tower_cls, "check_config", None)
  if check_config is not None:
    check_config(kwargs, field)
  return tower_cls, kwargs


class _ModalityEmbedder(nn.Module):
  """Tower ("encoder") + bias-free projection ("projection") + L2 norm, for one modality."""

  tower_cls: type
  tower_kwargs: tuple[tuple[str, Any], ...]
  embed_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, inputs: Array, train: bool) -> Array:
    features = self.tower_cls(**dict(self.tower_kwargs), name="encoder")(inputs, train=train)
    projected = layers.dense(self.embed_dim, self.dtype, "projection", use_bias=False)(features)
    return l2_normalize(projected)


class MultiTower(nn.Module):
  """One tower per modality, projected to a shared `embed_dim` and L2-normalised.

  Attributes:
    embed_dim: size of the shared embedding space.
    towers: {modality: tower config (a mapping with `name` and the tower's kwargs)}. The
      modality is the batch key the tower reads.
    dtype: compute dtype ("float32" | "bfloat16"); params are float32, outputs float32.
    remat: rematerialise every transformer block (towers may override).
  """

  embed_dim: int
  towers: Mapping[str, Mapping[str, Any]]
  dtype: Any = "float32"
  remat: bool = False

  def __call__(self, batch: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
    """Embeds every modality of the model.

    Args:
      batch: {modality: inputs}, e.g. "image" float32 [B, H, W, 3], "text" int32 [B, L] (pad 0).
        Keys that are not modalities of the model (e.g. "instance_id") are ignored. Under a mesh
        the batch dimension is sharded over the batch axes (e.g. ("data", "fsdp")).
      train: training mode (passed to the towers).

    Returns:
      {modality: [B, embed_dim] float32, L2-normalised}.
    """
    missing = [m for m in self.towers if m not in batch]
    if missing:
      raise ConfigError(
          f"the batch has no {', '.join(map(repr, missing))} entry but config.model.towers "
          f"defines tower(s) for it; batch keys: {', '.join(map(repr, batch))}")
    return {m: self.embed(batch[m], m, train=train) for m in self.towers}

  @nn.compact
  def embed(self, inputs: Array, modality: str, *, train: bool = False) -> Array:
    """Embeds one modality: inputs [B, ...] -> [B, embed_dim] float32, L2-normalised."""
    if modality not in self.towers:
      raise ConfigError(f"{modality!r} is not a modality of the model; config.model.towers has: "
                        f"{', '.join(self.towers)}")
    dtype = canonical_dtype(self.dtype, "config.model.dtype")
    tower_cls, kwargs = resolve_tower(modality, self.towers[modality], dtype, self.remat)
    return _ModalityEmbedder(tower_cls, tuple(kwargs.items()), self.embed_dim, kwargs["dtype"],
                             name=modality)(inputs, train)


def make_model(model_config: Any) -> MultiTower:
  """Builds the MultiTower model from `config.model`, checking the whole config at start-up.

  Args:
    model_config: ConfigDict with embed_dim, dtype ("float32" | "bfloat16"), remat (bool) and
      towers ({modality: ConfigDict(name=<registered tower>, **tower kwargs)}).

  Raises:
    ConfigError naming the offending field (e.g. `config.model.towers.image.pooling`) and the
    allowed values.
  """
  config = _as_dict(model_config)
  for key in config:
    if key not in ("embed_dim", "dtype", "remat", "towers"):
      raise ConfigError(f"config.model.{key} is not a model field; allowed fields: embed_dim, "
                        "dtype, remat, towers")
  embed_dim = config.get("embed_dim")
  if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0:
    raise ConfigError(f"config.model.embed_dim = {embed_dim!r} must be a positive integer")
  dtype = canonical_dtype(config.get("dtype", "float32"), "config.model.dtype")
  remat = config.get("remat", False)
  check_bool(remat, "config.model.remat")
  towers = config.get("towers")
  if not isinstance(towers, Mapping) or not towers:
    raise ConfigError("config.model.towers must map at least one modality to a tower config "
                      f"(ConfigDict(name=...)); got {towers!r}")
  for modality, tower_config in towers.items():
    if not isinstance(tower_config, Mapping):
      raise ConfigError(f"config.model.towers.{modality} must be a ConfigDict(name=..., ...), "
                        f"got {tower_config!r}")
    resolve_tower(modality, tower_config, dtype, remat)  # Fails here, at start-up.
  return MultiTower(embed_dim=embed_dim, towers={m: dict(t) for m, t in towers.items()},
                    dtype=config.get("dtype", "float32"), remat=remat)
