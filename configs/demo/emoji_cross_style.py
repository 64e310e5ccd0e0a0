"""Demo: does the emoji dual encoder transfer to another art style? Train on Google's art, then
evaluate the same checkpoint on Twitter's (Twemoji) art of the same emoji.

Both styles must share one tokenizer, so this variant of configs/demo/emoji.py uses CLIP's BPE
("clip_bpe", a fixed vocabulary of 49,408 ids; its merges file comes from an installed
open_clip_torch: `pip install --no-deps open_clip_torch==3.3.0`, or set
config.data.tokenizer.merges_path) instead of a BPE fitted on one style's captions. Besides the
held-out emoji (names and images never trained on), it evaluates retrieval on the training emoji
("seen": names trained on; in the other style, images never seen).

  python -m clip_jax.train --config configs/demo/emoji_cross_style.py --workdir /tmp/cross
  python -m clip_jax.evaluate --config configs/demo/emoji_cross_style.py --workdir /tmp/cross \\
      --config.data.style=twitter
"""

import os

import ml_collections

from clip_jax.config import load_config_file
from clip_jax.data.tokenizer import CLIP_VOCAB_SIZE


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "emoji.py"))
  config.data.tokenizer = ml_collections.ConfigDict(dict(name="clip_bpe", merges_path=""))
  config.model.towers.text.vocab_size = CLIP_VOCAB_SIZE
  config.evals.seen = ml_collections.ConfigDict(dict(name="retrieval", split="train"))
  return config
