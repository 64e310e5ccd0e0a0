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
from clip_jax.registry import ConfigError

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

  def pictures(self) -> dict[str, bytes]:
    """PNG pictures of the last call, by name ({} before a call, or for an evaluator that draws
    none); `clip_jax.evaluate` writes them next to the metrics."""
    return {}


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


def labelled_images(eval_set: EvalSet, label: str, split: str,
                    field: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(images [n, H, W, 3], int64 labels [n], class names) of the images of `eval_set` that carry
  label set `label` (unlabelled images, -1, are left out).

  Raises:
    ConfigError: naming `field` (the evaluator's `label` field) when the split has no such label
      set.
  """
  if label not in eval_set.labels:
    raise ConfigError(
        f"{field} = {label!r} is not a label set of split {split!r}; choose one of: "
        f"{', '.join(sorted(eval_set.labels)) or '(the split has no labels)'}")
  labels, names = eval_set.labels[label]
  labels = np.asarray(labels, np.int64)
  keep = labels >= 0
  return np.asarray(eval_set.images)[keep], labels[keep], [str(n) for n in names]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeFields:
  """The fields of a probe on frozen image embeddings, fitted on one split and tested on another.

  Attributes:
    train_split: the split the probe is fitted on (e.g. "train").
    test_split: the split that is classified (e.g. "heldout").
    label: the label set of both splits (a key of `eval_set.labels`, e.g. "category").
    image_modality: the modality name `embed` gets the images under.
  """

  train_split: str = schema.field("train", schema.string(nonempty=True))
  test_split: str = schema.field(check=schema.string(nonempty=True))
  label: str = schema.field(check=schema.string(nonempty=True))
  image_modality: str = "image"


class ProbeEvaluator(Evaluator):
  """Base of the probes: loads the labelled images of `train_split` and `test_split`
  (`train_images`, `train_labels`, `test_images`, `test_labels`, `num_classes`) and embeds them
  (`embed_splits`). Subclasses' `Fields` extend `ProbeFields`.

  Raises:
    ConfigError: a label set that a split lacks, or splits whose class names differ.
  """

  def __init__(self, cfg: Mapping[str, Any], *, eval_name: str, tokenizer: Tokenizer,
               load_split: LoadSplitFn):
    del tokenizer  # images only
    super().__init__(cfg, eval_name=eval_name)
    f = self.fields
    (self.train_images, self.train_labels, names), (self.test_images, self.test_labels,
                                                    test_names) = (
        labelled_images(load_split(split), f.label, split, self.field_path("label"))
        for split in (f.train_split, f.test_split))
    if list(names) != list(test_names):
      raise ConfigError(f"{self.field_path('label')} = {f.label!r}: the class names of splits "
                        f"{f.train_split!r} and {f.test_split!r} differ; the probe needs one "
                        "label set")
    self.num_classes = len(names)

  def embed_splits(self, embed: EmbedFn) -> tuple[np.ndarray, np.ndarray]:
    """(train embeddings [N, d], test embeddings [M, d]), unit-norm float32."""
    f = self.fields
    return (embed_checked(embed, f.image_modality, self.train_images, "images"),
            embed_checked(embed, f.image_modality, self.test_images, "images"))

  def counts(self) -> dict[str, float]:
    """The probe's `<eval_name>/num_classes`, `num_train_images` and `num_test_images`."""
    return {f"{self.eval_name}/num_classes": float(self.num_classes),
            f"{self.eval_name}/num_train_images": float(len(self.train_labels)),
            f"{self.eval_name}/num_test_images": float(len(self.test_labels))}
