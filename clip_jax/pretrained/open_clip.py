"""open_clip / OpenAI CLIP ViT checkpoints <-> clip_jax parameters.

A state dict is the flat {key: array} of an open_clip `CLIP` model (`model.state_dict()`), which
keeps OpenAI's key names: "visual.*" for the image tower, "transformer.*", "token_embedding.*",
"positional_embedding", "ln_final.*" and "text_projection" for the text tower, and
"logit_scale". The clip_jax side is the `MultiTower` parameter tree of `config.model`
(`clip_jax.models.model`), {"image" | "text": {"encoder": ..., "projection": {"kernel"}}}, plus
the softmax loss's scale.

    arch = architecture("ViT-B-32")
    params, logit_scale = to_params(read_state_dict("model.safetensors"), arch)
    # params: those of make_model(arch.model_config(), arch.inputs(), ...); and back:
    state_dict = from_params(params, arch, logit_scale)

(`clip_jax.pretrained.load` does the first two lines and builds the model.)

How the layers correspond (all float32; our kernels are [in, out], torch's Linear weights
[out, in]):

* patch embedding: torch's bias-free conv1 [D, C, p, p] is our `patch_embed` Linear over patches
  flattened in (row, column, channel) order, [p*p*C, D] (`patch_bias=False`);
* attention: torch's in_proj [3D, D] splits into our query, key and value Linears. The towers
  keep the key bias (`key_bias=True`), although q·b_k is the same for every key and the softmax
  cancels it, so that the parameter count is open_clip's and the export gives it back;
* ln_pre is our `pre_norm`, ln_post / ln_final our `final_norm` (the class-token pooling takes
  the first token after it, as open_clip does);
* text pooling: open_clip takes the token with the largest id ("argmax", the EOS token 49407);
  ours, "eos", takes the last non-pad token. They are the same token for the rows of CLIP's
  tokenizer (clip_jax's "clip_bpe"), whose EOS is always the last non-pad token. Our text tower
  also masks the trailing pads as attention keys, open_clip's does not; under the causal mask
  no token before them attends to them anyway, so the EOS features are the same;
* the logit scale: open_clip's `logit_scale` is log(1/T), the raw parameter t' with logits
  scaled by t = exp(t'). clip_jax's softmax loss stores its scale the same way
  (`params["loss"]["scale"]` = t', `config.loss.init_scale`), so the value carries over as it
  is; `loss_config` makes the `config.loss` that starts from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import types
import warnings
import zipfile
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from clip_jax.models.model import abstract_model, parse_model_config, split_params
from clip_jax.pretrained import rules as R

# open_clip's LayerNorm epsilon (torch's default) and attention head width.
NORM_EPS = 1e-5
HEAD_WIDTH = 64
# Keys of a state dict that carry no parameter of ours: OpenAI's JIT archives store the model's
# sizes as values; the causal mask is a buffer.
IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
# The torchvision modules that importing the open_clip package touches (image transforms, one
# batch-norm class); `open_clip_from_wheel` stands in for them.
TORCHVISION_STUBS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                     "torchvision.ops", "torchvision.ops.misc")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The shape of an open_clip ViT CLIP model: the values of its model_configs/<name>.json.

  Attributes:
    embed_dim: the shared embedding size.
    image_size, patch_size: the image side in pixels and the patch side.
    vision_width, vision_layers, vision_heads: the image transformer (heads: width / 64).
    text_width, text_layers, text_heads: the text transformer.
    quick_gelu: QuickGELU in every MLP (OpenAI's weights and the "-quickgelu" models), else
      exact GELU.
    context_length, vocab_size: the text tower's positions and token ids (CLIP's tokenizer).
  """

  embed_dim: int
  image_size: int
  patch_size: int
  vision_width: int
  vision_layers: int
  vision_heads: int
  text_width: int
  text_layers: int
  text_heads: int
  quick_gelu: bool = False
  context_length: int = 77
  vocab_size: int = 49408

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> Architecture:
    """The architecture of an open_clip model config (the dict of a model_configs/*.json file).

    Raises:
      ValueError naming the first option this converter does not handle (e.g. a timm or
      ResNet image tower, attention pooling, an HF text tower, layer scale, an MLP ratio).
    """
    vision, text = dict(config["vision_cfg"]), dict(config["text_cfg"])
    handled = ({"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"},
               {"image_size", "layers", "width", "patch_size", "head_width"},
               {"context_length", "vocab_size", "width", "heads", "layers"})
    for where, given, known in zip(("", "vision_cfg.", "text_cfg."), (config, vision, text),
                                   handled):
      other = sorted(set(given) - known)
      if other:
        raise ValueError(f"open_clip config option {where}{other[0]} is not supported by the "
                         "clip_jax converter (it handles ViT image and transformer text towers "
                         "with open_clip's defaults)")
    return cls(embed_dim=config["embed_dim"], image_size=vision["image_size"],
               patch_size=vision["patch_size"], vision_width=vision["width"],
               vision_layers=vision["layers"],
               vision_heads=vision["width"] // vision.get("head_width", HEAD_WIDTH),
               text_width=text["width"], text_layers=text["layers"], text_heads=text["heads"],
               quick_gelu=bool(config.get("quick_gelu", False)),
               context_length=text.get("context_length", cls.context_length),
               vocab_size=text.get("vocab_size", cls.vocab_size))

  def open_clip_config(self) -> dict[str, Any]:
    """open_clip's model config dict of this architecture (a model_configs/*.json file's
    values, head_width given); `from_config` of it gives this architecture back."""
    return dict(embed_dim=self.embed_dim, quick_gelu=self.quick_gelu,
                vision_cfg=dict(image_size=self.image_size, layers=self.vision_layers,
                                width=self.vision_width, patch_size=self.patch_size,
                                head_width=self.vision_width // self.vision_heads),
                text_cfg=dict(context_length=self.context_length, vocab_size=self.vocab_size,
                              width=self.text_width, heads=self.text_heads,
                              layers=self.text_layers))

  def model_config(self) -> ml_collections.ConfigDict:
    """The clip_jax `config.model` of this architecture (float32, no remat)."""
    layers = dict(norm_eps=NORM_EPS, activation="quick_gelu" if self.quick_gelu else "gelu",
                  mlp_ratio=4.0, key_bias=True)
    image = dict(name="vit", patch_size=self.patch_size, width=self.vision_width,
                 depth=self.vision_layers, num_heads=self.vision_heads, pooling="cls",
                 pre_norm=True, patch_bias=False, **layers)
    text = dict(name="text_transformer", vocab_size=self.vocab_size,
                context_length=self.context_length, width=self.text_width,
                depth=self.text_layers, num_heads=self.text_heads, causal=True, pooling="eos",
                **layers)
    return ml_collections.ConfigDict(dict(
        embed_dim=self.embed_dim, dtype="float32", remat=False,
        towers=dict(image=image, text=text)))

  def data_config(self) -> ml_collections.ConfigDict:
    """The `config.data` fields these weights expect: image_size, max_len (the context length),
    the "clip_bpe" tokenizer and CLIP's normalisation."""
    return ml_collections.ConfigDict(dict(
        image_size=self.image_size, max_len=self.context_length,
        tokenizer=dict(name="clip_bpe"), preprocess=dict(normalize="clip")))

  def inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch entries the model is built for: "image" float32 [1, S, S, 3] (S =
    image_size) and "text" int32 [1, context_length]."""
    size = self.image_size
    return {"image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
            "text": jax.ShapeDtypeStruct((1, self.context_length), jnp.int32)}


# open_clip's model_configs/<name>.json values (open_clip_torch 3.3.0). OpenAI's released
# weights use QuickGELU: load them as the "-quickgelu" names.
ARCHITECTURES: dict[str, Architecture] = {
    "ViT-B-32": Architecture(512, 224, 32, 768, 12, 12, 512, 12, 8),
    "ViT-B-32-quickgelu": Architecture(512, 224, 32, 768, 12, 12, 512, 12, 8, quick_gelu=True),
    "ViT-B-16": Architecture(512, 224, 16, 768, 12, 12, 512, 12, 8),
    "ViT-B-16-quickgelu": Architecture(512, 224, 16, 768, 12, 12, 512, 12, 8, quick_gelu=True),
    "ViT-L-14": Architecture(768, 224, 14, 1024, 24, 16, 768, 12, 12),
    "ViT-L-14-quickgelu": Architecture(768, 224, 14, 1024, 24, 16, 768, 12, 12,
                                       quick_gelu=True),
}


def architecture(name: str) -> Architecture:
  """The architecture named `name` in ARCHITECTURES.

  Raises:
    ConfigError naming the known names.
  """
  return R.lookup(ARCHITECTURES, name, "open_clip architecture")


def loss_config(logit_scale: float) -> ml_collections.ConfigDict:
  """The `config.loss` that continues training from open_clip's `logit_scale` (t' = log t):
  the softmax (CLIP) loss starting at that scale, t clamped at 100 as open_clip does."""
  return ml_collections.ConfigDict(dict(name="softmax", init_scale=float(logit_scale),
                                        max_scale=100.0))


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {key: float32 numpy array}.

  `.safetensors` files are read with the `safetensors` package's numpy API; other files
  (`.pt`, `.bin`, `.pth`) with PyTorch: a plain state dict, one wrapped as {"state_dict": ...}
  (open_clip's training checkpoints, keys may start with "module."), or an OpenAI TorchScript
  archive.

  Raises:
    FileNotFoundError for a missing file; ImportError naming the package to install.
  """
  path = os.fspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r}: no such file")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError as e:
      raise ImportError("reading .safetensors checkpoints needs the `safetensors` package "
                        "(pip install safetensors)") from e
    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs PyTorch (pip install torch); .safetensors "
                      "checkpoints need only the `safetensors` package") from e
  if _is_torchscript(path):
    with warnings.catch_warnings():  # deprecated, but the one reader of these archives
      warnings.simplefilter("ignore", DeprecationWarning)
      state = torch.jit.load(path, map_location="cpu").state_dict()
  else:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:
      state = state["state_dict"]
  return {k.removeprefix("module."): v.detach().float().numpy() for k, v in state.items()}


