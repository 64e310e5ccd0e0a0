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

Model, loss and optimizer: the emoji demo's small SigLIP dual encoder (configs/demo/emoji.py) at
64 px with 32-token captions; tokenizer "bpe", fitted on the training captions. Evaluations, when
eval_split is set: retrieval on the held-out records, and zero-shot classification by label_key
with the CLIP paper's ImageNet-style prompt "a photo of a {}." when a label is given.
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
      name="tfds", dataset="", data_dir="", train_split="train", eval_split="", image_key="image",
      text_key="", label_key="", caption_templates=("a photo of a {}.",),
      cache_dir="",  # "" -> $CLIP_JAX_CACHE or ~/.cache/clip_jax
      image_size=IMAGE_SIZE, max_len=MAX_LEN, num_eval=5000, max_skip_fraction=0.1,
      tokenizer=dict(name="bpe", vocab_size=VOCAB_SIZE)))
  config.model.towers.text.vocab_size = VOCAB_SIZE
  config.model.towers.text.context_length = MAX_LEN
  apply_config_arg(config, arg, __file__)
  config.evals = ml_collections.ConfigDict()
  if config.data.eval_split:
    config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
    if config.data.label_key:
      config.evals.classes = ml_collections.ConfigDict(dict(
          name="zeroshot_classification", split="heldout", label=config.data.label_key,
          templates=tuple(config.data.caption_templates)))
  return config
