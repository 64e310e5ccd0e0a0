"""big_vision SigLIP checkpoints (`.npz`) -> clip_jax parameters, read with numpy alone.

A big_vision checkpoint is an `.npz` of the two-tower model's parameters flattened with "/":
"params/img/..." (the ViT), "params/txt/..." (the text transformer), "params/t" (the log of the
logit scale) and "params/b" (the logit bias), both of shape [1]. Flax names the layers:

* image: "embedding/{kernel [p, p, 3, D], bias}" (the patch conv), "pos_embedding" [1, N, D],
  "Transformer/encoderblock_<i>/..." and "Transformer/encoder_norm", then the attention-pooling
  head "MAPHead_0/{probe [1, 1, D], MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}";
* text: "Embed_0/embedding" [V, D], "pos_embedding" [1, L, D], "Encoder_0/encoderblock_<i>/..."
  and "Encoder_0/encoder_norm", then "head/{kernel [D, E], bias}";
* a block: "LayerNorm_0", "MultiHeadDotProductAttention_0/{query,key,value}/{kernel [D, H, d],
  bias [H, d]}" and ".../out/{kernel [H, d, D], bias}", "LayerNorm_1",
  "MlpBlock_0/{Dense_0,Dense_1}/{kernel [in, out], bias}".

Checkpoints written from a scanned encoder (`scan=True`) hold one "encoderblock/..." entry per
block parameter with the depth as a leading axis; both layouts load, per tower.

The model is `hf.SiglipArchitecture`'s (big_vision's SigLIP is the model HF ported): its layers
and activations are big_vision's (Flax LayerNorm epsilon 1e-6, tanh GELU), and our kernels are
theirs with the heads axis folded in, every attention projection with its bias (the towers'
`key_bias=True`, as for the HF and open_clip weights); the projections are identity matrices
(big_vision has none: the text head maps to the shared embedding).

    model, params = pretrained.load("big_vision", "webli_en_b16_224_63724782",
                                    checkpoint="webli_en_b16_224_63724782.npz")
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from clip_jax.pretrained import hf
from clip_jax.pretrained import rules as R

# big_vision's SigLIP releases, by their file stems (gs://big_vision/siglip/<name>.npz, the names
# of big_vision's SigLIP colab): image size and patch, then width, depth, heads and MLP size of
# the ViT and of the text tower (text positions 64 unless given, vocabulary 32000).
ARCHITECTURES: dict[str, hf.SiglipArchitecture] = {
    "webli_en_b16_224_63724782": hf.SIGLIP_ARCHITECTURES["google/siglip-base-patch16-224"],
    "webli_en_l16_256_60552751": hf.SiglipArchitecture(256, 16, 1024, 24, 16, 4096,
                                                       1024, 24, 16, 4096),
    "webli_en_l16_384_63634585": hf.SiglipArchitecture(384, 16, 1024, 24, 16, 4096,
                                                       1024, 24, 16, 4096),
    "webli_en_so400m_224_57633886": hf.SiglipArchitecture(224, 14, 1152, 27, 16, 4304,
                                                          1152, 27, 16, 4304, context_length=16),
    "webli_en_so400m_384_58765454": hf.SIGLIP_ARCHITECTURES["google/siglip-so400m-patch14-384"],
}
# The name that reads the architecture from the checkpoint's shapes (`architecture_of`).
FROM_SHAPES = "from_shapes"

_IMAGE, _TEXT = "params/img", "params/txt"
_ENCODERS = {_IMAGE: f"{_IMAGE}/Transformer", _TEXT: f"{_TEXT}/Encoder_0"}
_ATTENTION = "MultiHeadDotProductAttention_0"
_OTHER_KEYS = ("params/t", "params/b")


def architecture(name: str) -> hf.SiglipArchitecture | None:
  """The architecture named `name` in ARCHITECTURES, or None for FROM_SHAPES.

  Raises:
    ConfigError naming the known names.
  """
  return R.lookup({**ARCHITECTURES, FROM_SHAPES: None}, name, "big_vision architecture")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The {"/"-joined key: float32 array} of a big_vision `.npz` checkpoint.

  Raises:
    FileNotFoundError for a missing file; ValueError for a file numpy cannot read as `.npz`.
  """
  path = os.fspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r}: no such file")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: np.asarray(npz[key], np.float32) for key in npz.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"checkpoint {path!r} is not a big_vision .npz file ({e})") from None


def _scanned(state: Mapping[str, np.ndarray], tower: str) -> bool:
  """Whether `tower`'s blocks are stored scanned ("encoderblock/...", depth first)."""
  return any(k.startswith(f"{_ENCODERS[tower]}/encoderblock/") for k in state)


