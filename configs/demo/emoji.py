"""Demo: a small SigLIP (sigmoid loss) dual encoder on the emoji-datasource-google images.

Trains on a 2-core CPU in minutes and evaluates zero-shot retrieval and category classification on
held-out emoji whose names and images are never seen in training.

  python -m clip_jax.train --config configs/demo/emoji.py --workdir /tmp/emoji_demo
  python -m clip_jax.train --config configs/demo/emoji.py --workdir /tmp/d --config.total_steps=50
"""

import math

import ml_collections

from clip_jax.sharding import TENSOR_PARALLEL_RULES


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 500
  config.batch_size = 256  # global
  config.log_every_steps = 20
  config.eval_every_steps = 100
  config.ckpt_every_steps = 100

  # Device mesh: (axis name, size); -1 takes the remaining devices. Batch axes shard the batch;
  # `tensor` (tensor parallelism for the transformer blocks) must not be one of them.
  config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  config.batch_axes = ("data", "fsdp")
  # Parameter sharding: first matching regex on the "/"-joined parameter path wins. Values:
  # "replicate", "fsdp", "fsdp(min_size_mb=4)", "tensor(dim=0)", ... or a tuple PartitionSpec
  # (README: Mesh and sharding). The tensor-parallel rules for attention and MLP come first.
  config.sharding_rules = TENSOR_PARALLEL_RULES + ((".*", "fsdp"),)

  config.data = ml_collections.ConfigDict()
  config.data.name = "emoji"
  config.data.cache_dir = ""  # "" -> $CLIP_JAX_CACHE or ~/.cache/clip_jax
  config.data.style = "google"  # the art; "twitter": configs/demo/emoji_twitter.py
  config.data.image_size = 32
  config.data.max_len = 16
  config.data.heldout_fraction = 0.15
  config.data.tokenizer = ml_collections.ConfigDict(dict(name="bpe", vocab_size=1024))

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 96
  config.model.dtype = "float32"  # compute dtype; params stay float32
  config.model.remat = False
  config.model.towers = ml_collections.ConfigDict()
  config.model.towers.image = ml_collections.ConfigDict(dict(
      name="vit", patch_size=8, width=96, depth=3, num_heads=4, mlp_ratio=4.0, pooling="map"))
  config.model.towers.text = ml_collections.ConfigDict(dict(
      name="text_transformer", vocab_size=1024, context_length=16, width=96, depth=2,
      num_heads=4, mlp_ratio=4.0, causal=False, pooling="eos"))

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "sigmoid"
  config.loss.init_scale = math.log(10.0)  # t' ; t = exp(t')
  config.loss.init_bias = -10.0

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  config.optim.end_lr_ratio = 0.0
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.eps = 1e-8
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 1.0
  # Parameters whose path matches are not decayed: biases, norms, loss scale and bias.
  config.optim.no_decay = (r".*/bias$", r".*norm.*", r"^loss/.*", r".*/(cls|pos_embedding|probe)$")
  config.optim.freeze = ()  # regexes of frozen parameters (LiT: (r"^model/image/.*",))

  config.evals = ml_collections.ConfigDict()
  config.evals.heldout = ml_collections.ConfigDict(dict(name="retrieval", split="heldout"))
  config.evals.heldout_categories = ml_collections.ConfigDict(dict(
      name="zeroshot_classification", split="heldout", label="category"))
  return config
