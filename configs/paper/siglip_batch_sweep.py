"""The SigLIP paper's batch-size study: sigmoid vs softmax loss from 512 to 32k (Zhai et al. 2023,
arXiv:2303.15343, Figure 2 / Section 4.2: SigLIP and CLIP B/16 trained with each batch size).

One config per point of the grid, chosen by the ":" argument:

  loss  in {sigmoid, softmax}
  batch in {512, 1024, 2048, 4096, 8192, 16384, 32768}

  for loss in sigmoid softmax; do for batch in 512 1024 2048 4096 8192 16384 32768; do
    python -m clip_jax.train --workdir gs://bucket/sweep/$loss-$batch \\
    --config "configs/paper/siglip_batch_sweep.py:loss=$loss,batch=$batch,data=$DATA,tokenizer=$TOK"
  done; done

Every point sees the same number of examples (900 M here, `EXAMPLES`, so smaller batches take
more steps); the rest is configs/paper/siglip_b16_webli.py (model, data, optimizer; its other ":"
keys work here too). The softmax points use the CLIP loss started at t' = log 10 (the paper's
shared initial temperature) with no bias. The paper's exact number of examples seen per point
is not verified in this repository.
"""

import os

import ml_collections

from clip_jax.config import load_config_module, split_config_arg

LOSSES = ("sigmoid", "softmax")
BATCHES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
EXAMPLES = 900_000_000


def get_config(arg: str = "loss=sigmoid,batch=4096") -> ml_collections.ConfigDict:
  siglip = load_config_module(os.path.join(os.path.dirname(__file__), "siglip_b16_webli.py"))
  given, rest = split_config_arg(arg, ("loss", "batch"))
  point = {"loss": "sigmoid", "batch": "4096", **given}
  if point["loss"] not in LOSSES or int(point["batch"]) not in BATCHES:
    from clip_jax.registry import ConfigError
    raise ConfigError(f"--config {__file__}:{arg}: loss must be one of {LOSSES} and batch one "
                      f"of {BATCHES}")
  config = siglip.siglip_config(int(point["batch"]), EXAMPLES)
  if point["loss"] == "softmax":
    config.loss = ml_collections.ConfigDict(dict(name="softmax", init_scale=config.loss.init_scale))
  return siglip.finish(config, rest, __file__)
