"""Demo: the emoji dual encoder on the Twitter (Twemoji) art of emoji-datasource-twitter@16.0.0.

The same held-out emoji and texts as configs/demo/emoji.py (Google's art), in Twemoji's art; the
21 training family emoji that Twemoji draws like a held-out one are left out of training
(clip_jax/data/emoji.py).

  python -m clip_jax.train --config configs/demo/emoji_twitter.py --workdir /tmp/emoji_twitter
"""

import os

import ml_collections

from clip_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "emoji.py"))
  config.data.style = "twitter"
  return config
