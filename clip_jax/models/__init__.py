"""Config-driven towers (looked up by name in TOWERS) and the multi-tower contrastive model."""

from clip_jax.models.model import MultiTower, make_model
from clip_jax.models.registry import TOWERS

__all__ = ["MultiTower", "TOWERS", "make_model"]
