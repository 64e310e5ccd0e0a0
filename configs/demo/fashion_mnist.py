"""Demo: the emoji demo's SigLIP dual encoder (configs/demo/emoji.py) on Fashion-MNIST.

Needs `apt-get install dataset-fashion-mnist` (the files in /usr/share/datasets/fashion-mnist;
nothing is downloaded at run time). Trains on the 60,000 training images with their class names as
captions ("{}", "a photo of the {}.", "a picture of the {}."; `clip_jax.data.fashion_mnist`) and
evaluates on the 10,000 test images: zero-shot classification into the 10 classes with the same
three templates as a prompt ensemble. No retrieval eval: with 10 distinct texts for 10,000 images,
image -> text R@1 = R@5 = R@10 is classification by the bare name (every wrong class has ~1,000
copies of its text) and text -> image has 10 distinct queries (`clip_jax.evals.retrieval`).

  python -m clip_jax.train --config configs/demo/fashion_mnist.py --workdir /tmp/fm

(add --config.total_steps=100 for a short run).
"""

import os

import ml_collections

from clip_jax.config import load_config_file
from clip_jax.data.fashion_mnist import CAPTION_TEMPLATES, DEFAULT_PATH


def get_config() -> ml_collections.ConfigDict:
  # The emoji demo's model, loss, optimizer and schedule.
  config = load_config_file(os.path.join(os.path.dirname(__file__), "emoji.py"))
  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  config.data.path = DEFAULT_PATH  # the files of Debian's dataset-fashion-mnist
  config.data.cache_dir = ""  # "" -> $CLIP_JAX_CACHE or ~/.cache/clip_jax
  config.data.image_size = 32
  config.data.max_len = 16
  config.data.tokenizer = ml_collections.ConfigDict(dict(name="bpe", vocab_size=1024))

  config.evals = ml_collections.ConfigDict()
  config.evals.heldout_classes = ml_collections.ConfigDict(dict(
      name="zeroshot_classification", split="heldout", label="class",
      templates=CAPTION_TEMPLATES))
  return config
