"""DataComp small track (Gadre et al. 2023, "DataComp: In search of the next generation of
multimodal datasets", Table 2 / Appendix, the "small" scale): ViT-B/32 CLIP trained on the
filtered pool for 12.8 M samples seen at batch 4,096 (3,125 steps), AdamW lr 5e-4, weight
decay 0.2, 500 warm-up steps, cosine (the DataComp training defaults for this scale).

  python -m clip_jax.train --workdir /runs/dc_small \\
      --config 'configs/paper/datacomp_small_b32.py:data=/data/dc_small/{00000000..00001287}.tar'

The ":" argument as in configs/paper/clip_vit_b32_laion400m.py (`data`, `eval_data`, fields of
config.data / config); model, loss and optimiser details are that file's (open_clip's ViT-B-32).
No clip_jax equivalent: DataComp's 38-dataset evaluation suite (evaluate ImageNet with an
`image_folder` config, README "Class folders"; the other datasets through `clip_jax.evaluate`
with their own configs) and the pool filtering itself (done before packing the shards).
"""

import os

import ml_collections

from clip_jax.config import load_config_module

BATCH = 4_096
SAMPLES = 12_800_000


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  b32 = load_config_module(os.path.join(os.path.dirname(__file__), "clip_vit_b32_laion400m.py"))
  config = b32.clip_config("ViT-B-32", BATCH, SAMPLES, remat=False)
  config.optim.warmup_steps = 500
  config.eval_every_steps = 1_000
  config.ckpt_every_steps = 1_000
  return b32.finish(config, arg, __file__)
