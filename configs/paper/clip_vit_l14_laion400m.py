"""CLIP ViT-L/14 on LAION-400M: open_clip's `laion400m_e32` run, 72.77 % ImageNet zero-shot top-1.

Source: open_clip docs/PRETRAINED.md, "LAION-400M / ViT-L/14 224x224": 400 A100-40GB, 96 per
GPU, a global batch of 38,400, 32 epochs, gradient checkpointing on (here `remat=True`),
72.77 %. Everything else, the arguments and what has no clip_jax equivalent:
configs/paper/clip_vit_b32_laion400m.py. Parameters: 427,616,513 (open_clip's count).

  python -m clip_jax.train --dry_run --target=v4-512 \\
      --config configs/paper/clip_vit_l14_laion400m.py
"""

import os

import ml_collections

from clip_jax.config import load_config_module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  b32 = load_config_module(os.path.join(os.path.dirname(__file__), "clip_vit_b32_laion400m.py"))
  config = b32.clip_config("ViT-L-14", 38_400, b32.EPOCHS * b32.EPOCH, remat=True)
  return b32.finish(config, arg, __file__)
