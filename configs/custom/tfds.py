"""Train on a TensorFlow Datasets dataset by name (prepared in the ArrayRecord format).

  python -m clip_jax.train --workdir /tmp/coco \
      --config configs/custom/tfds.py:dataset=coco_captions,text_key=captions/text,eval_split=val
  python -m clip_jax.train --workdir /tmp/cifar \
      --config configs/custom/tfds.py:dataset=cifar10,label_key=label,eval_split=test

The part after ":" is comma-separated key=value pairs, each a field of config.data (dataset,
data_dir, train_split, eval_split, image_key, text_key, label_key, image_size, max_len, num_eval,
max_skip_fraction) or a top-level field (total_steps, batch_size, ...). Prepare the dataset first
(`tfds build coco_captions --file_format=array_record`; TensorFlow is needed to prepare most
datasets, not to train). The rules: `clip_jax.data.tfds_source`; bad input: `clip_jax.data.files`.

Model, loss, optimizer, image size and tokenizer: configs/custom/csv.py's (the emoji demo's
small SigLIP dual encoder at 64 px with 32-token captions; "bpe" fitted on the training
captions). Evaluations, when eval_split is set: retrieval on the held-out records when they have
captions (text_key), and zero-shot classification by label_key in caption_templates when a label
is given.
"""

import os

import ml_collections

from clip_jax.config import apply_config_arg, load_config_file

TABLE_FIELDS = ("path", "eval_path", "image_key", "caption_key", "sep")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # configs/custom/csv.py's model, tokenizer, image size and training, with a TFDS data section.
  config = load_config_file(os.path.join(os.path.dirname(__file__), "csv.py"))
  for name in TABLE_FIELDS:
    del config.data[name]
  config.data.update(name="tfds", dataset="", data_dir="", train_split="train", eval_split="",
                     image_key="image", text_key="", label_key="",
                     caption_templates=("a photo of a {}.",))
  apply_config_arg(config, arg, __file__)
  config.evals = ml_collections.ConfigDict()
  if config.data.eval_split and config.data.text_key:
    config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  if config.data.eval_split and config.data.label_key:
    config.evals.classes = ml_collections.ConfigDict(dict(
        name="zeroshot_classification", split="heldout", label=config.data.label_key,
        templates=tuple(config.data.caption_templates)))
  return config
