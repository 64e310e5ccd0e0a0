"""A tiny synthetic-data config for trainer tests (seconds on CPU, no downloads)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 24
  c.batch_size = 16
  c.log_every_steps = 1
  c.eval_every_steps = 12
  c.ckpt_every_steps = 4
  c.ckpt_async = True
  c.mesh = (("data", -1), ("fsdp", 1))
  c.batch_axes = ("data", "fsdp")
  c.sharding_rules = ((".*", "fsdp"),)
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", image_size=8, max_len=6, cache_dir="", num_examples=64,
      num_eval_examples=16, tokenizer=dict(name="bytes", vocab_size=300)))
  c.model = ml_collections.ConfigDict(dict(embed_dim=16, dtype="float32", remat=False))
  c.model.towers = ml_collections.ConfigDict()
  c.model.towers.image = ml_collections.ConfigDict(dict(
      name="vit", patch_size=4, width=16, depth=1, num_heads=2, mlp_ratio=2.0, pooling="gap"))
  c.model.towers.text = ml_collections.ConfigDict(dict(
      name="text_transformer", vocab_size=300, context_length=6, width=16, depth=1,
      num_heads=2, mlp_ratio=2.0, causal=False, pooling="eos"))
  c.loss = ml_collections.ConfigDict(dict(name="sigmoid"))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, warmup_steps=2, end_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-4, grad_clip_norm=1.0, no_decay=(r".*/bias$", r"^loss/"), freeze=()))
  c.evals = ml_collections.ConfigDict()
  c.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  return c
