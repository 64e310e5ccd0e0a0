"""`clip_jax.convert`: a converted checkpoint restores through `config.init_from` on 1 and on 8
devices, and the evaluate CLI's path reads it with the config.json written beside it.

The model is a small open_clip architecture under the name "ViT-B-32" (CLIP's vocabulary and
77-token context, 1-layer towers of width 32), its parameters drawn at random and saved as an
open_clip `.safetensors` state dict by the converter's own export (`open_clip.from_params`; its
parity with open_clip is tests/pretrained/test_open_clip.py's).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from clip_jax import convert, fs
from clip_jax.checkpoint import load_params_from
from clip_jax.config import saved_config
from clip_jax.pretrained import open_clip
from clip_jax.sharding import shardings_for

ARCH = open_clip.Architecture(embed_dim=16, image_size=16, patch_size=8, vision_width=32,
                              vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                              text_heads=2, quick_gelu=True)
LOGIT_SCALE = 4.2


@pytest.fixture(scope="module")
def converted(tmp_path_factory, clip_merges_path):
  """(output directory, the params written, the config written): ARCH converted from a random
  open_clip checkpoint by `convert.convert`, as the CLI does."""
  from safetensors.numpy import save_file

  _, shapes = open_clip.abstract_structure(ARCH)
  rng = np.random.default_rng(0)
  params = {}
  for path, shape in shapes.items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = rng.normal(size=shape).astype(np.float32)
  folder = tmp_path_factory.mktemp("convert")
  checkpoint = folder / "model.safetensors"
  save_file(open_clip.from_params(params, ARCH, LOGIT_SCALE), str(checkpoint))
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(open_clip.ARCHITECTURES, "ViT-B-32", ARCH)
    config = convert.convert("open_clip", "ViT-B-32", checkpoint, str(folder / "out"),
                             tokenizer_path=clip_merges_path)
  return folder / "out", params, config


@pytest.mark.parametrize("mesh_shape", [(1, 1), (1, 8)])
def test_init_from_restores_the_converted_params(converted, mesh_shape):
  output, params, _ = converted
  devices = jax.devices()[:np.prod(mesh_shape)]
  mesh = jax.make_mesh(mesh_shape, ("data", "fsdp"), devices=devices)
  # Fresh params of this run, as `config.init_from` gets them: zeros, FSDP-sharded.
  target = {"model": jax.tree.map(np.zeros_like, params), "loss": {"scale": np.float32(0.0)}}
  shardings = shardings_for(target, ((".*", "fsdp"),), mesh)
  target = jax.tree.map(jax.device_put, target, shardings)

  loaded = load_params_from(str(output), target, shardings)

  assert float(loaded["loss"]["scale"]) == pytest.approx(LOGIT_SCALE)
  assert jax.tree.structure(loaded["model"]) == jax.tree.structure(params)
  for (path, got), want, sharding in zip(jax.tree.leaves_with_path(loaded["model"]),
                                         jax.tree.leaves(params),
                                         jax.tree.leaves(shardings["model"])):
    assert got.sharding == sharding, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
  kernel = loaded["model"]["text"]["encoder"]["token_embedding"]  # [49408, 32]
  assert kernel.addressable_shards[0].data.shape[0] == 49408 // mesh_shape[1]


def test_evaluate_reads_the_converted_run(converted, photo_table):
  from clip_jax.evaluate import evaluate_checkpoint

  output, _, written = converted
  config = saved_config(fs.read_text(str(output / "config.json")))
  assert config.model.to_dict() == written.model.to_dict() == ARCH.model_config().to_dict()
  assert (config.data.image_size, config.data.max_len) == (16, 77)
  assert config.data.tokenizer.name == "clip_bpe"
  assert config.data.preprocess.normalize == "clip"
  assert config.loss.to_dict() == {"name": "softmax", "init_scale": pytest.approx(LOGIT_SCALE),
                                   "max_scale": 100.0}
  config.data.path = config.data.eval_path = str(photo_table)
  config.eval_batch_size = 8

  metrics = evaluate_checkpoint(config, str(output))

  assert metrics["step"] == convert.STEP
  assert {"heldout/i2t_recall@1", "heldout/t2i_recall@1"} <= set(metrics), metrics
  with pytest.raises(convert.ConfigError, match="already has checkpoints; choose a new"):
    convert.write(str(output), {}, config)
