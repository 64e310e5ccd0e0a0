"""Train on your own images and captions listed in a table (CSV, TSV or JSON Lines).

  python -m clip_jax.train --workdir /tmp/mine \
      --config configs/custom/csv.py:path=data/train.csv,eval_path=data/val.csv

The part after ":" is comma-separated key=value pairs, each a field of config.data (path,
eval_path, image_key, caption_key, sep, image_size, max_len, num_eval, max_skip_fraction) or a
top-level field (total_steps, batch_size, ...); `--config.<field>=` overrides work as for every
config. Give eval_path here (not as --config.data.eval_path): it also switches on the retrieval
evaluation of the held-out table. The table's format, columns and path rules:
`clip_jax.data.table`; bad input: `clip_jax.data.files`.

Model, loss and optimizer: the emoji demo's small SigLIP dual encoder (configs/demo/emoji.py) at
64 px with 32-token captions. Tokenizer: "bpe", fitted on the training captions (offline).
"""

import os

import ml_collections

from clip_jax.config import apply_config_arg, load_config_file

IMAGE_SIZE = 64
MAX_LEN = 32
VOCAB_SIZE = 4096


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # The emoji demo's model, loss, optimizer and schedule.
  config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "demo", "emoji.py"))
  config.data = ml_collections.ConfigDict(dict(
      name="csv", path="", eval_path="", image_key="filepath", caption_key="title", sep="",
      cache_dir="",  # "" -> $CLIP_JAX_CACHE or ~/.cache/clip_jax
      image_size=IMAGE_SIZE, max_len=MAX_LEN, num_eval=5000, max_skip_fraction=0.1,
      tokenizer=dict(name="bpe", vocab_size=VOCAB_SIZE)))
  config.model.towers.text.vocab_size = VOCAB_SIZE
  config.model.towers.text.context_length = MAX_LEN
  apply_config_arg(config, arg, __file__)
  config.evals = ml_collections.ConfigDict()
  if config.data.eval_path:
    config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  return config
