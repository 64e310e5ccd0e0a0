"""The emoji demo (configs/demo/emoji.py) with every evaluator: for evaluating a demo checkpoint
the standard ways.

  python -m clip_jax.evaluate --workdir /tmp/emoji_demo --config configs/demo/emoji_all_evals.py

- heldout: retrieval on the held-out emoji (R@1/5/10, ranks, modality gap, alignment,
  uniformity; pictures: the query grid and the 2-D projection);
- heldout_categories: zero-shot classification of the held-out emoji into the 9 categories
  (6-template ensemble; picture: the confusion matrix);
- fewshot: ridge probes with 1, 5, 10 and 25 training emoji per category, tested on the
  held-out emoji;
- probe: the CLIP paper's logistic-regression probe on all training emoji, C picked on a
  fifth of them, tested on the held-out emoji.
"""

import os

import ml_collections

from clip_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "emoji.py"))
  config.evals.fewshot = ml_collections.ConfigDict(dict(
      name="fewshot_linear", train_split="train", test_split="heldout", label="category",
      shots=(1, 5, 10, 25)))
  config.evals.probe = ml_collections.ConfigDict(dict(
      name="linear_probe", train_split="train", test_split="heldout", label="category"))
  return config
