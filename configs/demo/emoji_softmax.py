"""Demo: the emoji dual encoder with the softmax (CLIP, symmetric InfoNCE) loss.

  python -m clip_jax.train --config configs/demo/emoji_softmax.py --workdir /tmp/emoji_softmax
"""

import math
import os

import ml_collections

from clip_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "emoji.py"))
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "softmax"
  config.loss.init_scale = math.log(1 / 0.07)  # t' ; t = exp(t')
  return config