def _is_torchscript(path: str) -> bool:
  """A TorchScript archive (OpenAI's CLIP releases): a zip with a `constants.pkl`."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith("/constants.pkl") for name in archive.namelist())


# open_clip's names of a block's parts (`rules.blocks`).
_BLOCK_NAMES = ("ln_1", "attn", "ln_2", "mlp.c_fc", "mlp.c_proj")


def _rules(arch: Architecture) -> list[R.Rule]:
  """Every parameter of the model: where it lives in the state dict and how it is laid out."""
  width = arch.vision_width
  image, text = ("image", "encoder"), ("text", "encoder")
  rules: list[R.Rule] = [
      *R.patch_embedding(image + ("patch_embed",), "visual.conv1", arch.patch_size, bias=False),
      (image + ("cls",), "visual.class_embedding", lambda x: x.reshape(1, 1, width),
       lambda x: x.reshape(width)),
      (image + ("pos_embedding",), "visual.positional_embedding", R.same, R.same),
      *R.norm(image + ("pre_norm",), "visual.ln_pre"),
      *R.blocks(image + ("transformer",), "visual.transformer.resblocks", arch.vision_layers,
                _BLOCK_NAMES),
      *R.norm(image + ("final_norm",), "visual.ln_post"),
      (("image", "projection", "kernel"), "visual.proj", R.same, R.same),
      (text + ("token_embedding",), "token_embedding.weight", R.same, R.same),
      (text + ("pos_embedding",), "positional_embedding", R.same, R.same),
      *R.blocks(text + ("transformer",), "transformer.resblocks", arch.text_layers,
                _BLOCK_NAMES),
      *R.norm(text + ("final_norm",), "ln_final"),
      (("text", "projection", "kernel"), "text_projection", R.same, R.same),
  ]
  return rules


@functools.cache
def abstract_structure(arch: Any) -> tuple[nnx.GraphDef, dict[tuple[str, ...], tuple[int, ...]]]:
  """The clip_jax model of `arch` (an `Architecture`, or any hashable architecture with
  `model_config()` and `inputs()`, e.g. `hf.SiglipArchitecture`), built abstractly (once per
  architecture): its graphdef and {param path: shape}."""
  graphdef, params = split_params(abstract_model(parse_model_config(arch.model_config()),
                                                 arch.inputs()))
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return graphdef, {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def to_params(state_dict: Mapping[str, Any], arch: Architecture) -> tuple[dict[str, Any], float]:
  """open_clip state dict -> (clip_jax params of `arch.model_config()`, logit_scale).

  Args:
    state_dict: {key: array-like} of an open_clip (or OpenAI) CLIP model of this architecture,
      e.g. from `read_state_dict`. Values are converted to float32.
    arch: the architecture the checkpoint has (`architecture(name)`).

  Returns:
    The `MultiTower` parameter tree (nested dicts of float32 numpy arrays) and open_clip's
    `logit_scale` t' (t = exp(t'); see `loss_config`).

  Raises:
    ValueError naming the missing keys, the keys this architecture has no place for (a
    checkpoint of another architecture), or a key whose shape differs from the one the
    architecture needs.
  """
  state = R.split_attention({k: np.asarray(v, np.float32) for k, v in state_dict.items()})
  _, expected = abstract_structure(arch)
  state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
  params = R.to_params(state, _rules(arch), expected,
                       f"an open_clip model of this architecture ({arch})", ("logit_scale",))
  return params, float(state["logit_scale"].reshape(()))


def from_params(params: Mapping[str, Any], arch: Architecture,
                logit_scale: float) -> dict[str, np.ndarray]:
  """clip_jax params of `arch.model_config()` -> open_clip state dict {key: float32 numpy array}
  (what `open_clip.create_model(name).load_state_dict` takes, after `torch.from_numpy`).

  `to_params` of the result gives `params` back exactly, and `from_params` of `to_params(sd)`
  gives `sd` back exactly (the attention key biases included).

  Raises:
    KeyError naming a parameter path that `params` lacks.
  """
  state = R.from_params(params, _rules(arch))
  state["logit_scale"] = np.asarray(logit_scale, np.float32)
  return R.join_attention(state)


def _placeholder(attr: str) -> type:
  """An empty class named `attr`; dunder names are missing as usual (`inspect` reads them)."""
  if attr.startswith("__"):
    raise AttributeError(attr)
  return _Placeholder(attr, (), {})


class _Placeholder(type):
  """An empty class whose every attribute is another one (`InterpolationMode.BICUBIC`)."""

  def __getattr__(cls, attr: str) -> type:
    return _placeholder(attr)


def _placeholder_module(name: str) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__getattr__ = _placeholder  # any imported name
  return module


@contextlib.contextmanager
def open_clip_from_wheel(wheel: str | os.PathLike, folder: str | os.PathLike) -> Iterator[Any]:
  """The `open_clip` package of an open_clip_torch wheel, imported without installing it and
  without torchvision (for parity checks and benchmarks on machines where torchvision does not
  import; PyTorch itself is needed).

  The wheel's `open_clip/` folder is unpacked into `folder` (put on sys.path). While open_clip is
  imported, minimal stand-ins for the `TORCHVISION_STUBS` modules are in sys.modules: every name
  asked of them is an empty placeholder class, and so are its attributes. The model and loss code
  (`open_clip.model.CLIP`, `open_clip.loss`) uses none of them; the image transforms do. Its
  optional import of `transformers` is blocked (a None entry in sys.modules: it would look for
  the real torchvision), so open_clip goes without its Hugging Face towers. On exit, the
  stand-ins and every `open_clip` module leave sys.modules (what was there before is put back)
  and `folder` leaves sys.path.

  Raises:
    FileNotFoundError: `wheel` does not exist. ImportError: PyTorch is missing.
  """
  with zipfile.ZipFile(wheel) as archive:
    archive.extractall(folder, [n for n in archive.namelist() if n.startswith("open_clip/")])
  stubs: dict[str, types.ModuleType | None] = {
      name: _placeholder_module(name) for name in TORCHVISION_STUBS}
  for name, module in stubs.items():  # each submodule an attribute of its parent
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(stubs[parent], child, module)
  stubs["transformers"] = None
  saved = {name: sys.modules[name] for name in stubs if name in sys.modules}
  sys.modules.update(stubs)
  sys.path.insert(0, str(folder))
  try:
    import open_clip  # noqa: PLC0415  (from the unpacked wheel)
    yield open_clip
  finally:
    sys.path.remove(str(folder))
    for name in [*stubs, *(n for n in sys.modules if n.split(".")[0] == "open_clip")]:
      sys.modules.pop(name, None)
    sys.modules.update(saved)
