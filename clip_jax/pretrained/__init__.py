"""Released weights as clip_jax models: load a checkpoint, embed images and text.

    from clip_jax import pretrained
    model, params = pretrained.load("open_clip", "ViT-B-32", checkpoint=PATH)
    img = model.apply({"params": params}, images, method=model.encode_image)  # [B, E]
    txt = model.apply({"params": params}, tokens, method=model.encode_text)   # [B, E]

Sources: "open_clip" (open_clip and OpenAI CLIP ViT checkpoints, `clip_jax.pretrained.open_clip`;
names in its ARCHITECTURES), "hf" (Hugging Face `CLIPModel` checkpoints under the same names and
`SiglipModel` checkpoints under the names of `hf.SIGLIP_ARCHITECTURES`; `clip_jax.pretrained.hf`).
`params` is the `MultiTower` parameter tree of `model.config.model` (`clip_jax.models.model`), so
it also serves as the starting point of training with that config.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
from flax import nnx

from clip_jax.models.model import MultiTower
from clip_jax.pretrained import hf, open_clip
from clip_jax.registry import ConfigError

Array = jax.Array

SOURCES = ("open_clip", "hf")


class PretrainedModel:
  """A converted model, called in the Flax `apply` form:

      model.apply({"params": params}, images, method=model.encode_image)

  `apply` rebuilds the NNX model from its structure and `params` for each call (run it inside
  `jax.jit` for speed; the parameters may be traced).

  Attributes:
    graphdef: the structure of the `MultiTower` model.
    config: ConfigDict with `model` (the `config.model` of the architecture), `loss` (the
      softmax loss starting at the checkpoint's logit scale) and `data` (the `config.data`
      fields the weights expect: image_size, max_len, tokenizer, preprocess.normalize).
    logit_scale: the checkpoint's t' (logits are scaled by t = exp(t')).
    image_size: the image side the model takes, in pixels.
    context_length: the token rows' length the text tower takes (CLIP: 77).
  """

  def __init__(self, graphdef: nnx.GraphDef, config: ml_collections.ConfigDict,
               logit_scale: float, image_size: int, context_length: int):
    self.graphdef, self.config, self.logit_scale = graphdef, config, logit_scale
    self.image_size, self.context_length = image_size, context_length

  def apply(self, variables: Mapping[str, Any], inputs: Any, *,
            method: Callable[[MultiTower, Any], Any]) -> Any:
    """`method(model, inputs)` on the model with `variables["params"]`.

    Args:
      variables: {"params": the parameter tree `load` returned}.
      inputs: what `method` takes.
      method: `model.encode_image`, `model.encode_text`, or any (MultiTower, inputs) -> output
        (e.g. `lambda m, batch: m(batch)` for {modality: embeddings}).
    """
    return method(nnx.merge(self.graphdef, variables["params"]), inputs)

  @staticmethod
  def encode_image(module: MultiTower, images: Array) -> Array:
    """images: float32 [B, H, W, 3] (H = W = image_size), normalised as
    `config.data.preprocess.normalize` says (CLIP's mean and std; [-1, 1] for SigLIP).
    Returns L2-normalised float32 [B, embed_dim]."""
    return module.embed(images, "image")

  @staticmethod
  def encode_text(module: MultiTower, tokens: Array) -> Array:
    """tokens: int32 [B, context_length] from the `config.data.tokenizer` tokenizer ("clip_bpe",
    pad 0 after EOS, for CLIP). Returns L2-normalised float32 [B, embed_dim]."""
    return module.embed(tokens, "text")


def load(source: str, name: str, *,
         checkpoint: str | os.PathLike) -> tuple[PretrainedModel, dict[str, Any]]:
  """Reads released weights into a clip_jax model.

  Args:
    source: where the weights come from: "open_clip" (open_clip and OpenAI CLIP checkpoints,
      `.safetensors` read with numpy, `.pt` / `.bin` with PyTorch) or "hf" (a Hugging Face
      `CLIPModel`'s or `SiglipModel`'s model.safetensors or pytorch_model.bin).
    name: the architecture, e.g. "ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14"
      (`open_clip.ARCHITECTURES`). OpenAI's original weights use QuickGELU: "-quickgelu" names
      (HF's openai/clip-vit-base-patch32 is "ViT-B-32-quickgelu"). SigLIP ("hf" only):
      "google/siglip-base-patch16-224", "google/siglip-so400m-patch14-384".
    checkpoint: the checkpoint file.

  Returns:
    (model, params): the model to call through `model.apply` and its parameters (nested dicts
    of float32 numpy arrays, the `MultiTower` layout).

  Raises:
    ConfigError naming an unknown source or name; ValueError for a checkpoint that does not
    fit the architecture; FileNotFoundError, ImportError as `open_clip.read_state_dict`.
  """
  if source not in SOURCES:
    raise ConfigError(f"pretrained source {source!r} is not known; choose one of: "
                      f"{', '.join(SOURCES)}")
  arch = hf.architecture(name) if source == "hf" else open_clip.architecture(name)
  state_dict = open_clip.read_state_dict(checkpoint)
  if isinstance(arch, hf.SiglipArchitecture):
    params, loss = hf.siglip_to_params(state_dict, arch)
  else:
    convert = hf.to_params if source == "hf" else open_clip.to_params
    params, logit_scale = convert(state_dict, arch)
    loss = open_clip.loss_config(logit_scale)
  graphdef, _ = open_clip.abstract_structure(arch)
  config = ml_collections.ConfigDict(dict(model=arch.model_config(), loss=loss,
                                          data=arch.data_config()))
  return PretrainedModel(graphdef, config, loss.init_scale, arch.image_size,
                         arch.context_length), params
