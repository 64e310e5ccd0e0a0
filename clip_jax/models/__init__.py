"""Config-driven towers (registered by name in TOWERS, built eagerly as Flax NNX modules) and the
multi-tower contrastive model."""

from clip_jax.models.model import (ModelSpec, MultiTower, abstract_model, make_model,
                                   parse_model_config, split_params)
from clip_jax.models.registry import TOWERS

__all__ = ["ModelSpec", "MultiTower", "TOWERS", "abstract_model", "make_model",
           "parse_model_config", "split_params"]
