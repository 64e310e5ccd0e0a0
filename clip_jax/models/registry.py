"""The registry of towers (encoders), selected by `config.model.towers.<modality>.name`.

A tower is a `flax.linen.Module` class. The model builds it as
`cls(**tower_config_without_name, dtype=compute_dtype, remat=bool)` and calls it as
`tower(inputs, train=...)`, returning unnormalised features `[B, width]` (float32). The model then
projects them to the shared embedding size and L2-normalises them.
"""

from clip_jax.registry import Registry

TOWERS: Registry[type] = Registry("tower", "config.model.towers.<modality>.name")