def _shape(state: Mapping[str, np.ndarray], key: str, ndim: int) -> tuple[int, ...]:
  """The shape of `state[key]`, which must have `ndim` axes.

  Raises:
    ValueError naming a missing key or one with another number of axes.
  """
  if key not in state:
    raise ValueError(f"the checkpoint is not a big_vision SigLIP model: missing key {key}")
  if state[key].ndim != ndim:
    raise ValueError(f"checkpoint key {key!r} has shape {state[key].shape}; a big_vision SigLIP "
                     f"model has {ndim} axes there")
  return state[key].shape


def architecture_of(state: Mapping[str, np.ndarray]) -> hf.SiglipArchitecture:
  """The architecture a big_vision SigLIP checkpoint's shapes give (widths, depths, heads, MLP
  sizes, patch and image size, text positions and vocabulary). The image size is the patch grid
  times the patch: a model trained at a size the patch does not divide reads as the size its
  patches cover (So400m/14 at 384 px as 378; load a release by its name to get 384).

  Raises:
    ValueError naming a key that is missing or has another number of axes, or the sizes
    clip_jax's SigLIP model cannot take (a non-square position grid, towers of different widths
    or a text head that changes the width).
  """
  sizes = {}
  for tower in (_IMAGE, _TEXT):
    encoder = _ENCODERS[tower]
    if _scanned(state, tower):
      block = f"{encoder}/encoderblock"
      depth, width, heads, _ = _shape(state, f"{block}/{_ATTENTION}/query/kernel", 4)
      mlp = _shape(state, f"{block}/MlpBlock_0/Dense_0/kernel", 3)[2]
    else:
      blocks = {int(m.group(1)) for k in state
                if (m := re.match(rf"{re.escape(encoder)}/encoderblock_(\d+)/", k))}
      depth = max(blocks, default=-1) + 1
      width, heads, _ = _shape(state, f"{encoder}/encoderblock_0/{_ATTENTION}/query/kernel", 3)
      mlp = _shape(state, f"{encoder}/encoderblock_0/MlpBlock_0/Dense_0/kernel", 2)[1]
    sizes[tower] = dict(width=width, layers=depth, heads=heads, mlp_dim=mlp)
  image, text = sizes[_IMAGE], sizes[_TEXT]
  patch = _shape(state, f"{_IMAGE}/embedding/kernel", 4)[0]
  patches = _shape(state, f"{_IMAGE}/pos_embedding", 3)[1]
  grid = int(round(np.sqrt(patches)))
  if grid * grid != patches:
    raise ValueError(f"checkpoint key '{_IMAGE}/pos_embedding' has shape "
                     f"{state[f'{_IMAGE}/pos_embedding'].shape}: not a square grid of patches")
  head = _shape(state, f"{_TEXT}/head/kernel", 2)
  if head != (image["width"], image["width"]):
    raise ValueError(f"checkpoint key '{_TEXT}/head/kernel' has shape {head}; clip_jax's SigLIP "
                     "model needs towers of one width, the text head mapping it to itself")
  return hf.SiglipArchitecture(
      image_size=grid * patch, patch_size=patch, vision_width=image["width"],
      vision_layers=image["layers"], vision_heads=image["heads"],
      vision_mlp_dim=image["mlp_dim"], text_width=text["width"], text_layers=text["layers"],
      text_heads=text["heads"], text_mlp_dim=text["mlp_dim"],
      context_length=_shape(state, f"{_TEXT}/pos_embedding", 3)[1],
      vocab_size=_shape(state, f"{_TEXT}/Embed_0/embedding", 2)[0])


def _layer_rules(ours: tuple[str, ...], theirs: str, norms: Mapping[str, str],
                 take: Callable[[np.ndarray], np.ndarray]) -> list[R.Rule]:
  """The rules of a block (or of the MAP head) under `theirs`: its LayerNorms (`norms`: their
  name -> ours), attention and MLP. `take` picks the block out of a scanned array (or is the
  identity)."""
  def heads_in(x: np.ndarray) -> np.ndarray:  # kernel [D, H, d] -> [D, H*d]; bias [H, d] -> [H*d]
    x = take(x)
    return x.reshape(x.shape[0], -1) if x.ndim == 3 else x.reshape(-1)

  def heads_out(x: np.ndarray) -> np.ndarray:  # kernel [H, d, D] -> [H*d, D]
    x = take(x)
    return x.reshape(-1, x.shape[-1])

  a = f"{theirs}/{_ATTENTION}"
  rules = [(ours + (norm, leaf), f"{theirs}/{name}/{leaf}", take, None)
           for name, norm in norms.items() for leaf in ("scale", "bias")]
  rules += [(ours + ("attn", proj, leaf), f"{a}/{proj}/{leaf}", heads_in, None)
            for proj in ("query", "key", "value") for leaf in ("kernel", "bias")]
  rules += [(ours + ("attn", "out", "kernel"), f"{a}/out/kernel", heads_out, None),
            (ours + ("attn", "out", "bias"), f"{a}/out/bias", take, None)]
  rules += [(ours + ("mlp", fc, leaf), f"{theirs}/MlpBlock_0/{dense}/{leaf}", take, None)
            for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2"))
            for leaf in ("kernel", "bias")]
  return rules


