"""CLIP ViT-B/32 on LAION-400M: open_clip's `laion400m_e32` run, 62.96 % ImageNet zero-shot top-1.

Source: open_clip docs/PRETRAINED.md, "LAION-400M / ViT-B/32 224x224" (github.com/mlfoundations/
open_clip): 128 A100-40GB, 256 per GPU, a global batch of 32,768, 32 epochs of LAION-400M
(the `_e32` tag; ~407 M pairs per epoch, so ~13 B samples seen), reaching 62.96 %.

  python -m clip_jax.train --workdir gs://bucket/b32 \\
      --config 'configs/paper/clip_vit_b32_laion400m.py:data=gs://b/laion/{00000..41407}.tar'
  python -m clip_jax.train --dry_run --target=64xA100-40 \\
      --config configs/paper/clip_vit_b32_laion400m.py

The ":" argument takes key=value pairs: `data` (the training shards), `eval_data` (held-out
shards: switches on the retrieval evaluation), and any field of config.data or config
(`apply_config_arg`), e.g. `batch_size=4096,total_steps=1000`.

Model: open_clip's ViT-B-32 architecture (`clip_jax.pretrained.open_clip.architecture`: exact
GELU, LayerNorm epsilon 1e-5, class-token pooling, pre-norm, no patch bias), with the attention
key biases kept (`key_bias=True`) so that the parameter count is open_clip's, 151,277,313 with the
logit scale (the softmax cancels the key biases: they get no gradient). Loss: softmax (CLIP) with
t' = log(1/0.07), t clamped at 100. Optimizer: AdamW, open_clip's ViT defaults (b2 = 0.98,
eps = 1e-6), lr 5e-4, weight decay 0.2, 2,000 warm-up steps, cosine to 0: PRETRAINED.md does not
list these, they are the values of open_clip's LAION-400M training command lines in Cherti et
al. 2023 ("Reproducible scaling laws", Appendix) as far as this repository knows; check them
against your source.

No clip_jax equivalent: open_clip's per-epoch shard resampling (clip_jax streams the shards in a
seeded order), AMP float16 with loss scaling (clip_jax: bfloat16 compute, float32 params), the
RandomResizedCrop(0.9, 1.0) training augmentation (clip_jax: center crop, optional pixel shifts).
ImageNet zero-shot (the 62.96 %) is measured on the trained checkpoint with
`python -m clip_jax.evaluate` and an `image_folder` config on ImageNet's validation images (README,
"Class folders": classnames="imagenet1k", templates="openai_imagenet").
"""

import math

import ml_collections

from clip_jax.config import apply_config_arg, split_config_arg
from clip_jax.pretrained.open_clip import architecture

EPOCH = 407_000_000  # LAION-400M pairs per epoch, as open_clip's runs count them
EPOCHS = 32
BATCH = 32_768


def clip_config(arch: str, batch_size: int, samples: int, remat: bool) -> ml_collections.ConfigDict:
  """An open_clip architecture trained with the CLIP loss on webdataset shards at 224 px."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = batch_size
  config.total_steps = samples // batch_size
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.ckpt_every_steps = 5_000
  config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  config.batch_axes = ("data", "fsdp")
  config.sharding_rules = ((".*", "fsdp"),)

  shape = architecture(arch)
  config.data = ml_collections.ConfigDict(dict(
      name="webdataset", train_shards="", eval_shards="", caption_key="caption",
      cache_dir="", num_eval=5_000, max_skip_fraction=0.1,
      **shape.data_config().to_dict()))
  config.model = shape.model_config()
  config.model.dtype = "bfloat16"
  config.model.remat = remat

  config.loss = ml_collections.ConfigDict(dict(name="softmax", init_scale=math.log(1 / 0.07),
                                               max_scale=100.0))
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=5e-4, warmup_steps=2_000, end_lr_ratio=0.0, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.2, grad_clip_norm=0.0,
      no_decay=(r".*/bias$", r".*norm.*", r"^loss/.*", r".*/(cls|pos_embedding)$",
                r".*/token_embedding$"),
      freeze=()))
  config.evals = ml_collections.ConfigDict()
  return config


def finish(config: ml_collections.ConfigDict, arg: str, file: str) -> ml_collections.ConfigDict:
  """Applies the ":" argument (`data`, `eval_data`, then `apply_config_arg` for the rest) and
  the evaluation it switches on."""
  own, rest = split_config_arg(arg, ("data", "eval_data"))
  config.data.train_shards = own.get("data", config.data.train_shards)
  config.data.eval_shards = own.get("eval_data", config.data.eval_shards)
  apply_config_arg(config, rest, file)
  if config.data.eval_shards:
    config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  return config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  return finish(clip_config("ViT-B-32", BATCH, EPOCHS * EPOCH, remat=False), arg, __file__)
