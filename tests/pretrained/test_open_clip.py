"""Parity with open_clip itself: its ViT CLIP models, converted, give the same embeddings.

open_clip is run from the open_clip_torch wheel (`open_clip_wheel` fixture) on PyTorch (CPU),
without installing it, with torchvision stood in for (`open_clip_lib` fixture in conftest.py,
`clip_jax.pretrained.open_clip.open_clip_from_wheel`).

Each architecture is open_clip's named config with fewer and narrower layers and small images
(its activation, LayerNorm epsilon, patch size and pooling unchanged), every parameter drawn at
random (LayerNorm scales and biases, attention key biases included), so the test stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings
import zipfile

import jax
import numpy as np
import pytest

from clip_jax import pretrained
from clip_jax.data.tokenizer import CLIP_MERGES_FILE, load_tokenizer
from clip_jax.pretrained import open_clip as converter
from clip_jax.registry import ConfigError

NAMES = ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14")
# Captions as CLIP's tokenizer gives them: "!" is id 0, the pad id, inside the text; the last
# one is cut at 77 tokens (its EOS in the last position).
CAPTIONS = ("a photo of a cat", "hello! a dog!! on the grass", "",
            " ".join(["a very long caption"] * 30))


@pytest.fixture(scope="module")
def clip_tokens(open_clip_lib) -> np.ndarray:
  """int32 [4, 77]: CAPTIONS through clip_jax's "clip_bpe" tokenizer, with the merges file of
  the unpacked wheel."""
  merges_path = pathlib.Path(open_clip_lib.__file__).parent / CLIP_MERGES_FILE
  return load_tokenizer("clip_bpe", context_length=77, merges_path=str(merges_path)).encode(
      CAPTIONS)


def _open_clip_config(wheel, name: str) -> dict:
  with zipfile.ZipFile(wheel) as archive:
    return json.loads(archive.read(f"open_clip/model_configs/{name}.json"))


def test_architectures_are_open_clips_configs(open_clip_wheel):
  for name, arch in converter.ARCHITECTURES.items():
    assert converter.Architecture.from_config(_open_clip_config(open_clip_wheel, name)) == arch
    assert converter.Architecture.from_config(arch.open_clip_config()) == arch


def _small(config: dict) -> dict:
  """`config` with 2 layers of width 64 (2 heads) per tower, embed_dim 32 and images of 3 x 3
  patches; everything else as it is."""
  vision, text = config["vision_cfg"], config["text_cfg"]
  return {**config, "embed_dim": 32,
          "vision_cfg": {**vision, "layers": 2, "width": 64, "head_width": 32,
                         "image_size": 3 * vision["patch_size"]},
          "text_cfg": {**text, "layers": 2, "width": 64, "heads": 2}}


def _randomise(model, scale: float = 0.1) -> None:
  """Every parameter of a torch model drawn at random around its initial value (normal noise of
  std `scale` added)."""
  import torch
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(scale * torch.randn(param.shape, generator=generator))


# One checkpoint format per architecture, so each reader runs once.
FORMATS = dict(zip(NAMES, ("safetensors", "pt", "training_bin", "torchscript")))


def _write_checkpoint(reference, path_stem, file_format: str) -> str:
  """Saves the torch model `reference` as a `file_format` checkpoint; returns its path."""
  import torch
  state_dict = reference.state_dict()
  if file_format == "torchscript":  # as OpenAI released CLIP
    path = f"{path_stem}.pt"
    size = reference.visual.image_size[0]
    example = (torch.zeros(1, 3, size, size), torch.zeros(1, reference.context_length,
                                                          dtype=torch.long))
    with warnings.catch_warnings():  # tracing is deprecated and warns about control flow
      warnings.simplefilter("ignore", torch.jit.TracerWarning)
      warnings.simplefilter("ignore", DeprecationWarning)
      torch.jit.trace(reference, example, check_trace=False).save(path)
  elif file_format == "safetensors":
    from safetensors.torch import save_file
    path = f"{path_stem}.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
  elif file_format == "pt":
    path = f"{path_stem}.pt"
    torch.save(state_dict, path)
  else:  # an open_clip training checkpoint: wrapped, keys from DistributedDataParallel
    path = f"{path_stem}.bin"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}},
               path)
  return path


def _embeddings(model, params, reference, size: int, tokens: np.ndarray):
  """((image, text) from clip_jax, (image, text) from the torch `reference`): L2-normalised
  float32 embeddings of 3 random `size` x `size` images and of `tokens`."""
  import torch
  images = np.random.default_rng(1).normal(size=(3, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    want_image = reference.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                        normalize=True).numpy()
    want_text = reference.encode_text(torch.from_numpy(tokens.astype(np.int64)),
                                      normalize=True).numpy()

  def embed(method, inputs):  # in jax.jit, as the API suggests for speed
    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method=method))(
        params, inputs))

  return (embed(model.encode_image, images), embed(model.encode_text, tokens)), (want_image,
                                                                                 want_text)


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_match_open_clip(open_clip_lib, open_clip_wheel, clip_tokens, tmp_path,
                                    monkeypatch, name):
  import torch
  config = _small(_open_clip_config(open_clip_wheel, name))
  torch.manual_seed(0)
  reference = open_clip_lib.CLIP(**config).eval()
  _randomise(reference)
  state_dict = reference.state_dict()
  arch = converter.Architecture.from_config(config)
  monkeypatch.setitem(converter.ARCHITECTURES, name, arch)
  checkpoint = _write_checkpoint(reference, tmp_path / "model", FORMATS[name])

  model, params = pretrained.load("open_clip", name, checkpoint=checkpoint)

  got, want = _embeddings(model, params, reference, arch.image_size, clip_tokens)
  print(f"{name}: max abs difference image {np.abs(got[0] - want[0]).max():.2e}, "
        f"text {np.abs(got[1] - want[1]).max():.2e}")
  # Measured differences are below 1e-6; at 1e-4 the tanh GELU or the wrong LayerNorm epsilon
  # would pass on the image side.
  np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)
  assert model.config.loss.init_scale == pytest.approx(reference.logit_scale.item())

  # The export gives open_clip's state dict back exactly (the key biases included), and
  # converting that gives the same parameters.
  exported = converter.from_params(params, arch, model.logit_scale)
  assert sorted(exported) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
  again, logit_scale = converter.to_params(exported, arch)
  assert logit_scale == model.logit_scale
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for (path, a), b in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_checkpoint_errors_name_the_keys(tmp_path):
  arch = converter.Architecture(embed_dim=8, image_size=8, patch_size=4, vision_width=8,
                                vision_layers=1, vision_heads=2, text_width=8, text_layers=1,
                                text_heads=2, context_length=5, vocab_size=20)
  _, shapes = converter.abstract_structure(arch)
  params = {}
  for path, shape in shapes.items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.zeros(shape, np.float32)
  state_dict = converter.from_params(params, arch, 2.5)
  assert converter.to_params(state_dict, arch)[1] == 2.5

  with pytest.raises(ValueError, match="missing keys visual.ln_pre.weight"):
    converter.to_params({k: v for k, v in state_dict.items() if k != "visual.ln_pre.weight"},
                        arch)
  with pytest.raises(ValueError, match="keys with no place in it logit_bias"):
    converter.to_params({**state_dict, "logit_bias": np.zeros(())}, arch)
  with pytest.raises(ValueError, match=r"'visual.conv1.weight' has shape \(8, 3, 4, 4\).*"
                                       r"image/encoder/patch_embed/kernel \(12, 8\)"):
    converter.to_params(state_dict, dataclasses.replace(arch, patch_size=2))
  with pytest.raises(ConfigError, match="'ViT-B-33' is not known; choose one of: ViT-B-32,"):
    pretrained.load("open_clip", "ViT-B-33", checkpoint=tmp_path / "missing.pt")
  with pytest.raises(ConfigError, match="source 'timm' is not known; choose one of: open_clip"):
    pretrained.load("timm", "ViT-B-32", checkpoint=tmp_path / "missing.pt")


@pytest.mark.full_size
@pytest.mark.parametrize("name", NAMES)
def test_full_size_embeddings_match_open_clip(open_clip_lib, open_clip_wheel, clip_tokens,
                                              tmp_path, name):
  """The released architectures at full size (ViT-L-14: 428 M parameters, 224 px images),
  from a safetensors file as released; opt-in (`python -m pytest -m full_size
  tests/pretrained/`, about 4 GB of memory and a few minutes on 2 cores), outside the default
  run (pytest.ini deselects the `full_size` mark)."""
  import torch
  config = _open_clip_config(open_clip_wheel, name)
  torch.manual_seed(0)
  reference = open_clip_lib.CLIP(**config).eval()
  _randomise(reference, 0.02)  # LayerNorms and biases away from 1 and 0, weights near init
  path = _write_checkpoint(reference, tmp_path / "model", "safetensors")

  model, params = pretrained.load("open_clip", name, checkpoint=path)
  got, want = _embeddings(model, params, reference, converter.ARCHITECTURES[name].image_size,
                          clip_tokens)
  print(f"{name} full size: max abs difference image {np.abs(got[0] - want[0]).max():.2e}, "
        f"text {np.abs(got[1] - want[1]).max():.2e}")
  np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-4)
  np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-4)
