"""The demo-scale model of benchmarks/train_throughput.py's CPU comparison with open_clip.

An open_clip-shaped CLIP (`clip_jax.pretrained.open_clip.Architecture`, so the open_clip peer
builds the same model): embed 256; image 64 px, patch 8, width 256, depth 6, 4 heads; text
vocabulary 1,024, context 16, width 256, depth 4, 4 heads; 8.4M parameters, 2.24 GFLOP per
example (forward and backward, `clip_jax.training.flops`; XLA counts 2.29); batch 128, the sigmoid loss (t' = log 10, b = -10), AdamW.
Synthetic data (the benchmark makes its own random batches).

  python benchmarks/train_throughput.py --config benchmarks/configs/demo_scale.py \\
      --devices 1 --impls all_gather --open_clip eager,compile --steps 10

The ":tiny" argument shrinks it to a toy of the same kind (image 16 px, widths 32, one layer
per tower, vocabulary 300, context 8, batch 8) for smoke runs (tests, and benchmarks/gpu_session.sh
with CLIP_JAX_GPU_SESSION_SMOKE=1).
"""

import math

import ml_collections

from clip_jax.pretrained.open_clip import Architecture

DEMO = Architecture(embed_dim=256, image_size=64, patch_size=8, vision_width=256,
                    vision_layers=6, vision_heads=4, text_width=256, text_layers=4, text_heads=4,
                    context_length=16, vocab_size=1024)
TINY = Architecture(embed_dim=32, image_size=16, patch_size=8, vision_width=32, vision_layers=1,
                    vision_heads=2, text_width=32, text_layers=1, text_heads=2, context_length=8,
                    vocab_size=300)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in ("", "tiny"):
    raise ValueError(f"--config demo_scale.py:{arg}: the only argument is 'tiny'")
  arch = TINY if arg == "tiny" else DEMO
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 1_000
  config.batch_size = 8 if arg == "tiny" else 128
  config.log_every_steps = 10
  config.eval_every_steps = 1_000
  config.ckpt_every_steps = 1_000
  config.mesh = (("data", -1), ("fsdp", 1))
  config.batch_axes = ("data", "fsdp")
  config.sharding_rules = ((".*", "fsdp"),)
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic", image_size=arch.image_size, max_len=arch.context_length, cache_dir="",
      num_examples=1_024, num_eval_examples=16,
      tokenizer=dict(name="bytes", vocab_size=arch.vocab_size)))
  config.model = arch.model_config()
  config.loss = ml_collections.ConfigDict(dict(name="sigmoid", init_scale=math.log(10.0),
                                               init_bias=-10.0))
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=0, end_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-4, grad_clip_norm=1.0, no_decay=(r".*/bias$", r"^loss/"), freeze=()))
  config.evals = ml_collections.ConfigDict()
  return config
