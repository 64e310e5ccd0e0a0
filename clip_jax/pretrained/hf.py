"""Hugging Face transformers `CLIPModel` and `SiglipModel` checkpoints <-> clip_jax parameters.

## CLIP

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

## SigLIP

A `SiglipModel` (`SiglipArchitecture`, `siglip_to_params`, `siglip_from_params`) is, in clip_jax
terms (`SiglipArchitecture.model_config`):

* image: a ViT with a patch bias, no class token and no LayerNorm before the blocks, pooled by
  multihead attention ("map": HF's `SiglipMultiheadAttentionPoolingHead`, a probe attending
  through a torch `MultiheadAttention` whose in_proj splits into our query, key and value, then
  x + MLP(LN(x))); GELU (tanh), LayerNorm epsilon 1e-6. HF has no image projection: the pooled
  features are the embedding, so our projection is the identity (embed_dim = the width);
* text: a bidirectional transformer that attends to every position, pads included
  (`key_mask=False`: HF's `SiglipTextModel` applies no padding mask), pooled at the last
  position whatever the token there (`pooling="last_position"`, HF's `[:, -1]`), then HF's
  `head`, a Linear with bias (`head=True`); again the identity projection;
* the loss: the sigmoid loss starting at HF's `logit_scale` (t', logits scaled by exp(t')) and
  `logit_bias`.

HF names: vision_model.embeddings.{patch_embedding, position_embedding}, <tower>.encoder.layers.<i>.
{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2},
vision_model.post_layernorm, vision_model.head.{probe, attention.{in_proj_weight, in_proj_bias,
out_proj}, layernorm, mlp.fc1, mlp.fc2}, text_model.embeddings.{token_embedding,
position_embedding}, text_model.final_layer_norm, text_model.head.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from clip_jax.pretrained import open_clip
from clip_jax.pretrained import rules as R
from clip_jax.registry import ConfigError

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
  `to_params` of the result gives `params` back exactly (the attention key biases included).

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


# SigLIP's LayerNorm epsilon and activation (HF's "gelu_pytorch_tanh").
SIGLIP_NORM_EPS = 1e-6
SIGLIP_ACTIVATION = "gelu_tanh"
# The MAP head's torch MultiheadAttention (its in_proj split by `rules.split_attention`).
_MAP_ATTENTION = "vision_model.head.attention"


@dataclasses.dataclass(frozen=True)
class SiglipArchitecture:
  """The shape of an HF `SiglipModel`: the values of its config.json.

  Attributes:
    image_size, patch_size: the image side in pixels and the patch side.
    vision_width, vision_layers, vision_heads, vision_mlp_dim: the image transformer (its MAP
      head has the same heads and MLP size).
    text_width, text_layers, text_heads, text_mlp_dim: the text transformer; its head maps
      text_width to text_width (HF's projection_size).
    context_length, vocab_size: the text positions and token ids.
  """

  image_size: int
  patch_size: int
  vision_width: int
  vision_layers: int
  vision_heads: int
  vision_mlp_dim: int
  text_width: int
  text_layers: int
  text_heads: int
  text_mlp_dim: int
  context_length: int = 64
  vocab_size: int = 32000

  def model_config(self) -> ml_collections.ConfigDict:
    """The clip_jax `config.model` of this architecture (float32, no remat); embed_dim is the
    width of both towers."""
    layers = dict(norm_eps=SIGLIP_NORM_EPS, activation=SIGLIP_ACTIVATION, key_bias=True)
    image = dict(name="vit", patch_size=self.patch_size, width=self.vision_width,
                 depth=self.vision_layers, num_heads=self.vision_heads,
                 mlp_ratio=self.vision_mlp_dim / self.vision_width, pooling="map",
                 pre_norm=False, patch_bias=True, **layers)
    text = dict(name="text_transformer", vocab_size=self.vocab_size,
                context_length=self.context_length, width=self.text_width,
                depth=self.text_layers, num_heads=self.text_heads,
                mlp_ratio=self.text_mlp_dim / self.text_width, causal=False, key_mask=False,
                pooling="last_position", head=True, **layers)
    return ml_collections.ConfigDict(dict(
        embed_dim=self.vision_width, dtype="float32", remat=False,
        towers=dict(image=image, text=text)))

  def data_config(self) -> ml_collections.ConfigDict:
    """The `config.data` fields these weights expect: image_size, max_len (the context length;
    HF pads every row to it), the "siglip" tokenizer (HF's SiglipTokenizer rows; its `path`, the
    spiece.model, to be set) and the [-1, 1] normalisation (HF's mean = std = 0.5)."""
    return ml_collections.ConfigDict(dict(
        image_size=self.image_size, max_len=self.context_length,
        tokenizer=dict(name="siglip", path=""),
        preprocess=dict(normalize="minus_one_one")))

  def inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
    """"image" float32 [1, S, S, 3] (S = image_size), "text" int32 [1, context_length]."""
    size = self.image_size
    return {"image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
            "text": jax.ShapeDtypeStruct((1, self.context_length), jnp.int32)}


# HF's google/siglip-* configs.
SIGLIP_ARCHITECTURES: dict[str, SiglipArchitecture] = {
    "google/siglip-base-patch16-224": SiglipArchitecture(224, 16, 768, 12, 12, 3072,
                                                         768, 12, 12, 3072),
    "google/siglip-so400m-patch14-384": SiglipArchitecture(384, 14, 1152, 27, 16, 4304,
                                                           1152, 27, 16, 4304),
}


def architecture(name: str) -> open_clip.Architecture | SiglipArchitecture:
  """The architecture named `name`: a SigLIP model of SIGLIP_ARCHITECTURES or a CLIP model of
  `open_clip.ARCHITECTURES` (HF's CLIPModel releases have open_clip's shapes).

  Raises:
    ConfigError naming the known names.
  """
  if name in SIGLIP_ARCHITECTURES:
    return SIGLIP_ARCHITECTURES[name]
  if name in open_clip.ARCHITECTURES:
    return open_clip.ARCHITECTURES[name]
  raise ConfigError(f"HF architecture {name!r} is not known; choose one of: "
                    f"{', '.join([*SIGLIP_ARCHITECTURES, *open_clip.ARCHITECTURES])}")


def siglip_architecture(config: Mapping[str, Any]) -> SiglipArchitecture:
  """The architecture of an HF `SiglipConfig` (the dict of its config.json).

  Raises:
    ValueError naming the first field this converter does not reproduce (an activation other
    than gelu_pytorch_tanh, a LayerNorm epsilon other than 1e-6, no attention pooling head, a
    text projection_size other than the widths).
  """
  vision, text = dict(config["vision_config"]), dict(config["text_config"])
  checks = [(f"{where}.{field}", tower.get(field), want)
            for where, tower in (("vision_config", vision), ("text_config", text))
            for field, want in (("hidden_act", "gelu_pytorch_tanh"),
                                ("layer_norm_eps", SIGLIP_NORM_EPS))]
  checks += [("vision_config.vision_use_head", vision.get("vision_use_head", True), True),
             ("vision_config.num_channels", vision.get("num_channels", 3), 3),
             ("text_config.hidden_size", text["hidden_size"], vision["hidden_size"]),
             ("text_config.projection_size", text.get("projection_size", text["hidden_size"]),
              text["hidden_size"])]
  for field, value, want in checks:
    if value != want:
      raise ValueError(f"HF SigLIP config {field} = {value!r} is not supported by the clip_jax "
                       f"converter (it needs {want!r})")
  return SiglipArchitecture(
      image_size=vision["image_size"], patch_size=vision["patch_size"],
      vision_width=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
      vision_heads=vision["num_attention_heads"], vision_mlp_dim=vision["intermediate_size"],
      text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
      text_heads=text["num_attention_heads"], text_mlp_dim=text["intermediate_size"],
      context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"])


# HF's names of a block's parts (`rules.blocks`).
_BLOCK_NAMES = ("layer_norm1", "self_attn", "layer_norm2", "mlp.fc1", "mlp.fc2")


def _siglip_rules(arch: SiglipArchitecture) -> list[R.Rule]:
  """Every parameter of the model but the (identity) projections."""
  image, text = ("image", "encoder"), ("text", "encoder")
  head = image + ("map_head",)
  return [
      *R.patch_embedding(image + ("patch_embed",), "vision_model.embeddings.patch_embedding",
                         arch.patch_size, bias=True),
      (image + ("pos_embedding",), "vision_model.embeddings.position_embedding.weight", R.same,
       R.same),
      *R.blocks(image + ("transformer",), "vision_model.encoder.layers", arch.vision_layers,
                _BLOCK_NAMES),
      *R.norm(image + ("final_norm",), "vision_model.post_layernorm"),
      (head + ("probe",), "vision_model.head.probe", R.same, R.same),
      *R.attention(head + ("attn",), _MAP_ATTENTION),
      *R.norm(head + ("norm",), "vision_model.head.layernorm"),
      *R.linear(head + ("mlp", "fc1"), "vision_model.head.mlp.fc1"),
      *R.linear(head + ("mlp", "fc2"), "vision_model.head.mlp.fc2"),
      (text + ("token_embedding",), "text_model.embeddings.token_embedding.weight", R.same,
       R.same),
      (text + ("pos_embedding",), "text_model.embeddings.position_embedding.weight", R.same,
       R.same),
      *R.blocks(text + ("transformer",), "text_model.encoder.layers", arch.text_layers,
                _BLOCK_NAMES),
      *R.norm(text + ("final_norm",), "text_model.final_layer_norm"),
      *R.linear(text + ("head",), "text_model.head"),
  ]


_PROJECTIONS = (("image", "projection", "kernel"), ("text", "projection", "kernel"))


def siglip_to_params(state_dict: Mapping[str, Any],
                     arch: SiglipArchitecture) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
  """HF `SiglipModel` state dict -> (clip_jax params of `arch.model_config()`, the `config.loss`
  that starts from its logit scale and bias: the sigmoid loss).

  The projections, which HF does not have, are identity matrices.

  Raises:
    ValueError naming the missing keys, the keys this architecture has no place for, or a key
    whose shape differs from the one the architecture needs.
  """
  state = R.split_attention({k: np.asarray(v, np.float32) for k, v in state_dict.items()
                             if not k.endswith("position_ids")})
  params = siglip_params(state, _siglip_rules(arch), arch,
                         f"an HF SigLIP model of this architecture ({arch})",
                         ("logit_scale", "logit_bias"))
  return params, siglip_loss(state["logit_scale"], state["logit_bias"])


def siglip_params(state: Mapping[str, np.ndarray], rules: list[R.Rule], arch: SiglipArchitecture,
                  model: str, other_keys: tuple[str, ...]) -> dict[str, Any]:
  """`rules.to_params` for a SigLIP checkpoint (HF's or big_vision's): `rules` cover every
  parameter but the projections, which are identity matrices.

  Raises:
    ValueError as `rules.to_params`.
  """
  _, expected = open_clip.abstract_structure(arch)
  params = R.to_params(state, rules, {k: v for k, v in expected.items() if k not in _PROJECTIONS},
                       model, other_keys)
  for modality, _, _ in _PROJECTIONS:
    params[modality]["projection"] = {"kernel": np.eye(arch.vision_width, dtype=np.float32)}
  return params


def siglip_loss(scale: np.ndarray, bias: np.ndarray) -> ml_collections.ConfigDict:
  """The `config.loss` that continues from a SigLIP checkpoint's logit scale t' (logits scaled
  by exp(t')) and bias (one-element arrays): the sigmoid loss starting there."""
  return ml_collections.ConfigDict(dict(name="sigmoid", init_scale=float(scale.reshape(())),
                                        init_bias=float(bias.reshape(()))))


def siglip_from_params(params: Mapping[str, Any], arch: SiglipArchitecture, logit_scale: float,
                       logit_bias: float) -> dict[str, np.ndarray]:
  """clip_jax params of `arch.model_config()` -> HF `SiglipModel` state dict {key: float32
  numpy array}. `siglip_to_params` of the result gives `params` back exactly (the attention key
  biases included).

  Raises:
    ValueError: a projection is not the identity (HF's SigLIP has no projections: keep them
      frozen when fine-tuning, config.optim.freeze = (r"^model/.*/projection/.*",)).
    KeyError naming a parameter path that `params` lacks.
  """
  for path in _PROJECTIONS:
    if not np.array_equal(R.get(params, path), np.eye(arch.vision_width, dtype=np.float32)):
      raise ValueError(f"{'/'.join(path)} is not the identity matrix, and HF's SigLIP has no "
                       "projection to put it in; freeze the projections when fine-tuning "
                       "(config.optim.freeze)")
  state = R.from_params(params, _siglip_rules(arch))
  head = {k: v for k, v in state.items() if k.startswith(_MAP_ATTENTION + ".")}
  state = {k: v for k, v in state.items() if k not in head}
  state.update(R.join_attention(head))
  state["logit_scale"] = np.full((1,), logit_scale, np.float32)
  state["logit_bias"] = np.full((1,), logit_bias, np.float32)
  return state
