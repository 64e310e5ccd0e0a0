"""What the sources of the users' own files ("csv", "webdataset") share: their common config
fields, the indexed sample, the skip accounting, the read-time substitution rule and the held-out
split.

A source of files indexes its samples once at start-up (`Sample`: where the image bytes are and
the sample's captions) and serves training unit i = sample i. Bad input never stops a run by
itself, it is skipped and counted under a reason (`REASONS`):

* index time (start-up, the same on every process): a row or member without a caption
  ("caption_missing"), with an empty one ("caption_empty"), without an image ("image_missing":
  a missing file, or a webdataset sample without a jpg/jpeg/png/webp member), a zero-byte image
  ("image_empty"), a row that cannot be parsed ("bad_row"), the cut-off sample of a truncated
  tar ("truncated_tar"), a shard that is not a tar ("shard_unreadable"). These are not units.
* read time (training): an image that cannot be read ("image_unreadable", "image_missing",
  "image_empty": the file changed since start-up, or an object-storage path that start-up does
  not stat) or decoded ("image_decode": a corrupt, truncated or non-image file). Unit u is then
  replaced by unit (u + 1) % n (and so on), so batches stay full and the stream stays a
  function of (seed, position): every process that reads the unit makes the same choice. Each
  failing unit is counted once.

`FileSource.skipped` holds the counts (reason -> samples, cumulative; the read-time ones as seen
by this process, i.e. in its own slices of the batches); the training loop logs them as
`data/skipped/<reason>` on every training line of metrics.jsonl. When the skipped share of all
samples found exceeds `config.data.max_skip_fraction`, the run stops with a ConfigError naming
the files (or rows) with the most skips: at start-up for index-time skips, during training once
read-time skips push it over.

Held-out split "heldout" (`config.data.eval_path` / `eval_shards`, optional): the evaluation
samples are read whole, grouped by the SHA-1 of their image bytes (one image, all the captions
of its rows or members, so the retrieval evaluator sees each image once), and when there are more
than `config.data.num_eval` images the ones with the smallest digests are kept, in file order: a
cut that depends on the images alone, not on their order. Eval images that fail to decode are
left out (and logged). Images are decoded with `transforms.decode_image(crop="center")`, in
training too.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from clip_jax import fs, schema
from clip_jax.data import registry as data_registry
from clip_jax.data import transforms
from clip_jax.data.registry import DataSource, EvalSet, SourceFields
from clip_jax.log import get_logger
from clip_jax.registry import ConfigError

log = get_logger(__name__)

REASONS: tuple[str, ...] = ("caption_missing", "caption_empty", "image_missing", "image_empty",
                            "image_unreadable", "image_decode", "bad_row", "truncated_tar",
                            "shard_unreadable")
DEFAULT_NUM_EVAL = 5000
DEFAULT_MAX_SKIP_FRACTION = 0.1
_WORST_SHOWN = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileFields(SourceFields):
  """`config.data` fields of both file sources: `SourceFields` and

  Attributes:
    num_eval: the most images of the held-out split, >= 1 (see the module docstring).
    max_skip_fraction: the largest share of skipped samples a run accepts, in [0, 1].
  """

  num_eval: int = schema.field(DEFAULT_NUM_EVAL, schema.integer(low=1))
  max_skip_fraction: float = schema.field(DEFAULT_MAX_SKIP_FRACTION, schema.number(0.0, 1.0))


def caption_templates(value: Any, path: str) -> tuple[str, ...]:
  """The check of a `caption_templates` field (captions made from class names): a non-empty
  tuple of strings with one "{}" each."""
  if (isinstance(value, str) or not value
      or not all(isinstance(t, str) and t.count("{}") == 1 for t in value)):
    raise ConfigError(f"{path} = {value!r} must be a tuple of strings with one '{{}}' each")
  return tuple(value)


@dataclasses.dataclass(frozen=True)
class Sample:
  """One indexed sample.

  Attributes:
    path: the file holding the image bytes (an image file, or a tar shard).
    offset, size: the image bytes within it (size -1: the whole file).
    captions: one or more non-empty captions.
    where: the file (or "file:row") that skip counts and messages name.
  """
  path: str
  offset: int
  size: int
  captions: tuple[str, ...]
  where: str


class Skips:
  """Skipped samples: `by_reason` (each of `REASONS` -> count) and `by_file` (where -> count)."""

  def __init__(self):
    self.by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
    self.by_file: collections.Counter[str] = collections.Counter()

  def add(self, reason: str, where: str, count: int = 1) -> None:
    if reason not in self.by_reason:
      raise ValueError(f"unknown skip reason {reason!r}; one of {REASONS}")
    self.by_reason[reason] += count
    self.by_file[where] += count

  def merge(self, other: Skips) -> None:
    for reason, count in other.by_reason.items():
      self.by_reason[reason] += count
    self.by_file.update(other.by_file)

  @property
  def total(self) -> int:
    return sum(self.by_reason.values())

  def check(self, found: int, max_fraction: float, field: str) -> None:
    """Raises ConfigError when more than `max_fraction` of the `found` samples were skipped
    (always when none is left), naming `field`, the reasons and the worst files."""
    total = self.total
    if found > total and total <= max_fraction * found:
      return
    reasons = ", ".join(f"{r} {c}" for r, c in self.by_reason.items() if c)
    worst = ", ".join(f"{w} ({c})" for w, c in self.by_file.most_common(_WORST_SHOWN))
    what = ("no usable sample" if found <= total else
            f"{total} of {found} samples ({total / found:.1%}) were skipped, more than "
            f"config.data.max_skip_fraction = {max_fraction}")
    raise ConfigError(f"{field}: {what}. Reasons: {reasons or 'none'}. Most skips in: "
                      f"{worst or 'none'}. Fix or remove those files, or raise "
                      "config.data.max_skip_fraction.")


class FileSource(DataSource):
  """Training units = indexed samples, with skip accounting and substitution (module docstring).

  Args:
    train_index: indexes the training files: returns (the usable training samples in unit
      order, the index-time skips). Called once, on first use (the number of units, a batch,
      the skip counts), so that evaluation, which reads only the held-out files, works when the
      training files are gone.
    image_size: the side of every image.
    max_skip_fraction: `FileFields.max_skip_fraction`.
    field: the config field that names the training files, for messages (e.g. config.data.path).
    eval_index: None (no held-out split) or a function that indexes the evaluation files,
      returning (samples, skips) like the training index.
    num_eval: `FileFields.num_eval`.
    required: False when a source may have no training files at all (evaluation only).

  Raises (on first use of the training index):
    ConfigError: too many skipped samples, or none left (`Skips.check`).
  """

  def __init__(self, train_index: Callable[[], tuple[Sequence[Sample], Skips]], *,
               image_size: int, max_skip_fraction: float, field: str,
               eval_index: Callable[[], tuple[list[Sample], Skips]] | None, num_eval: int,
               required: bool = True):
    self._train_index = train_index
    self._indexed: tuple[list[Sample], Skips] | None = None
    self.image_size = image_size
    self.max_skip_fraction = max_skip_fraction
    self.field = field
    self.eval_index = eval_index
    self.num_eval = num_eval
    self.required = required
    self.read_skips = Skips()
    self.failed: set[int] = set()  # units whose image failed at read time
    self._lock = threading.RLock()  # _index calls num_train, which may index

  def _index(self) -> tuple[list[Sample], Skips]:
    if self._indexed is not None:  # every read after the first: no lock on the hot path
      return self._indexed
    with self._lock:
      if self._indexed is None:
        samples, skips = self._train_index()
        self._indexed = list(samples), skips
        found = self.num_train + skips.total
        if self.required or found:
          try:
            skips.check(found, self.max_skip_fraction, self.field)
          except ConfigError:
            self._indexed = None  # indexed again on the next use (the files may be fixed)
            raise
    return self._indexed

  @property
  def samples(self) -> list[Sample]:
    """The usable training samples, in unit order (indexed on first use)."""
    return self._index()[0]

  @property
  def index_skips(self) -> Skips:
    """The training files' index-time skips (indexed on first use)."""
    return self._index()[1]

  @property
  def found(self) -> int:
    """The training samples found: units plus index-time skips."""
    return self.num_train + self.index_skips.total

  @property
  def skipped(self) -> dict[str, int]:
    return {r: c + self.read_skips.by_reason[r] for r, c in self.index_skips.by_reason.items()}

  @property
  def num_train(self) -> int:
    return len(self.samples)

  def train_captions(self) -> list[str]:
    return [c for s in self.samples for c in s.captions]

  def train_examples(self, units: np.ndarray,
                     draws: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """See `DataSource.train_examples`; a unit whose image fails is replaced (module docstring).

    Raises:
      ConfigError: the read-time skips push the skipped share over max_skip_fraction.
    """
    n = self.num_train
    images = np.empty((len(units), self.image_size, self.image_size, 3), np.uint8)
    captions = []
    for row, (unit, draw) in enumerate(zip(np.asarray(units).tolist(),
                                           np.asarray(draws)[:, 1].tolist(), strict=True)):
      for tried in range(n):
        u = (unit + tried) % n
        if u in self.failed:
          continue
        image, caps, reason, where = self.read_unit(u)
        if reason is None:
          break
        with self._lock:  # batches are built in several threads: count each unit once
          if u in self.failed:
            continue
          self.failed.add(u)
          self.read_skips.add(reason, where)
        log.warning("Skipping %s (%s); training unit %d is replaced by the next one.",
                    where, reason, u)
        self._check_read_skips()
      else:
        self._check_read_skips()  # every unit failed: raises
      images[row] = image
      captions.append(caps[data_registry.draw_index(draw, len(caps))])
    return images, captions

  def read_unit(self, unit: int) -> tuple[np.ndarray | None, tuple[str, ...], str | None, str]:
    """(uint8 [S, S, 3] image, captions, None, where) of training unit `unit`, or (None, (),
    the skip reason, where) when it cannot be used; `where` names it in skip counts and
    messages. A source whose units are not indexed `samples` overrides this (and `num_train`,
    `train_captions`)."""
    sample = self.samples[unit]
    image, reason = read_image(sample, self.image_size)
    return image, sample.captions, reason, sample.where

  def _check_read_skips(self) -> None:
    both = Skips()
    both.merge(self.index_skips)
    both.merge(self.read_skips)
    both.check(self.found, self.max_skip_fraction, self.field)

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("heldout",) if self.eval_index is not None else ()

  def eval_split(self, split: str) -> EvalSet:
    if split not in self.eval_splits:
      raise self.unknown_split(split)
    samples, skips = self.eval_index()
    if skips.total:
      log.warning("The held-out files: skipped %s.",
                  ", ".join(f"{r} {c}" for r, c in skips.by_reason.items() if c))
    return heldout_set(samples, self.image_size, self.num_eval)


def read_image(sample: Sample, image_size: int) -> tuple[np.ndarray | None, str | None]:
  """(uint8 [S, S, 3] centre-cropped image, None), or (None, the skip reason) when the sample's
  bytes cannot be read or decoded."""
  data, reason = read_bytes(sample)
  if data is None:
    return None, reason
  try:
    return transforms.decode_image(data, image_size, crop="center"), None
  except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
    return None, "image_decode"


def read_bytes(sample: Sample) -> tuple[bytes | None, str | None]:
  """(the sample's image bytes, None) or (None, "image_missing" / "image_empty" /
  "image_unreadable")."""
  try:
    data = fs.read_bytes(sample.path, sample.offset, sample.size)
  except FileNotFoundError:
    return None, "image_missing"
  except OSError:
    return None, "image_unreadable"
  if not data:
    return None, "image_empty"
  if sample.size >= 0 and len(data) != sample.size:
    return None, "image_unreadable"
  return data, None


def heldout_set(samples: Sequence[Sample], image_size: int, num_eval: int) -> EvalSet:
  """The held-out EvalSet of some samples (module docstring: grouped by the SHA-1 of the image
  bytes, at most `num_eval` images, those with the smallest digests, in file order)."""
  groups: dict[str, tuple[Sample, list[str]]] = {}
  for sample in samples:
    data, _ = read_bytes(sample)
    if data is None:
      continue
    digest = hashlib.sha1(data).hexdigest()
    groups.setdefault(digest, (sample, []))[1].extend(sample.captions)
  kept = set(sorted(groups)[:num_eval])
  if len(groups) > num_eval:
    log.info("The held-out split keeps %d of its %d images (config.data.num_eval).", num_eval,
             len(groups))
  images, texts, text_image = [], [], []
  for digest, (sample, captions) in groups.items():
    if digest not in kept:
      continue
    image, reason = read_image(sample, image_size)
    if image is None:
      log.warning("Leaving %s out of the held-out split (%s).", sample.where, reason)
      continue
    captions = data_registry.unique(captions)
    text_image.extend([len(images)] * len(captions))
    texts.extend(captions)
    images.append(image)
  if not images:
    raise ConfigError("the held-out files (config.data.eval_path / eval_shards) hold no usable "
                      "image")
  return EvalSet(images=transforms.to_float(np.stack(images)), texts=texts,
                 text_image=np.array(text_image, np.int32), labels={})


def clean_caption(value: Any) -> tuple[tuple[str, ...], str | None]:
  """(the captions in a caption cell or field, None), or ((), the skip reason): a string, or a
  list of strings (each stripped; empty ones dropped)."""
  if value is None:
    return (), "caption_missing"
  values = [value] if isinstance(value, str) else value
  if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
    return (), "bad_row"
  captions = tuple(v.strip() for v in values if v.strip())
  return (captions, None) if captions else ((), "caption_empty")
