"""Demo: the emoji dual encoder on the Twitter (Twemoji) art of emoji-datasource-twitter@16.0.0.

The same held-out emoji and texts as configs/demo/emoji.py (Google's art), in Twemoji's art; the
21 training family emoji that Twemoji draws like a held-out one are left out of training
(clip_jax/data/emoji.py).

  python -m clip_jax.train --config configs/demo/emoji_twitter.py --workdir /tmp/emoji_twitter
"""

import importlib.util
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
  config.data.style = "twitter"
  return config
