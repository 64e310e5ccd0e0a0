"""clip_jax: large-batch contrastive image-text (and more-modality) training in JAX."""

__version__ = "0.1.0"
