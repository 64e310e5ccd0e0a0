"""The registry of data sources, selected by `config.data.name`, and the interface they implement.

A source is registered as a factory `fn(data_config) -> DataSource` with the schema of its own
`config.data` fields, a subclass of `SourceFields` (see `clip_jax.schema`); `config.data` also
holds the tokenizer's and the pipeline's fields (`PipelineFields`), which `parse_source` leaves
out:

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class MyFields(SourceFields):
      path: str = schema.field(check=schema.string(nonempty=True))

    @SOURCES.register("my_source", fields=MyFields)
    def _build(data_config) -> DataSource:
      f: MyFields = parse_source(data_config, "my_source")
      ...

A `DataSource` serves a fixed, finite list of training units by index (a unit is one image-text
example, or one object with several images and captions to draw from) plus named evaluation
splits. The batching, shuffling, per-host slicing and resumable position live in
`clip_jax.data.pipeline`, so a new source only implements the five abstract members below.

A source may also render extra image views of its training units (e.g. a sketch of the same
object) for multi-view training: it lists them in `view_names` and renders them in `train_view`.
The pipeline adds the views named in `config.data.extra_views` to every training batch.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from clip_jax import schema
from clip_jax.data import cache
from clip_jax.data import preprocess as preprocess_lib
from clip_jax.registry import ConfigError, Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceFields:
  """The `config.data` fields every data source takes; a source's schema subclasses it (its
  factory reads them with `parse_source`).

  Attributes:
    image_size: the side of every image in pixels, in [4, 4096].
    cache_dir: the local data cache ("" = $CLIP_JAX_CACHE or ~/.cache/clip_jax; checked by
      `cache.resolve_cache_dir`).
  """

  image_size: int = schema.field(check=schema.integer(4, 4096))
  cache_dir: Any = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineFields:
  """The `config.data` fields of the tokenizer and the pipeline, not of the source.

  Attributes:
    tokenizer: the tokenizer's ConfigDict (`name` and its fields; `clip_jax.data.tokenizer`).
    max_len: tokens per text row, in [2, 2**20].
    augment: random whole-pixel shifts of the training images.
    extra_views: names of the source's extra image views to add to every training batch
      (checked against the source by the pipeline).
    captions_per_example: rows per training unit (>= 1), each with another caption.
    preprocess: the `config.data.preprocess` ConfigDict (random resized crop, flip,
      normalisation), read as `preprocess.PreprocessFields`; missing = its defaults.
    num_threads: background threads that build the next training batches (grain); 0 builds
      each batch synchronously in `next()`.
    prefetch: training batches built ahead of the one being consumed (>= 1; with num_threads
      > 0).
  """

  tokenizer: Any = schema.field()
  max_len: int = schema.field(check=schema.integer(2, 1 << 20))
  augment: bool = False
  extra_views: Any = ()
  captions_per_example: int = schema.field(1, schema.integer(low=1))
  preprocess: Any = schema.field(factory=dict, check=preprocess_lib.parse)
  num_threads: int = schema.field(2, schema.integer(0, 256))
  prefetch: int = schema.field(2, schema.integer(1, 1024))


PIPELINE_FIELDS = tuple(schema.defaults(PipelineFields))
# `config.data` fields that are not one source's own: kept when the source is switched by name.
SHARED_FIELDS = PIPELINE_FIELDS + tuple(schema.defaults(SourceFields))

SOURCES: Registry = Registry("data source", "config.data.name")


@dataclasses.dataclass
class EvalSet:
  """A fixed evaluation split.

  Attributes:
    images: float32 [N, H, W, 3] in [-1, 1] (`load_eval_split` renormalises them when
      config.data.preprocess.normalize asks for another mapping).
    texts: M texts.
    text_image: int32 [M], the index into `images` of the image each text describes.
    labels: label name (e.g. "category") -> (int32 [N] class index of each image, or -1 for an
      image without that label, which classification skips; class names).
  """
  images: np.ndarray
  texts: list[str]
  text_image: np.ndarray
  labels: dict[str, tuple[np.ndarray, list[str]]]

  def __post_init__(self):
    self.images = np.asarray(self.images, dtype=np.float32)
    self.text_image = np.asarray(self.text_image, dtype=np.int32)
    self.texts = list(self.texts)
    n = len(self.images)
    if self.images.ndim != 4 or self.images.shape[-1] != 3:
      raise ValueError(f"EvalSet.images has shape {self.images.shape}; expected [N, H, W, 3]")
    if self.text_image.shape != (len(self.texts),):
      raise ValueError(f"EvalSet.text_image has shape {self.text_image.shape}; expected "
                       f"({len(self.texts)},), one image index per text")
    if len(self.texts) and (self.text_image.min() < 0 or self.text_image.max() >= n):
      raise ValueError(f"EvalSet.text_image values must lie in [0, {n})")
    labels = {}
    for name, (index, classes) in self.labels.items():
      index = np.asarray(index, dtype=np.int32)
      classes = list(classes)
      if index.shape != (n,):
        raise ValueError(f"EvalSet.labels[{name!r}] has shape {index.shape}; expected ({n},)")
      if n and (index.min() < -1 or index.max() >= len(classes)):
        raise ValueError(f"EvalSet.labels[{name!r}] values must lie in [0, {len(classes)}), "
                         "or be -1 for an unlabelled image")
      labels[name] = (index, classes)
    self.labels = labels


def draw_index(draws: Any, n: Any) -> Any:
  """The index in [0, n) that uniform draws in [0, 1) pick (`DataSource.train_examples`):
  floor(draw * n), capped at n - 1. Scalars or arrays (int64)."""
  return np.minimum((np.asarray(draws) * n).astype(np.int64), np.asarray(n) - 1)


class DataSource(abc.ABC):
  """Training units by index plus named evaluation splits, all at one image size.

  Attributes:
    name: the registered name (used in cache keys and iterator states).
    image_size: the side of every image in pixels.
  """
  name: str
  image_size: int

  @property
  @abc.abstractmethod
  def num_train(self) -> int:
    """The number of training units; the pipeline shuffles unit indices [0, num_train)."""

  @abc.abstractmethod
  def train_captions(self) -> list[str]:
    """Every training caption (the tokenizer is fitted on these and on nothing else)."""

  @abc.abstractmethod
  def train_examples(self, units: np.ndarray,
                     draws: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Builds the training examples for some units, touching only those units.

    Args:
      units: int64 [n] unit indices in [0, num_train).
      draws: float64 [n, 2] uniform numbers in [0, 1) that pick, for a unit with several images
        or captions, the image (column 0) and the caption (column 1); sources with one image
        and one caption per unit ignore them.

    Returns:
      (uint8 [n, image_size, image_size, 3] RGB images, n captions).
    """

  @abc.abstractmethod
  def eval_split(self, split: str) -> EvalSet:
    """The named evaluation split; raises ConfigError for an unknown name."""

  @property
  @abc.abstractmethod
  def eval_splits(self) -> tuple[str, ...]:
    """The names `eval_split` accepts."""

  @property
  def skipped(self) -> dict[str, int]:
    """Samples skipped as bad input so far, reason -> count, cumulative (the training loop logs
    them as `data/skipped/<reason>`); empty for a source that reads no users' files."""
    return {}

  @property
  def view_names(self) -> tuple[str, ...]:
    """The extra image views `train_view` renders (none unless a source overrides this)."""
    return ()

  def train_view(self, view: str, units: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Renders extra view `view` (one of `view_names`) of some training units.

    Args:
      view: the view's name.
      units, draws: as for `train_examples` (the same values the pipeline passed there, so a
        view can follow the image draw of a unit with several images).

    Returns:
      uint8 [n, image_size, image_size, 3] RGB images, row i a view of the object in row i of
      `train_examples(units, draws)`.
    """
    raise NotImplementedError(f"data source {self.name!r} has no extra image views")

  def unknown_split(self, split: str) -> ConfigError:
    """The error for an evaluation split this source does not have."""
    return ConfigError(
        f"split {split!r} (config.evals.<name>.split) is not a split of data source "
        f"{self.name!r}; choose one of: {', '.join(self.eval_splits)}")


# ------------------------------------------------------------------------------------------------
# Building sources (memoised per process: the tokenizer, the iterator and the evaluators of one
# run share one source object).

_MEMO: dict[str, DataSource] = {}
_MEMO_SIZE = 4


def plain(value: Any) -> Any:
  """A config value as plain JSON-like data: ConfigDicts and dicts as dicts with str keys, tuples
  and lists as lists (for keys and comparisons)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


def _source_part(data_config: Any) -> dict[str, Any]:
  return {k: v for k, v in data_config.items() if k not in PIPELINE_FIELDS}


def parse_source(data_config: Any, name: str) -> SourceFields:
  """Reads the fields of source `name` (its schema in SOURCES) from `config.data`, leaving out the
  pipeline's (`PipelineFields`); raises ConfigError naming `config.data.<field>`."""
  return SOURCES.parse(_source_part(data_config), "config.data", name=name)


def parse_data(data_config: Any) -> tuple[SourceFields, PipelineFields]:
  """Reads all of `config.data`: the source's fields (its schema in SOURCES) and the pipeline's.

  Raises:
    ConfigError: naming `config.data.<field>`: no or an unknown source `name`, a field that is
      neither the source's nor the pipeline's (with the closest known one), a missing required
      field or a failed check.
  """
  name = SOURCES.select(data_config, "config.data")
  owner = f"data source {name!r}"
  known = [*schema.defaults(SOURCES.schema(name)), *PIPELINE_FIELDS]
  schema.reject_unknown([k for k in data_config.keys() if k != "name"], known, "config.data",
                        owner)
  pipeline = {k: v for k, v in data_config.items() if k in PIPELINE_FIELDS}
  return (parse_source(data_config, name),
          schema.parse(PipelineFields, pipeline, "config.data", owner))


def build_source(data_config: Any) -> DataSource:
  """Builds (or returns the memoised) data source selected by `config.data.name`."""
  factory = SOURCES.get(data_config.get("name"))
  key = json.dumps([plain(_source_part(data_config)), str(cache.resolve_cache_dir(data_config))],
                   sort_keys=True, default=repr)
  if key not in _MEMO:
    source = factory(data_config)
    if len(_MEMO) >= _MEMO_SIZE:
      _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = source
  return _MEMO[key]


def clear_source_memo() -> None:
  """Forgets memoised sources (tests use this to force a rebuild from the on-disk cache)."""
  _MEMO.clear()


def unique(items: Sequence[str]) -> list[str]:
  """`items` without repeats, in first-seen order."""
  return list(dict.fromkeys(items))
