"""LiT B16B_2 (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"):
73.9 % ImageNet zero-shot, COCO I->T 51.5 / T->I 31.8.

Source: big_vision configs/proj/image_text/README_lit.md, results row "mixed_B16B_2" (config
arg `txt=bert_base,img=B/16`; trained 60k steps, no linear head on the image side), and its
LiT example config lit_coco.py / siglip_lit_coco.py for the optimiser: Adam, lr 1e-3, weight
decay 0.01, cosine with 3 % warm-up, gradient clipping at 1.0, the image tower locked, the
softmax temperature started at 10. The image tower is a ViT-B/16 pre-trained on ImageNet-21k
(AugReg), class-token pooled; the text tower BERT-base with its own head to 768.

  DATA='gs://bucket/cc12m_yfcc/{00000..09999}.tar' TOK=/models/bert-base-uncased/tokenizer.json
  python -m clip_jax.train --workdir gs://bucket/lit \\
      --config "configs/paper/lit_b16b.py:data=$DATA,tokenizer=$TOK,init_from=/runs/augreg_b16"

The ":" argument: `data` (webdataset shards; the "mixed" models used CC12M + YFCC100M),
`eval_data`, `tokenizer` (BERT's tokenizer.json), `init_from` (the locked image tower's
weights: a clip_jax checkpoint or a `clip_jax.pretrained` source holding model/image/encoder),
and fields of config.data / config.

Assumed here, not read in a source: the batch (16,384) and the data mixture's size. No clip_jax
equivalent: the AugReg ViT checkpoint format (convert it into a clip_jax checkpoint first), the
BERT init of the text tower from a TF checkpoint (use `init_from` with a converted one: the
rules load model/image/encoder and init the rest unless given otherwise), and "no image head":
clip_jax always projects each tower (a bias-free Linear), so the image projection is trained
here (as in the LiT paper's B16B row with `img_head`, 72.1 %).
"""

import math
import os

import ml_collections

from clip_jax.config import load_config_module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  siglip = load_config_module(os.path.join(os.path.dirname(__file__), "siglip_b16_webli.py"))
  config = siglip.siglip_config(16_384, 60_000 * 16_384)
  config.data.max_len = 16
  config.data.tokenizer = ml_collections.ConfigDict(dict(name="tokenizer_json", path=""))
  config.model.towers.image = ml_collections.ConfigDict(dict(
      name="vit", variant="B/16", pooling="cls"))
  config.model.towers.text = ml_collections.ConfigDict(dict(
      name="bert", variant="BERT-base", vocab_size=30_522, context_length=512, pooling="cls"))
  config.loss = ml_collections.ConfigDict(dict(name="softmax", init_scale=math.log(10.0)))
  config.optim.update(learning_rate=1e-3, warmup_steps=int(0.03 * config.total_steps),
                      b2=0.999, weight_decay=0.01, freeze=(r"^model/image/encoder/.*",))
  config.init_from = ""
  config.init_from_rules = ((r"^model/image/encoder/", "load"), (r".*", "init"))
  return siglip.finish(config, arg, __file__)
