"""TensorFlow Datasets by name ("tfds"), read by random access without TensorFlow.

    config.data = dict(name="tfds", dataset="coco_captions", text_key="captions/text",
                       train_split="train", eval_split="val", image_size=224, ...)
    config.data = dict(name="tfds", dataset="cifar10", label_key="label",
                       caption_templates=("a photo of a {}.",), eval_split="test", ...)

The dataset must be prepared in `config.data.data_dir` ("" = TFDS's default, $TFDS_DATA_DIR or
~/tensorflow_datasets) in the ArrayRecord format (`tfds build --file_format=array_record`, or
`download_and_prepare(file_format="array_record")`), which `tfds.data_source` reads by index:
training unit i is record i of `train_split` (TFDS split syntax, e.g. "train[:95%]"), so exact
resume and the same global batch for any number of processes hold as for every source. Images are
read as their encoded bytes (`tfds.decode.SkipDecoding`) and decoded by
`transforms.decode_image(crop="center")`, as the file sources decode theirs.

Captions: the text feature `text_key` ("/" walks nested features: "captions/text"), a string or a
list of strings (training draws one); or, for a classification dataset, the class name of
`label_key` (its `ClassLabel` names, "_" read as a space) in one of `caption_templates`. A record
whose image does not decode or whose captions are missing or empty is skipped at read time,
counted and replaced by the next record (`clip_jax.data.files`: the rule, the counts in
metrics.jsonl and `max_skip_fraction`). Records are not read at start-up.

Held-out split "heldout" (when `eval_split` is set): the first `num_eval` records of that split,
each image with all its captions (retrieval), and, with `label_key`, the label set of that name
(zero-shot classification with the dataset's class names).

Config fields: `TfdsFields`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clip_jax import schema
from clip_jax.data import transforms
from clip_jax.data.files import (FileFields, FileSource, Skips, caption_templates,
                                 clean_caption)
from clip_jax.data.registry import SOURCES, EvalSet, parse_source
from clip_jax.log import get_logger
from clip_jax.registry import ConfigError

log = get_logger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsFields(FileFields):
  """`config.data` fields of "tfds": `FileFields` (image_size, num_eval, max_skip_fraction, ...)
  and

  Attributes:
    dataset: the TFDS name, optionally with config and version ("coco_captions",
      "cifar10:3.0.2"); required (checked when the source is built).
    data_dir: where it is prepared ("" = TFDS's default).
    train_split, eval_split: TFDS split specs; eval_split "" = no held-out split.
    image_key: the image feature.
    text_key: the caption feature ("/" for nested features), or "" to caption by label.
    label_key: a `ClassLabel` feature (the class names of captions by label, and the label set
      of the held-out split), or "".
    caption_templates: format strings with one "{}" for captions by label.
  """

  dataset: str = ""
  data_dir: str = ""
  train_split: str = schema.field("train", schema.string(nonempty=True))
  eval_split: str = ""
  image_key: str = schema.field("image", schema.string(nonempty=True))
  text_key: str = ""
  label_key: str = ""
  caption_templates: Any = schema.field(("a photo of a {}.",), caption_templates)



def open_split(dataset: str, split: str, data_dir: str, image_key: str, field: str) -> Any:
  """`tfds.data_source` of one split, images left encoded (tensorflow-datasets is imported here,
so that the other sources do not pay for it).

  Raises:
    ConfigError: naming `field` when the dataset or split cannot be opened (not prepared, not in
      ArrayRecord format, an unknown split), with the TFDS message and what to do.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(f"{field}: the 'tfds' source needs tensorflow-datasets; "
                      "pip install -e '.[tfds]' in the repository (reading needs no "
                      "TensorFlow)") from None
  try:
    return tfds.data_source(dataset, split=split, data_dir=data_dir or None,
                            decoders={image_key: tfds.decode.SkipDecoding()})
  except Exception as e:  # noqa: BLE001  (TFDS raises many kinds)
    cause = " ".join(str(e).split())[:200]  # one line
    raise ConfigError(
        f"{field}: cannot open TFDS dataset {dataset!r} split {split!r} in "
        f"{data_dir or 'the default data_dir'} ({type(e).__name__}: {cause}). Prepare it "
        "there in the ArrayRecord format (`tfds build <name> --file_format=array_record`), or "
        "fix config.data.dataset / data_dir / the split") from None


def feature(record: Any, key: str) -> Any:
  """The value of feature `key` ("/" walks nested features) of a record, or None."""
  for part in key.split("/"):
    if not isinstance(record, dict) or part not in record:
      return None
    record = record[part]
  return record


def _text(value: Any) -> Any:
  """A text feature's value as str or list of str (TFDS gives bytes, or arrays of bytes)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, list):
    return [_text(v) for v in value]
  return value


class TfdsSource(FileSource):
  """Records of a TFDS split by index (module docstring)."""

  name = "tfds"

  def __init__(self, fields: TfdsFields):
    self.fields = fields
    field = "config.data.dataset"
    if not fields.dataset:
      raise ConfigError(f"{field} is required for data source 'tfds': set it to the TFDS name "
                        "(e.g. 'coco_captions' or 'cifar10')")
    if not fields.text_key and not fields.label_key:
      raise ConfigError("config.data.text_key and config.data.label_key are both empty; set "
                        "text_key to the caption feature (e.g. 'captions/text') or label_key to "
                        "a class label (e.g. 'label')")
    self._train: Any = None
    self._train_names: list[str] | None = None
    self._where = f"{fields.dataset}/{fields.train_split}"
    super().__init__(lambda: ([], Skips()), image_size=fields.image_size,
                     max_skip_fraction=fields.max_skip_fraction, field=field, eval_index=None,
                     num_eval=fields.num_eval)

  @property
  def train(self) -> Any:
    """The training split's data source (opened on first use: evaluation does not need it)."""
    if self._train is None:
      f = self.fields
      self._train = open_split(f.dataset, f.train_split, f.data_dir, f.image_key,
                               "config.data.dataset")
    return self._train

  def class_names(self, records: Any) -> list[str]:
    """The `label_key` feature's class names ("_" as a space) in a split's dataset info.

    Raises:
      ConfigError: `label_key` is not a class-label feature.
    """
    f = self.fields
    features = records.dataset_info.features
    label = features[f.label_key] if f.label_key in features else None
    if label is None or not hasattr(label, "names"):
      raise ConfigError(f"config.data.label_key = {f.label_key!r} is not a class-label "
                        f"feature of {f.dataset!r}; its features: {', '.join(features)}")
    return [n.replace("_", " ") for n in label.names]

  @property
  def num_train(self) -> int:
    return len(self.train)

  def captions(self, record: Any, names: list[str]) -> tuple[tuple[str, ...], str | None]:
    """(a record's captions, None) or ((), the skip reason); `names`: the class names of
    `label_key` (captions by label)."""
    f = self.fields
    if f.text_key:
      return clean_caption(_text(feature(record, f.text_key)))
    label = feature(record, f.label_key)
    if label is None:
      return (), "caption_missing"
    return tuple(t.format(names[int(label)]) for t in f.caption_templates), None

  @property
  def train_names(self) -> list[str]:
    """The training split's class names of `label_key` ([] without one)."""
    if self._train_names is None:
      self._train_names = self.class_names(self.train) if self.fields.label_key else []
    return self._train_names

  def read_unit(self, unit: int) -> tuple[np.ndarray | None, tuple[str, ...], str | None, str]:
    record = self.train[unit]
    where = f"{self._where}[{unit}]"
    captions, reason = self.captions(record, self.train_names)
    if reason is not None:
      return None, (), reason, where
    image, reason = self.decode(record)
    return image, captions, reason, where

  def decode(self, record: Any) -> tuple[np.ndarray | None, str | None]:
    data = feature(record, self.fields.image_key)
    if not data:
      return None, "image_empty" if data is not None else "image_missing"
    try:
      return transforms.decode_image(bytes(data), self.image_size, crop="center"), None
    except (OSError, ValueError, SyntaxError):
      return None, "image_decode"

  def train_captions(self) -> list[str]:
    """Every training caption: reads every record (for tokenizers fitted on captions)."""
    out = []
    for unit in range(self.num_train):
      captions, _ = self.captions(self.train[unit], self.train_names)
      out.extend(captions)
    return out

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("heldout",) if self.fields.eval_split else ()

  def eval_split(self, split: str) -> EvalSet:
    if split not in self.eval_splits:
      raise self.unknown_split(split)
    f = self.fields
    records = open_split(f.dataset, f.eval_split, f.data_dir, f.image_key,
                         "config.data.eval_split")
    names = self.class_names(records) if f.label_key else []
    images, texts, text_image, labels = [], [], [], []
    skipped = 0
    for i in range(min(len(records), f.num_eval)):
      record = records[i]
      captions, reason = self.captions(record, names)
      image = self.decode(record)[0] if reason is None else None
      if image is None:
        skipped += 1
        continue
      if f.text_key:
        text_image.extend([len(images)] * len(captions))
        texts.extend(captions)
      else:  # captions by label: the class name in the first template, one text per image
        text_image.append(len(images))
        texts.append(captions[0])
      if f.label_key:
        labels.append(int(feature(record, f.label_key)))
      images.append(image)
    if skipped:
      log.warning("The held-out split %s/%s: left out %d records that could not be used.",
                  f.dataset, f.eval_split, skipped)
    if not images:
      raise ConfigError(f"config.data.eval_split = {f.eval_split!r} of {f.dataset!r} holds no "
                        "usable record")
    label_sets = ({f.label_key: (np.array(labels, np.int32), names)}
                  if f.label_key else {})
    return EvalSet(images=transforms.to_float(np.stack(images)), texts=texts,
                   text_image=np.array(text_image, np.int32), labels=label_sets)


@SOURCES.register("tfds", fields=TfdsFields)
def _build(data_config: Any) -> TfdsSource:
  return TfdsSource(parse_source(data_config, "tfds"))
