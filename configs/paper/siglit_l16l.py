"""SigLiT L16L: LiT with the sigmoid loss (Zhai et al. 2023, arXiv:2303.15343, Section 4.1,
"SigLiT"): a locked, pre-trained ViT-L/16 image tower and an L-sized text transformer trained
from scratch with the sigmoid loss.

The paper's SigLiT results lock a pre-trained image tower and train the text tower at large
batch (its SigLiT table/figure: batch up to 1M with g/14 image towers and Adafactor); this config
is the L16L shape with the SigLIP recipe of configs/paper/siglip_b16_webli.py (sigmoid loss from
t' = log 10, b = -10, AdamW lr 1e-3, weight decay 1e-4, b2 = 0.95) at batch 32,768 and the
image tower locked. The image tower's pre-training (ViT-L/16, class token) comes in through
`init_from` (":" argument, as in configs/paper/lit_b16b.py); the shape, batch and length here
are assumptions, not numbers read from the paper in this repository.

  python -m clip_jax.train --dry_run --target=v5p-128 --config configs/paper/siglit_l16l.py

No clip_jax equivalent: Adafactor, the paper's chunked sigmoid implementation (same math here).
"""

import os

import ml_collections

from clip_jax.config import load_config_module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  siglip = load_config_module(os.path.join(os.path.dirname(__file__), "siglip_b16_webli.py"))
  config = siglip.siglip_config(32_768, 3_000_000_000)
  config.model.embed_dim = 1024
  config.model.remat = True
  config.model.towers.image = ml_collections.ConfigDict(dict(
      name="vit", variant="L/16", pooling="cls"))
  config.model.towers.text = ml_collections.ConfigDict(dict(
      name="text_transformer", variant="H", vocab_size=32_000, context_length=16,
      causal=False, pooling="last"))
  config.optim.freeze = (r"^model/image/encoder/.*",)
  config.init_from = ""
  config.init_from_rules = ((r"^model/image/encoder/", "load"), (r".*", "init"))
  return siglip.finish(config, arg, __file__)
