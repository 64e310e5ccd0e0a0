"""Train on (or evaluate on) folders of class subfolders, ImageNet's layout.

  python -m clip_jax.train --workdir /tmp/folders \
      --config configs/custom/image_folder.py:path=data/train,eval_path=data/val

The part after ":" is comma-separated key=value pairs, each a field of config.data (path,
eval_path, image_size, max_len, num_eval, max_skip_fraction) or a top-level field (total_steps,
batch_size, ...). Captions are the class names in "a photo of a {}." (config.data.
caption_templates). With eval_path: zero-shot classification of the held-out images into the
classes, with the same templates. The rules: `clip_jax.data.image_folder`.

Model, loss, optimizer, image size and tokenizer: configs/custom/csv.py's (the emoji demo's
small SigLIP dual encoder at 64 px with 32-token captions; "bpe" fitted on the training
captions).
"""

import os

import ml_collections

from clip_jax.config import apply_config_arg, load_config_file

TABLE_FIELDS = ("path", "eval_path", "image_key", "caption_key", "sep")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # configs/custom/csv.py's model, tokenizer, image size and training, with class folders.
  config = load_config_file(os.path.join(os.path.dirname(__file__), "csv.py"))
  for name in TABLE_FIELDS:
    del config.data[name]
  config.data.update(name="image_folder", path="", eval_path="",
                     caption_templates=("a photo of a {}.",))
  apply_config_arg(config, arg, __file__)
  config.evals = ml_collections.ConfigDict()
  if config.data.eval_path:
    config.evals.classes = ml_collections.ConfigDict(dict(
        name="zeroshot_classification", split="heldout", label="class",
        templates=tuple(config.data.caption_templates)))
  return config
