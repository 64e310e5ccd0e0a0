"""Shared pieces of the evaluators: the base class, the fields of a split, embedding checks.

An evaluator is built once from its config entry `config.evals.<eval_name>` (loading its data and
tokenising its texts at construction) and then called with an `embed` function each time the
trainer evaluates:

  metrics = evaluator(embed)   # flat {"<eval_name>/<metric>": float}

`embed(modality, inputs)` maps a numpy batch of one modality (images float32 [N, H, W, 3] as
`load_eval_split` normalises them, or token ids int32 [N, L]) to L2-normalised embeddings float32
[N, d]; the trainer does the device batching and sharding. Metrics are computed on the host in numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from clip_jax import schema
from clip_jax.evals.registry import EVALUATORS

EmbedFn = Callable[[str, np.ndarray], np.ndarray]


class Tokenizer(Protocol):
  def encode(self, texts: list[str]) -> np.ndarray:
    """list of M strings -> int32 [M, L] token ids."""
    ...


class EvalSet(Protocol):
  """What `clip_jax.data.load_eval_split` returns (only the fields the evaluators read)."""
  images: np.ndarray  # float32 [N, H, W, 3], normalised as training (config.data.preprocess)
  texts: list[str]  # M captions
  text_image: np.ndarray  # int32 [M]: the image each text describes
  labels: dict[str, tuple[np.ndarray, list[str]]]  # name -> (int32 [N] class index, class names)


LoadSplitFn = Callable[[str], EvalSet]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitFields:
  """The fields of an evaluator on one eval split (`config.evals.<eval_name>`).

  Attributes:
    split: the split passed to `load_eval_split` (e.g. "heldout").
    image_modality: the modality name `embed` gets the images under.
    text_modality: the modality name `embed` gets the token ids under.
  """

  split: str = schema.field(check=schema.string(nonempty=True))
  image_modality: str = "image"
  text_modality: str = "text"


class Evaluator:
  """Base class: reads and checks the evaluator's config fields.

  Subclasses set `Fields` (a `clip_jax.schema` dataclass of their fields besides `name`) and
  implement `__call__`. `self.fields` holds the parsed values; an unknown, missing or invalid
  field raises ConfigError naming `config.evals.<eval_name>.<field>`.
  """

  Fields: type

  def __init__(self, cfg: Mapping[str, Any], *, eval_name: str):
    self.eval_name = eval_name
    self.fields = EVALUATORS.parse(cfg, f"config.evals.{eval_name}")

  def field_path(self, field: str) -> str:
    """The config path of one of this evaluator's fields, for error messages."""
    return f"config.evals.{self.eval_name}.{field}"

  def __call__(self, embed: EmbedFn) -> dict[str, float]:
    raise NotImplementedError


def embed_checked(embed: EmbedFn, modality: str, inputs: np.ndarray,
                  what: str) -> np.ndarray:
  """Calls `embed(modality, inputs)` and returns float32 [N, d] unit-norm rows.

  Rows are re-normalised here (a no-op for an embed that already normalises) so that dot
  products are cosine similarities. A zero row stays zero; NaNs pass through.

  Raises:
    ValueError: the result is not [N, d] with N = len(inputs).
  """
  out = np.asarray(embed(modality, inputs), dtype=np.float32)
  n = len(inputs)
  if out.ndim != 2 or out.shape[0] != n:
    raise ValueError(f"embed({modality!r}, <{what}: {n} rows>) returned shape {out.shape}; "
                     f"expected [{n}, d]")
  norm = np.linalg.norm(out, axis=1, keepdims=True)
  return out / np.maximum(norm, 1e-12)