def _block_rules(ours: tuple[str, ...], tower: str, depth: int,
                 scanned: bool) -> list[R.Rule]:
  """The rules of a tower's `depth` blocks, ours `<ours>/block_<i>`: theirs
  "encoderblock_<i>/..." or, scanned, row i of "encoderblock/..."."""
  norms = {"LayerNorm_0": "attn_norm", "LayerNorm_1": "mlp_norm"}
  encoder = _ENCODERS[tower]
  return [rule for i in range(depth) for rule in _layer_rules(
      ours + (f"block_{i}",), f"{encoder}/encoderblock" + ("" if scanned else f"_{i}"), norms,
      (lambda x, i=i: x[i]) if scanned else R.same)]


def _unbatch(x: np.ndarray) -> np.ndarray:
  """[1, ...] (a position embedding, stored with a batch axis) -> [...]."""
  return x[0]


def _flatten_patches(x: np.ndarray) -> np.ndarray:
  """The patch conv kernel [p, p, C, D] -> our patch Linear's [p*p*C, D] (the same (row,
  column, channel) order)."""
  return x.reshape(-1, x.shape[-1])


def _rules(arch: hf.SiglipArchitecture, scanned: Mapping[str, bool]) -> list[R.Rule]:
  """Every parameter of the model but the (identity) projections; import only (the rules'
  export functions are None: clip_jax writes no big_vision checkpoints)."""
  image, text = ("image", "encoder"), ("text", "encoder")
  head, map_head = f"{_IMAGE}/MAPHead_0", image + ("map_head",)
  return [
      (image + ("patch_embed", "kernel"), f"{_IMAGE}/embedding/kernel", _flatten_patches, None),
      (image + ("patch_embed", "bias"), f"{_IMAGE}/embedding/bias", R.same, None),
      (image + ("pos_embedding",), f"{_IMAGE}/pos_embedding", _unbatch, None),
      *_block_rules(image + ("transformer",), _IMAGE, arch.vision_layers, scanned[_IMAGE]),
      *[(image + ("final_norm", leaf), f"{_ENCODERS[_IMAGE]}/encoder_norm/{leaf}", R.same, None)
        for leaf in ("scale", "bias")],
      (map_head + ("probe",), f"{head}/probe", R.same, None),
      *_layer_rules(map_head, head, {"LayerNorm_0": "norm"}, R.same),
      (text + ("token_embedding",), f"{_TEXT}/Embed_0/embedding", R.same, None),
      (text + ("pos_embedding",), f"{_TEXT}/pos_embedding", _unbatch, None),
      *_block_rules(text + ("transformer",), _TEXT, arch.text_layers, scanned[_TEXT]),
      *[(text + ("final_norm", leaf), f"{_ENCODERS[_TEXT]}/encoder_norm/{leaf}", R.same, None)
        for leaf in ("scale", "bias")],
      *[(text + ("head", leaf), f"{_TEXT}/head/{leaf}", R.same, None)
        for leaf in ("kernel", "bias")],
  ]


def to_params(state: Mapping[str, np.ndarray], arch: hf.SiglipArchitecture
              ) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
  """big_vision SigLIP checkpoint -> (clip_jax params of `arch.model_config()`, the `config.loss`
  that starts from its logit scale t and bias b: the sigmoid loss).

  Args:
    state: {"/"-joined key: float32 array}, as `read_npz` gives; blocks plain or scanned.
    arch: the architecture the checkpoint has (`architecture(name)` or `architecture_of`).

  Raises:
    ValueError naming the missing keys, the keys this architecture has no place for, a key
    whose shape differs from the one the architecture needs, or a scanned key whose depth
    differs from the tower's.
  """
  scanned = {tower: _scanned(state, tower) for tower in (_IMAGE, _TEXT)}
  depths = {_IMAGE: arch.vision_layers, _TEXT: arch.text_layers}
  for key in sorted(state):
    for tower, encoder in _ENCODERS.items():
      if key.startswith(f"{encoder}/encoderblock/") and state[key].shape[:1] != (depths[tower],):
        raise ValueError(f"checkpoint key {key!r} has shape {state[key].shape}, which does not "
                         f"fit this architecture ({arch}): a scanned block parameter needs the "
                         f"depth {depths[tower]} first")
  params = hf.siglip_params(state, _rules(arch, scanned), arch,
                            f"a big_vision SigLIP model of this architecture ({arch})",
                            _OTHER_KEYS)
  return params, hf.siglip_loss(state["params/t"], state["params/b"])
