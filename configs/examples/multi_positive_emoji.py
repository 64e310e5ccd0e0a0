"""Example: the emoji dual encoder with two captions per emoji and the multi-positive loss.

With `config.data.captions_per_example = 2` each emoji drawn for a batch fills two rows: two
different captions of it (its name and a short name, or two short names; emoji with one caption
repeat it) with the same image or two of its skin-tone variants, and both rows carry the same
`instance_id`. The multi-positive decoupled softmax (Gupta et al., ICLR 2024) treats rows with
equal ids as positives of each other and keeps them out of each other's denominators. The global
batch of 256 rows holds 128 emoji.

  python -m clip_jax.train --config configs/examples/multi_positive_emoji.py \
      --workdir /tmp/multi_positive_emoji
  python -m clip_jax.train --config configs/examples/multi_positive_emoji.py --workdir /tmp/x \
      --config.total_steps=20
"""

import math
import os

import ml_collections

from clip_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
  # configs/demo/emoji.py: data, model, optim, evals
  config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "demo", "emoji.py"))
  config.data.captions_per_example = 2  # config.batch_size must be a multiple
  # Warm up for a tenth of the run, also when --config.total_steps changes it.
  config.optim.warmup_steps = config.get_ref("total_steps") // 10
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "multi_positive"
  config.loss.modalities = ("image", "text")
  config.loss.id_key = "instance_id"  # the batch key the pipeline fills
  config.loss.init_scale = math.log(1 / 0.07)  # t' ; t = exp(t')
  config.loss.learn_scale = True
  return config
