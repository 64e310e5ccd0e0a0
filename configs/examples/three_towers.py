"""Example: three towers (image, text, sketch) trained with MV-InfoNCE on synthetic shapes.

The synthetic source renders every training shape twice: the coloured "image" and, through
`config.data.extra_views = ("sketch",)`, its black outline at the same place under the batch key
"sketch". A third ViT tower reads "sketch", and MV-InfoNCE (Koromilas et al., 2025) aligns all
three views of each example at once. No download; the 200 steps take about 20 s on a 2-core CPU
and reach a held-out image-text mean recall of about 0.90 (0.82 with "pairwise").

  python -m clip_jax.train --config configs/examples/three_towers.py --workdir /tmp/three_towers
  python -m clip_jax.train --config configs/examples/three_towers.py --workdir /tmp/x \
      --config.total_steps=20

The same with "pairwise" (a sigmoid loss on each of the three pairs of towers, each pair with its
own scale and bias) instead of MV-InfoNCE:

  python -m clip_jax.train --config configs/examples/three_towers.py:pairwise --workdir /tmp/x
"""

import math

import ml_collections


def get_config(loss: str = "mv_infonce") -> ml_collections.ConfigDict:
  """The config; `loss` ("mv_infonce" or "pairwise") comes after a ":" in --config."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 200
  config.batch_size = 64  # global
  config.log_every_steps = 10
  config.eval_every_steps = 100
  config.ckpt_every_steps = 100

  config.mesh = (("data", -1), ("fsdp", 1))
  config.batch_axes = ("data", "fsdp")
  config.sharding_rules = ((".*", "fsdp"),)

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"
  config.data.cache_dir = ""  # "" -> $CLIP_JAX_CACHE or ~/.cache/clip_jax
  config.data.image_size = 16
  config.data.num_examples = 1024
  config.data.num_eval_examples = 128
  config.data.max_len = 8
  config.data.augment = False
  config.data.extra_views = ("sketch",)  # also "gray"; each becomes a batch key
  config.data.tokenizer = ml_collections.ConfigDict(dict(name="bpe", vocab_size=320))

  vit = dict(name="vit", patch_size=4, width=48, depth=2, num_heads=4, mlp_ratio=2.0,
             pooling="gap")
  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 32
  config.model.dtype = "float32"
  config.model.remat = False
  config.model.towers = ml_collections.ConfigDict()
  config.model.towers.image = ml_collections.ConfigDict(vit)
  config.model.towers.text = ml_collections.ConfigDict(dict(
      name="text_transformer", vocab_size=320, context_length=8, width=48, depth=2,
      num_heads=4, mlp_ratio=2.0, causal=False, pooling="eos"))
  config.model.towers.sketch = ml_collections.ConfigDict(vit)  # reads batch["sketch"]

  config.loss = ml_collections.ConfigDict()
  config.loss.modalities = ("image", "text", "sketch")
  if loss == "mv_infonce":
    config.loss.name = "mv_infonce"
    config.loss.init_scale = math.log(10.0)  # t' ; t = exp(t') = 1 / 0.1, fixed as in the paper
    config.loss.learn_scale = False
  elif loss == "pairwise":
    config.loss.name = "pairwise"
    config.loss.pair_loss = ml_collections.ConfigDict(dict(
        name="sigmoid", init_scale=math.log(10.0), init_bias=-10.0))
  else:
    raise ValueError(f"--config=...three_towers.py:{loss}: choose mv_infonce or pairwise")

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 3e-3
  # A short warmup lets MV-InfoNCE collapse early (all embeddings equal, loss log(batch_size));
  # 20 steps avoid that, also for runs of only --config.total_steps=20.
  config.optim.warmup_steps = 20
  config.optim.end_lr_ratio = 0.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.eps = 1e-8
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 1.0
  config.optim.no_decay = (r".*/bias$", r".*norm.*", r"^loss/.*", r".*/(cls|pos_embedding|probe)$")
  config.optim.freeze = ()

  # Image-text retrieval on held-out shapes (the evaluation splits have no sketch view).
  config.evals = ml_collections.ConfigDict()
  config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  return config
