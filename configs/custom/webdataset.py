"""Train on your own images and captions in webdataset tar shards.

  python -m clip_jax.train --workdir /tmp/mine \
      --config 'configs/custom/webdataset.py:train_shards=/data/shard-{00000..00127}.tar'

The part after ":" is comma-separated key=value pairs, each a field of config.data
(train_shards, eval_shards, caption_key, image_size, max_len, num_eval, max_skip_fraction) or a
top-level field (total_steps, batch_size, ...). Give eval_shards here: it also switches on the
retrieval evaluation of the held-out shards. Shard patterns, the sample key rule and the start-up
index scan: `clip_jax.data.webdataset`; bad input: `clip_jax.data.files`. Make shards from a
table or a folder with `python -m clip_jax.data.pack`.

Model, loss, optimizer, image size and tokenizer: configs/custom/csv.py's.
"""

import os

import ml_collections

from clip_jax.config import apply_config_arg, load_config_file

TABLE_FIELDS = ("path", "eval_path", "image_key", "caption_key", "sep")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "csv.py"))
  for name in TABLE_FIELDS:
    del config.data[name]
  config.data.name = "webdataset"
  config.data.train_shards = ""
  config.data.eval_shards = ""
  config.data.caption_key = "caption"
  apply_config_arg(config, arg, __file__)
  config.evals = ml_collections.ConfigDict()
  if config.data.eval_shards:
    config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  return config
