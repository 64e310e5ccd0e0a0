"""Hugging Face transformers `CLIPModel` checkpoints <-> clip_jax parameters.

A `CLIPModel` has the architecture of OpenAI's CLIP (pre-LN ViT with a class token and
`pre_layrnorm`, causal text transformer pooled at the EOS token, bias-free projections,
LayerNorm epsilon 1e-5), under other names. This module renames its state dict's keys to
open_clip's and back, and `clip_jax.pretrained.open_clip` does the rest (its layouts and
correspondences hold unchanged):

    arch = clip_architecture(json.load(open("config.json")))  # or open_clip.architecture(name)
    params, logit_scale = to_params(open_clip.read_state_dict("model.safetensors"), arch)
    state_dict = from_params(params, arch, logit_scale)       # HF keys, float32 numpy arrays

How the names correspond (HF -> open_clip), per tower:

* vision_model.embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}
  -> visual.{class_embedding, conv1.weight, positional_embedding};
  vision_model.pre_layrnorm -> visual.ln_pre; vision_model.post_layernorm -> visual.ln_post;
* text_model.embeddings.{token_embedding.weight, position_embedding.weight} ->
  {token_embedding.weight, positional_embedding}; text_model.final_layer_norm -> ln_final;
* <tower>.encoder.layers.<i> -> <tower>.transformer.resblocks.<i>, and in a block self_attn ->
  attn (q/k/v/out_proj kept: open_clip's in_proj split as `rules.split_attention` does),
  layer_norm1/2 -> ln_1/2, mlp.fc1/fc2 -> mlp.c_fc/c_proj;
* visual_projection.weight / text_projection.weight: torch Linear weights [E, D], transposed to
  open_clip's visual.proj / text_projection [D, E]; logit_scale as it is.

The text pooling: HF takes the first EOS token of a row (`eos_token_id` 49407; configs that
still say 2 take the largest id, as open_clip does), clip_jax the last non-pad token: the same
token for the rows of CLIP's tokenizer ("clip_bpe": one EOS, then pads). HF's own tokenizer pads
with the EOS id instead of 0; under the causal mask the EOS features do not depend on what
follows, so either padding gives the same embedding.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from clip_jax.pretrained import open_clip
from clip_jax.pretrained import rules as R

# (HF key prefix, open_clip key prefix); a prefix ending in "." maps every key under it.
_PREFIXES = (
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("visual_projection.weight", "visual.proj"),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_projection.weight", "text_projection"),
    ("logit_scale", "logit_scale"),
)
# Inside a block: (HF, open_clip) name parts.
_BLOCK_PARTS = ((".self_attn.", ".attn."), (".layer_norm1.", ".ln_1."),
                (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."),
                (".mlp.fc2.", ".mlp.c_proj."))
# open_clip keys stored transposed by HF (torch Linear weights).
_TRANSPOSED = frozenset({"visual.proj", "text_projection"})
# Activations of HF CLIP configs (`hidden_act`) and whether they are QuickGELU.
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}


def _rename(key: str, prefixes: tuple[tuple[str, str], ...],
            parts: tuple[tuple[str, str], ...]) -> str:
  """`key` with its first matching prefix replaced and, under a block prefix, its block parts;
  a key no prefix matches is returned as it is (so that `open_clip.to_params` names it)."""
  for old, new in prefixes:
    if key == old or (old.endswith(".") and key.startswith(old)):
      rest = key[len(old):]
      if old.endswith("layers.") or old.endswith("resblocks."):
        for part_old, part_new in parts:
          rest = rest.replace(part_old, part_new)
      return new + rest
  return key


def to_open_clip(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF `CLIPModel` state dict -> open_clip's keys (attention split into q/k/v_proj), float32
  numpy arrays. HF's `position_ids` buffers (in older checkpoints) are dropped."""
  out = {}
  for key, value in state_dict.items():
    if key.endswith("position_ids"):
      continue
    name = _rename(key, _PREFIXES, _BLOCK_PARTS)
    value = np.asarray(value, np.float32)
    out[name] = np.ascontiguousarray(value.T) if name in _TRANSPOSED else value
  return out


def to_params(state_dict: Mapping[str, Any],
              arch: open_clip.Architecture) -> tuple[dict[str, Any], float]:
  """HF `CLIPModel` state dict -> (clip_jax params of `arch.model_config()`, logit_scale t').

  Raises:
    ValueError as `open_clip.to_params`, naming open_clip's keys for HF's.
  """
  return open_clip.to_params(to_open_clip(state_dict), arch)


def from_params(params: Mapping[str, Any], arch: open_clip.Architecture,
                logit_scale: float) -> dict[str, np.ndarray]:
  """clip_jax params of `arch.model_config()` -> HF `CLIPModel` state dict {key: float32 numpy
  array} (`CLIPModel.load_state_dict` after `torch.from_numpy`, or `safetensors.numpy.save_file`).
  The attention key biases are zeros; `to_params` of the result gives `params` back exactly.

  Raises:
    KeyError naming a parameter path that `params` lacks.
  """
  inverse = tuple((new, old) for old, new in _PREFIXES)
  inverse_parts = tuple((new, old) for old, new in _BLOCK_PARTS)
  state = R.split_attention(open_clip.from_params(params, arch, logit_scale))
  return {_rename(k, inverse, inverse_parts): np.ascontiguousarray(v.T) if k in _TRANSPOSED
          else v for k, v in state.items()}


def clip_architecture(config: Mapping[str, Any]) -> open_clip.Architecture:
  """The architecture of an HF `CLIPConfig` (the dict of its config.json).

  Raises:
    ValueError naming the first field this converter does not reproduce (an activation other
    than quick_gelu / gelu, a LayerNorm epsilon other than 1e-5, an MLP size other than 4x the
    width).
  """
  vision, text = dict(config["vision_config"]), dict(config["text_config"])
  for where, tower in (("vision_config", vision), ("text_config", text)):
    checks = (("hidden_act", tower.get("hidden_act", "quick_gelu") in _ACTIVATIONS,
               "quick_gelu or gelu"),
              ("layer_norm_eps", tower.get("layer_norm_eps", 1e-5) == open_clip.NORM_EPS, "1e-5"),
              ("intermediate_size", tower["intermediate_size"] == 4 * tower["hidden_size"],
               "4 x hidden_size"))
    for field, ok, want in checks:
      if not ok:
        raise ValueError(f"HF CLIP config {where}.{field} = {tower.get(field)!r} is not "
                         f"supported by the clip_jax converter (it needs {want})")
  if _ACTIVATIONS[vision.get("hidden_act", "quick_gelu")] != _ACTIVATIONS[
      text.get("hidden_act", "quick_gelu")]:
    raise ValueError("HF CLIP config: the towers' hidden_act differ; the clip_jax converter "
                     "needs one activation for both")
  return open_clip.Architecture(
      embed_dim=config["projection_dim"], image_size=vision["image_size"],
      patch_size=vision["patch_size"], vision_width=vision["hidden_size"],
      vision_layers=vision["num_hidden_layers"], vision_heads=vision["num_attention_heads"],
      text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
      text_heads=text["num_attention_heads"],
      quick_gelu=_ACTIVATIONS[vision.get("hidden_act", "quick_gelu")],
      context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"])
