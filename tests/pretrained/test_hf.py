"""Parity with Hugging Face transformers' `CLIPModel`: converted, it gives the same embeddings,
and the export gives its state dict back.

transformers' CLIP modules import no torchvision, so no stand-ins are needed. The model is a
`CLIPConfig` with OpenAI's choices (QuickGELU, LayerNorm epsilon 1e-5, CLIP's vocabulary and
77-token context, EOS id 49407) at a small size: 2 layers of width 64 per tower, images of 3 x 3
patches of 16 pixels; every parameter drawn at random (attention key biases included).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from clip_jax import pretrained
from clip_jax.pretrained import hf, open_clip

SETUP = "pip install torch==2.13.0 transformers==5.25.0 safetensors"
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def transformers_lib(parity_missing):
  try:
    import torch  # noqa: F401
    import transformers
  except ImportError:
    parity_missing("PyTorch and transformers", SETUP)
  return transformers


def _randomise(model, scale: float = 0.1) -> None:
  """Every parameter of a torch model drawn at random around its initial value (normal noise of
  std `scale` added)."""
  import torch
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(scale * torch.randn(param.shape, generator=generator))


def clip_rows(rng: np.random.Generator, lengths: tuple[int, ...], length: int = 77) -> np.ndarray:
  """int32 [len(lengths), length] rows as CLIP's tokenizer makes them: BOS, random word ids
  (0, "!", among them), EOS, pads 0; a row of `length` - 2 words ends in EOS."""
  rows = np.zeros((len(lengths), length), np.int32)
  for row, n in zip(rows, lengths):
    row[0], row[1:n + 1], row[n + 1] = BOS, rng.integers(0, BOS, n), EOS
  return rows


def _save_random(reference, path, scale: float = 0.1) -> dict:
  """Draws the torch model's parameters at random (`_randomise`), saves its state dict as a
  .safetensors file at `path` and returns it."""
  from safetensors.torch import save_file
  _randomise(reference, scale)
  state_dict = {k: v.contiguous() for k, v in reference.state_dict().items()}
  save_file(state_dict, str(path))
  return state_dict


def _assert_same_embeddings(what: str, reference, model: pretrained.PretrainedModel, params,
                            images: np.ndarray, tokens: np.ndarray, atol: float = 1e-5) -> None:
  """The converted model's image and text embeddings (in jax.jit) are the reference's
  L2-normalised `get_image_features` / `get_text_features` within `atol`."""
  import torch
  with torch.no_grad():
    want_image = reference.get_image_features(
        pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).pooler_output
    want_text = reference.get_text_features(
        input_ids=torch.from_numpy(tokens.astype(np.int64))).pooler_output
  want_image = torch.nn.functional.normalize(want_image, dim=-1).numpy()
  want_text = torch.nn.functional.normalize(want_text, dim=-1).numpy()

  def embed(method, inputs):
    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method=method))(
        params, inputs))

  got_image, got_text = embed(model.encode_image, images), embed(model.encode_text, tokens)
  print(f"{what}: max abs difference image {np.abs(got_image - want_image).max():.2e}, "
        f"text {np.abs(got_text - want_text).max():.2e}")
  np.testing.assert_allclose(got_image, want_image, rtol=0, atol=atol)
  np.testing.assert_allclose(got_text, want_text, rtol=0, atol=atol)


def _assert_exact_export(exported: dict, state_dict: dict, model_class, config) -> None:
  """`exported` (a converter's export) is the reference's `state_dict` exactly, and a fresh
  `model_class(config)` loads it strictly."""
  import torch
  assert sorted(exported) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
  model_class(config).load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                                      strict=True)


def _assert_same_params(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_clip_embeddings_match_transformers(transformers_lib, tmp_path, monkeypatch):
  import torch
  tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
               hidden_act="quick_gelu")
  config = transformers_lib.CLIPConfig(
      projection_dim=32, vision_config=dict(tower, image_size=48, patch_size=16),
      text_config=dict(tower, vocab_size=49408, max_position_embeddings=77, bos_token_id=BOS,
                       eos_token_id=EOS, pad_token_id=1))
  torch.manual_seed(0)
  reference = transformers_lib.CLIPModel(config).eval()
  state_dict = _save_random(reference, tmp_path / "model.safetensors")
  arch = hf.clip_architecture(config.to_dict())
  monkeypatch.setitem(open_clip.ARCHITECTURES, "ViT-B-16-quickgelu", arch)

  model, params = pretrained.load("hf", "ViT-B-16-quickgelu",
                                  checkpoint=tmp_path / "model.safetensors")

  rng = np.random.default_rng(1)
  images = rng.normal(size=(3, 48, 48, 3)).astype(np.float32)
  tokens = clip_rows(rng, (4, 0, 20, 75))
  _assert_same_embeddings("HF CLIP", reference, model, params, images, tokens)
  assert model.logit_scale == pytest.approx(reference.logit_scale.item())

  # The export gives HF's state dict back exactly (the key biases included); a CLIPModel loads
  # it strictly, and converting it gives the same parameters.
  exported = hf.from_params(params, arch, model.logit_scale)
  _assert_exact_export(exported, state_dict, transformers_lib.CLIPModel, config)
  _assert_same_params(params, hf.to_params(exported, arch)[0])


def small_siglip(transformers_lib):
  """A `SiglipModel` (eval mode, initial parameters of seed 0) at the B/16-224 family's shape
  with 2 layers of width 64 (2 heads, MLP 256) per tower, images of 3 x 3 patches of 16 px, 16
  text positions and 1000 ids (EOS and pad id 1)."""
  import torch
  tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
  config = transformers_lib.SiglipConfig(
      vision_config=dict(tower, image_size=48, patch_size=16),
      text_config=dict(tower, vocab_size=1000, max_position_embeddings=16, bos_token_id=None,
                       eos_token_id=1, pad_token_id=1))
  torch.manual_seed(0)
  return transformers_lib.SiglipModel(config).eval()


def siglip_inputs() -> tuple[np.ndarray, np.ndarray]:
  """(images float32 [3, 48, 48, 3], tokens int32 [3, 16]) for `small_siglip`: rows of 5, 14
  and 16 random ids padded with id 1, as HF's tokenizer pads them. Id 0 (the <pad> piece) is an
  ordinary token to SigLIP, also in the last position, where a pad mask or pooling at the last
  non-0 token would take it for padding."""
  rng = np.random.default_rng(1)
  images = rng.normal(size=(3, 48, 48, 3)).astype(np.float32)
  tokens = np.ones((3, 16), np.int32)
  for row, n in zip(tokens, (5, 14, 16)):
    row[:n] = rng.integers(2, 1000, n)
  tokens[0, 2] = tokens[2, -1] = 0
  return images, tokens


def test_siglip_embeddings_match_transformers(transformers_lib, tmp_path, monkeypatch):
  """`SiglipModel` at the B/16-224 family's shape (GELU tanh, epsilon 1e-6, MAP head, text head
  with bias) with 2 layers of width 64, 3 x 3 patches and 16 text positions; text rows padded
  with id 1 as HF's tokenizer pads them (the model attends to the pads and pools the last
  position), one row without padding, ending in id 0."""
  reference = small_siglip(transformers_lib)
  config = reference.config
  state_dict = _save_random(reference, tmp_path / "model.safetensors")
  arch = hf.siglip_architecture(config.to_dict())
  name = "google/siglip-base-patch16-224"
  monkeypatch.setitem(hf.SIGLIP_ARCHITECTURES, name, arch)

  model, params = pretrained.load("hf", name, checkpoint=tmp_path / "model.safetensors")

  _assert_same_embeddings("HF SigLIP", reference, model, params, *siglip_inputs())
  assert model.config.loss.name == "sigmoid"
  assert model.config.loss.init_scale == pytest.approx(reference.logit_scale.item())
  assert model.config.loss.init_bias == pytest.approx(reference.logit_bias.item())

  # The export gives HF's state dict back exactly (the key biases, the MAP head's in_proj_bias
  # included); a SiglipModel loads it strictly; converting it gives the same params.
  exported = hf.siglip_from_params(params, arch, model.config.loss.init_scale,
                                   model.config.loss.init_bias)
  _assert_exact_export(exported, state_dict, transformers_lib.SiglipModel, config)
  _assert_same_params(params, hf.siglip_to_params(exported, arch)[0])


@pytest.mark.full_size
@pytest.mark.parametrize("name", sorted(hf.SIGLIP_ARCHITECTURES))
def test_full_size_siglip_matches_transformers(transformers_lib, tmp_path, name):
  """HF's SigLIP releases at their sizes (So400m/14-384: 878 M parameters), built by
  transformers from the config our named architecture describes, weights a little off their
  initialisation, loaded under the name from a safetensors file; opt-in like the open_clip
  full-size test (`python -m pytest -m full_size tests/pretrained/`)."""
  import torch
  arch = hf.SIGLIP_ARCHITECTURES[name]
  tower = lambda width, layers, heads, mlp: dict(  # noqa: E731
      hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=mlp)
  config = transformers_lib.SiglipConfig(
      vision_config=dict(tower(arch.vision_width, arch.vision_layers, arch.vision_heads,
                               arch.vision_mlp_dim), image_size=arch.image_size,
                         patch_size=arch.patch_size),
      text_config=dict(tower(arch.text_width, arch.text_layers, arch.text_heads,
                             arch.text_mlp_dim), vocab_size=arch.vocab_size,
                       max_position_embeddings=arch.context_length, bos_token_id=None,
                       eos_token_id=1, pad_token_id=1))
  assert hf.siglip_architecture(config.to_dict()) == arch
  torch.manual_seed(0)
  reference = transformers_lib.SiglipModel(config).eval()
  _save_random(reference, tmp_path / "model.safetensors", scale=0.02)  # near init at full size
  model, params = pretrained.load("hf", name, checkpoint=tmp_path / "model.safetensors")
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, arch.image_size, arch.image_size, 3)).astype(np.float32)
  tokens = np.ones((2, arch.context_length), np.int32)
  tokens[0, :7] = rng.integers(2, arch.vocab_size, 7)
  tokens[1] = rng.integers(0, arch.vocab_size, arch.context_length)
  _assert_same_embeddings(f"{name} full size", reference, model, params, images, tokens,
                          atol=1e-4)
