"""Demo: the emoji dual encoder with the softmax (CLIP, symmetric InfoNCE) loss.

  python -m clip_jax.train --config configs/demo/emoji_softmax.py --workdir /tmp/emoji_softmax
"""

import importlib.util
import math
import os

import ml_collections


def _load_sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_clip_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config() -> ml_collections.ConfigDict:
  config = _load_sibling("emoji").get_config()
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "softmax"
  config.loss.init_scale = math.log(1 / 0.07)  # t' ; t = exp(t')
  return config
