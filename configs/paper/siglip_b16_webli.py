"""SigLIP B/16 on WebLI (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

Reproduces the recipe of the paper's SigLIP B/16 at 224 px (Section 4 and Table 3 of
arXiv:2303.15343): ViT-B/16 image tower with MAP-head pooling, a B-sized text transformer (width
768, 12 layers), 16 text tokens from a 32k SentencePiece vocabulary, the sigmoid loss started at
t' = log 10 and b = -10 (Section 3.3), batch 32,768, AdamW with lr 1e-3, weight decay 1e-4 and
b2 = 0.95 (the paper's stable-training settings), cosine decay. Examples seen: 9 B here;
the paper reports runs of several lengths, so set `total_steps` for the one you compare with;
the batch, schedule length and warm-up are not verified against the paper in this repository.
big_vision's configs/proj/image_text/siglip_lit_coco.py is the public minimal example (LiT on
COCO) and uses the same loss and 16 tokens.

  DATA='gs://bucket/pairs/{00000..99999}.tar' TOK=/models/spm32k.model
  python -m clip_jax.train --workdir gs://bucket/siglip \\
      --config "configs/paper/siglip_b16_webli.py:data=$DATA,tokenizer=$TOK"

The ":" argument: `data` (webdataset shards of image-text pairs; WebLI itself is not public),
`eval_data` (held-out shards: retrieval evaluation), `tokenizer` (the SentencePiece model file),
and fields of config.data / config (e.g. `batch_size=4096`).

No clip_jax equivalent: WebLI's multilingual filtering and the paper's chunked TPU sigmoid
implementation (clip_jax's sigmoid loss all-gathers or rings over the batch axes, the same
math); Adafactor (used in the paper for large models; this B/16 uses AdamW).
"""

import math

import ml_collections

from clip_jax.config import apply_config_arg, split_config_arg

OWN_KEYS = ("data", "eval_data", "tokenizer")


def siglip_config(batch_size: int, examples: int) -> ml_collections.ConfigDict:
  """SigLIP B/16 at 224 px with 16 SentencePiece tokens, trained from scratch."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = batch_size
  config.total_steps = examples // batch_size
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.ckpt_every_steps = 5_000
  config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  config.batch_axes = ("data", "fsdp")
  config.sharding_rules = ((".*", "fsdp"),)
  config.data = ml_collections.ConfigDict(dict(
      name="webdataset", train_shards="", eval_shards="", caption_key="caption", cache_dir="",
      num_eval=5_000, max_skip_fraction=0.1, image_size=224, max_len=16,
      preprocess=dict(normalize="minus_one_one"),
      tokenizer=dict(name="sentencepiece", path="")))
  config.model = ml_collections.ConfigDict(dict(
      embed_dim=768, dtype="bfloat16", remat=False, towers=dict(
          image=dict(name="vit", variant="B/16", pooling="map"),
          text=dict(name="text_transformer", variant="L", vocab_size=32_000, context_length=16,
                    causal=False, pooling="last"))))
  config.loss = ml_collections.ConfigDict(dict(name="sigmoid", init_scale=math.log(10.0),
                                               init_bias=-10.0))
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=5_000, end_lr_ratio=0.0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-4, grad_clip_norm=1.0,
      no_decay=(r".*/bias$", r".*norm.*", r"^loss/.*", r".*/(pos_embedding|probe)$"),
      freeze=()))
  config.evals = ml_collections.ConfigDict()
  return config


def finish(config: ml_collections.ConfigDict, arg: str, file: str) -> ml_collections.ConfigDict:
  """Applies the ":" argument: `data`, `eval_data`, `tokenizer` (the tokenizer's file, set on
  whatever field its name reads: `path`), then `apply_config_arg` for the rest."""
  own, rest = split_config_arg(arg, OWN_KEYS)
  config.data.train_shards = own.get("data", config.data.train_shards)
  config.data.eval_shards = own.get("eval_data", config.data.eval_shards)
  if "tokenizer" in own:
    config.data.tokenizer.path = own["tokenizer"]
  apply_config_arg(config, rest, file)
  if config.data.eval_shards:
    config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  return config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  return finish(siglip_config(32_768, 9_000_000_000), arg, __file__)
