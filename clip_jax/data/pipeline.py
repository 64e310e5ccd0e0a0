"""The training stream: deterministic, resumable, infinite, and sliced per host.

The stream is a sequence of positions s = 0, 1, 2, ... over the source's training units. Let n be
the number of units and B the global batch size; an epoch is L = B * (n // B) positions when
n >= B (the remainder of each epoch's shuffle is dropped, so no global batch holds a unit twice),
and L = n when B > n (then batches run across epoch boundaries). Position s lies in epoch
e = s // L at offset i = s % L and shows unit perm_e[i], where perm_e is a permutation of [0, n)
fixed by (config.seed, e) alone. The draws that pick a unit's image and caption, and the
augmentation shifts, crops and flips, are fixed by (config.seed, e, i) alone as well.

The shuffle is memory-flat: perm_e[i] is computed for the positions of a batch only
(`epoch_permutation`: a keyed Feistel network with cycle-walking), so building the iterator and
a batch takes O(batch) memory and time whatever n; no permutation of all n units is ever held.

Global batch k covers positions [k * B, (k + 1) * B). Process p of P builds only its slice
[k * B + p * b, k * B + (p + 1) * b), b = B / P: it never renders, decodes or tokenises another
process's examples, and the P slices concatenated in process order are the global batch.

Several captions per unit (`config.data.captions_per_example` = c > 1, for multi-positive
objectives). Every position then contributes c consecutive rows to the global batch, so a batch
of B rows covers U = B / c positions and everything above holds with B replaced by U (epochs,
batch k covers positions [k * U, (k + 1) * U)). Row r of global batch k shows copy j = r % c of
the unit at position k * U + r // c, and carries "instance_id" = that unit's index (int32), so the
c rows of one unit share an id and rows of different units never do (when U > n a batch may show
a unit at two positions: all 2c rows then share its id, as they should). The c copies draw their
image and caption with the stratified numbers (u + j / c) mod 1 from the position's draws u, so a
unit with m >= c captions (or images), picked as item floor(draw * m), shows c different ones,
and one with m < c shows each of them about c / m times. Process p builds rows [p * b, (p + 1) * b) of every global batch, which may cut a
unit's rows across processes; every row depends only on (seed, position, copy), so the global
batch is the same for any process count.

Extra views (`config.data.extra_views`, e.g. ("sketch",)): every training row also carries each
named view of its unit, rendered by the source's `train_view`, under the view's name, as float32
[b, H, W, 3] like "image"; a row's views get the same crop, flip and shift as its image.

Images, views alike, go: the source's uint8 [b, S, S, 3] -> random resized crop and flip
(`config.data.preprocess`, `clip_jax.data.preprocess`) -> whole-pixel shift (`augment`) -> float32
by `config.data.preprocess.normalize`. With no `preprocess` section that is the plain mapping
0 -> -1, 255 -> 1; `load_eval_split` normalises evaluation images the same way.

All randomness comes from a SplitMix64 hash of (seed, epoch, stream, offset), not from a NumPy
generator, so the stream does not change across NumPy versions. The iterator's state is the index
k of the next global batch (plus fields that identify the stream, checked on restore); it holds
no process index, so a run can resume on another number of processes.

Background building (`config.data.num_threads`, `config.data.prefetch`): `next()` reads the
batches from a grain `MapDataset` over the global batch index k (element k = `batch(k)`), whose
iterator builds the next `prefetch` batches in `num_threads` threads while the caller runs the
current step (0 threads: each batch is built inside `next()`). Grain only schedules the work: the
position is still our own k, and `set_state` restarts the prefetching at the restored k, so the
batches are the same with or without threads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import grain
import jax
import numpy as np

from clip_jax import schema
from clip_jax.data import preprocess as preprocess_lib
from clip_jax.data import registry as data_registry
from clip_jax.data import transforms
from clip_jax.data.registry import DataSource, EvalSet, PipelineFields, SourceFields
from clip_jax.data.tokenizer import Tokenizer
from clip_jax.registry import ConfigError

STATE_FORMAT = "clip_jax.data.TrainIterator/v1"
INSTANCE_ID_KEY = "instance_id"
_RESERVED_KEYS = ("image", "text", INSTANCE_ID_KEY)
CHANNELS = 3  # RGB: every image and view is [.., H, W, 3]

_U64 = np.uint64
_STREAM_PERMUTATION = 0
_STREAM_IMAGE_DRAW = 1
_STREAM_CAPTION_DRAW = 2
_STREAM_SHIFT_Y = 3
_STREAM_SHIFT_X = 4
_STREAM_CROP = (5, 6, 7, 8)  # a crop box's area, ratio, x and y numbers (preprocess.crop_boxes)
_STREAM_FLIP = 9
_FEISTEL_ROUNDS = 6  # the halves differ by a bit when n's bit count is odd: a few extra rounds
_BATCH_INDEX_END = 1 << 62  # the grain dataset of batch indices is [step, this): endless in effect


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """The SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    x = (x + _U64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def stream_hash(seed: int, epoch: int, stream: int, offsets: np.ndarray) -> np.ndarray:
  """uint64 [n]: a well-mixed hash of (seed, epoch, stream, offset) for each offset."""
  key = np.zeros(1, np.uint64)
  for part in (seed, epoch, stream):
    key = _splitmix64(key ^ np.array([part % (1 << 64)], np.uint64))
  return _splitmix64(key ^ np.asarray(offsets, dtype=np.uint64))


def stream_uniform(seed: int, epoch: int, stream: int, offsets: np.ndarray) -> np.ndarray:
  """float64 [n] in [0, 1) from `stream_hash` (53 bits)."""
  return (stream_hash(seed, epoch, stream, offsets) >> _U64(11)).astype(np.float64) * 2.0 ** -53


def _feistel(x: np.ndarray, keys: np.ndarray, bits: int) -> np.ndarray:
  """A bijection of [0, 2**bits) applied to uint64 `x` [k]: a Feistel network on the high
  bits // 2 and low bits - bits // 2 bits of x, one round per key. A round maps (a, b) to
  (b, a ^ F(b)), F(b) = SplitMix64(b ^ key) cut to a's width, which is undone by the same XOR, so
  each round (and the network) is a bijection whatever F; the halves swap widths every round."""
  a_bits = bits // 2
  b_bits = bits - a_bits
  a, b = x >> _U64(b_bits), x & _U64((1 << b_bits) - 1)
  for key in keys:
    a, b = b, a ^ (_splitmix64(b ^ key) & _U64((1 << a_bits) - 1))
    a_bits, b_bits = b_bits, a_bits
  return (a << _U64(b_bits)) | b


def epoch_permutation(seed: int, epoch: int, n: int, offsets: np.ndarray) -> np.ndarray:
  """int64 [k]: perm_e[offsets], the units at `offsets` (int [k] in [0, n)) of epoch `epoch`.

  perm_e is a pseudo-random bijection of [0, n) fixed by (seed, epoch), evaluated at the given
  offsets only (O(k) memory and time, whatever n): a Feistel network keyed by
  `stream_hash(seed, epoch, 0, round)` permutes [0, 2**m), 2**m the smallest power of two >= n,
  and cycle-walking (applying it again to a result >= n, until one is < n) restricts it to
  [0, n). Since 2**m < 2n, a walk takes fewer than 2 applications on average.
  """
  bits = max(int(n) - 1, 0).bit_length()
  keys = stream_hash(seed, epoch, _STREAM_PERMUTATION, np.arange(_FEISTEL_ROUNDS))
  out = _feistel(np.asarray(offsets, np.uint64), keys, bits)
  walk = np.flatnonzero(out >= _U64(n))
  while walk.size:
    out[walk] = _feistel(out[walk], keys, bits)
    walk = walk[out[walk] >= _U64(n)]
  return out.astype(np.int64)


class TrainIterator(Iterator[dict[str, np.ndarray]]):
  """Infinite iterator of this process's slices of the global training batches.

  Each item is {"image": float32 [b, H, W, 3], "text": int32 [b, max_len]} with
  b = global_batch_size // process_count, plus float32 [b, H, W, 3] under the name of every extra
  view, and "instance_id": int32 [b] when captions_per_example > 1. Images are in [-1, 1] with
  the default normalisation (`preprocess.normalize`). See the module docstring for the order.
  `batch(k)` builds any batch directly; `next()` reads them through grain (module docstring).

  Args:
    source: the data source.
    tokenizer: encodes the captions.
    global_batch_size: B, rows per global batch (config.batch_size).
    seed: config.seed.
    process_index, process_count: this process's place among the hosts.
    augment: random whole-pixel shifts of the images (config.data.augment).
    extra_views: names of the source's extra views to add (config.data.extra_views).
    captions_per_example: c, the rows per unit (config.data.captions_per_example); B % c == 0.
    preprocess: crop, flip and normalisation (config.data.preprocess); None = the defaults.
    num_threads: threads that build the next batches in the background (config.data.num_threads;
      0 = build each batch in `next()`).
    prefetch: batches built ahead when num_threads > 0 (config.data.prefetch).
  """

  def __init__(self, source: DataSource, tokenizer: Tokenizer, *, global_batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1,
               augment: bool = False, extra_views: Sequence[str] = (),
               captions_per_example: int = 1,
               preprocess: preprocess_lib.PreprocessFields | None = None,
               num_threads: int = 0, prefetch: int = 2):
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index = {process_index} must lie in [0, process_count = "
                       f"{process_count})")
    if global_batch_size % process_count:
      raise ConfigError(f"config.batch_size = {global_batch_size} must be divisible by the "
                        f"number of processes ({process_count})")
    if source.num_train < 1:
      raise ConfigError(f"data source {source.name!r} has no training examples with this config")
    copies = schema.integer(low=1)(captions_per_example, "config.data.captions_per_example")
    if global_batch_size % copies:
      raise ConfigError(f"config.batch_size = {global_batch_size} must be divisible by "
                        f"config.data.captions_per_example = {copies} (each unit fills that many "
                        "rows of a batch)")
    if copies > 1 and source.num_train >= 2 ** 31:
      raise ConfigError(f"config.data.captions_per_example = {copies} needs int32 instance ids, "
                        f"but data source {source.name!r} has {source.num_train} units")
    self.extra_views = _check_views(extra_views, source)
    self.source = source
    self.tokenizer = tokenizer
    self.global_batch_size = global_batch_size
    self.captions_per_example = copies
    self.units_per_batch = global_batch_size // copies
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.batch_size = global_batch_size // process_count
    self.augment = augment
    self.preprocess = preprocess_lib.parse(preprocess)
    self.num_threads = schema.integer(low=0)(num_threads, "config.data.num_threads")
    self.prefetch = schema.integer(low=1)(prefetch, "config.data.prefetch")
    n, u = source.num_train, self.units_per_batch
    self.epoch_length = n if n < u else (n // u) * u
    self.step = 0
    self._reader: grain.DatasetIterator | None = None  # grain's iterator from self.step on

  @property
  def steps_per_epoch(self) -> float:
    """Global batches per epoch (a fraction when the batch is larger than the data)."""
    return self.epoch_length / self.units_per_batch

  def _rows(self, step: int) -> np.ndarray:
    """int64 [b]: the row indices of this process's slice within global batch `step`."""
    return self.process_index * self.batch_size + np.arange(self.batch_size, dtype=np.int64)

  def positions(self, step: int) -> np.ndarray:
    """int64 [b]: the stream position of the unit in each row of this process's slice of `step`.

    With captions_per_example = c, c consecutive rows share a position.
    """
    return step * self.units_per_batch + self._rows(step) // self.captions_per_example

  def copies(self, step: int) -> np.ndarray:
    """int64 [b]: which of its unit's c rows each row of this slice of batch `step` is."""
    return self._rows(step) % self.captions_per_example

  def units(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(units int64 [b], epochs int64 [b], offsets int64 [b]) of this slice of batch `step`."""
    pos = self.positions(step)
    epochs, offsets = pos // self.epoch_length, pos % self.epoch_length
    units = np.empty_like(pos)
    for e in np.unique(epochs).tolist():
      m = epochs == e
      units[m] = epoch_permutation(self.seed, e, self.source.num_train, offsets[m])
    return units, epochs, offsets

  def _uniform(self, stream: int, epochs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.empty(len(offsets), np.float64)
    for e in np.unique(epochs).tolist():
      m = epochs == e
      out[m] = stream_uniform(self.seed, e, stream, offsets[m])
    return out

  def _check_images(self, images: np.ndarray, n: int, what: str) -> None:
    size = self.source.image_size
    if images.shape != (n, size, size, CHANNELS) or images.dtype != np.uint8:
      raise ValueError(f"data source {self.source.name!r} returned {images.dtype} {what} of "
                       f"shape {images.shape}; expected uint8 {(n, size, size, CHANNELS)}")

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of global batch `step` (does not move the iterator)."""
    units, epochs, offsets = self.units(step)
    c = self.captions_per_example
    copies = self.copies(step)
    # Copy j of a unit draws (u + j / c) mod 1: its c rows spread over the unit's images and
    # captions. For c = 1 these are the position's draws u.
    draws = np.stack([self._uniform(_STREAM_IMAGE_DRAW, epochs, offsets),
                      self._uniform(_STREAM_CAPTION_DRAW, epochs, offsets)], axis=1)
    draws = np.mod(draws + (copies / c)[:, None], 1.0)
    images, captions = self.source.train_examples(units, draws)
    self._check_images(images, len(units), "images")
    views = {}
    for view in self.extra_views:
      views[view] = np.asarray(self.source.train_view(view, units, draws))
      self._check_images(views[view], len(units), f"{view!r} view images")
    # Each row (position and copy) has its own crop, flip and shift; its views share them.
    rows = offsets * c + copies
    pre = self.preprocess
    if pre.crop_scale is not None:
      boxes = preprocess_lib.crop_boxes(
          np.stack([self._uniform(s, epochs, rows) for s in _STREAM_CROP], axis=1),
          self.source.image_size, pre.crop_scale, pre.crop_ratio)
      images = preprocess_lib.resized_crop(images, boxes)
      views = {k: preprocess_lib.resized_crop(v, boxes) for k, v in views.items()}
    if pre.flip:
      mirror = self._uniform(_STREAM_FLIP, epochs, rows) < 0.5
      images = preprocess_lib.flip(images, mirror)
      views = {k: preprocess_lib.flip(v, mirror) for k, v in views.items()}
    if self.augment:
      m = transforms.max_augment_shift(self.source.image_size)
      shifts = np.stack([
          np.floor(self._uniform(s, epochs, rows) * (2 * m + 1)).astype(np.int64) - m
          for s in (_STREAM_SHIFT_Y, _STREAM_SHIFT_X)], axis=1)
      images = transforms.random_shift(images, shifts)
      views = {k: transforms.random_shift(v, shifts) for k, v in views.items()}
    out = {"image": preprocess_lib.to_model_input(images, pre.normalize),
           "text": self.tokenizer.encode(captions)}
    out.update((k, preprocess_lib.to_model_input(v, pre.normalize)) for k, v in views.items())
    if c > 1:
      out[INSTANCE_ID_KEY] = units.astype(np.int32)
    return out

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    """`batch(self.step)`, read through grain (built ahead in the background when num_threads
    > 0); moves to the next step."""
    if self._reader is None:
      batches = grain.MapDataset.range(self.step, _BATCH_INDEX_END).map(self.batch)
      threads = self.num_threads
      self._reader = iter(batches.to_iter_dataset(grain.ReadOptions(
          num_threads=threads, prefetch_buffer_size=self.prefetch if threads else 0)))
    out = next(self._reader)
    self.step += 1
    return out

  def close(self) -> None:
    """Stops the background building (the batches built ahead are dropped); a later `next()`
    starts it again at `self.step`."""
    if self._reader is not None:
      self._reader.close()
      self._reader = None

  def get_state(self) -> dict[str, Any]:
    """The position in the stream: JSON-serialisable ints and strings.

    "step" is the index of the next global batch; "epoch" and "offset" are where it starts.
    The other fields identify the stream and are checked by `set_state`. The state holds no
    process index, so it can be restored on a different number of processes.
    """
    start = self.step * self.units_per_batch
    return {
        "format": STATE_FORMAT,
        "source": self.source.name,
        "num_train": int(self.source.num_train),
        "seed": self.seed,
        "global_batch_size": int(self.global_batch_size),
        "captions_per_example": int(self.captions_per_example),
        "step": int(self.step),
        "epoch": int(start // self.epoch_length),
        "offset": int(start % self.epoch_length),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Moves to `state` (from `get_state`): the next batch is the one that followed it.

    A state without "captions_per_example" (written before that option existed) means 1.
    """
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"not a data iterator state of format {STATE_FORMAT!r}: {state!r}")
    expected = {"source": (self.source.name, "config.data.name"),
                "num_train": (self.source.num_train, "config.data (the training set changed)"),
                "seed": (self.seed, "config.seed"),
                "global_batch_size": (self.global_batch_size, "config.batch_size"),
                "captions_per_example": (self.captions_per_example,
                                         "config.data.captions_per_example")}
    defaults = {"captions_per_example": 1}
    for key, (value, field) in expected.items():
      saved = state.get(key, defaults.get(key))
      if saved != value:
        raise ConfigError(f"cannot resume the data stream: the saved state has {key} = "
                          f"{saved!r} but {field} gives {value!r}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"data iterator state has an invalid step {step!r}")
    self.close()
    self.step = int(step)


def _check_views(extra_views: Any, source: DataSource | None = None) -> tuple[str, ...]:
  """`config.data.extra_views` as a tuple of distinct view names that are not other batch keys
  and, given `source`, that it renders."""
  try:
    views = tuple(extra_views)
  except TypeError:
    views = None
  of_source, choose = "", ""
  if source is not None:
    available = tuple(source.view_names)
    choices = ", ".join(map(repr, available)) if available else "none"
    of_source = f" of data source {source.name!r} (choices: {choices})"
    choose = f"; choose from the views of data source {source.name!r}: {choices}"
  if views is None or not all(isinstance(v, str) and v for v in views):
    raise ConfigError(f"config.data.extra_views = {extra_views!r} must be a tuple of view "
                      f"names{of_source}")
  for view in views:
    if view in _RESERVED_KEYS:
      raise ConfigError(f"config.data.extra_views cannot hold {view!r}: it is already a batch "
                        f"key{choose}")
    if source is not None and view not in available:
      raise ConfigError(f"config.data.extra_views holds {view!r}, which data source "
                        f"{source.name!r} does not render; choose from: {choices}")
  if len(set(views)) != len(views):
    raise ConfigError(f"config.data.extra_views = {views!r} names a view twice")
  return views


def _stream_fields(config: Any) -> tuple[int, SourceFields, PipelineFields, tuple[str, ...]]:
  """(config.batch_size, the source's and the pipeline's `config.data` fields, and
  config.data.extra_views as a tuple of names): the fields that shape the stream's batches."""
  batch_size = schema.integer(low=1)(config.get("batch_size"), "config.batch_size")
  if "data" not in config:
    raise ConfigError("config.data is missing; set it to the data source's ConfigDict")
  source_fields, data = data_registry.parse_data(config.data)
  extra_views = data.extra_views
  if isinstance(extra_views, str):  # e.g. --config.data.extra_views=sketch
    extra_views = (extra_views,) if extra_views else ()
  return batch_size, source_fields, data, _check_views(extra_views)


def train_batch_spec(config: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes and dtypes of the global training batch that `config` describes, from the config
  alone: no source is built, no data read, no tokenizer fitted.

  With B = config.batch_size, S = config.data.image_size and L = config.data.max_len:
    "image": float32 [B, S, S, 3]; "text": int32 [B, L];
    each name in config.data.extra_views: float32 [B, S, S, 3];
    "instance_id": int32 [B] when config.data.captions_per_example > 1.
  Process p's `TrainIterator` items are rows [p * B / P, (p + 1) * B / P) of such a batch.

  Raises:
    ConfigError: a missing or invalid field among those (naming it). Whether the source renders
      the extra views is checked when the iterator is built (`make_train_iterator`).
  """
  batch_size, source_fields, data, views = _stream_fields(config)
  size = source_fields.image_size
  max_len = data.max_len
  image = jax.ShapeDtypeStruct((batch_size, size, size, CHANNELS), np.float32)
  spec = {"image": image, "text": jax.ShapeDtypeStruct((batch_size, max_len), np.int32)}
  spec.update((view, image) for view in views)
  if data.captions_per_example > 1:
    spec[INSTANCE_ID_KEY] = jax.ShapeDtypeStruct((batch_size,), np.int32)
  return spec


def make_train_iterator(config: Any, tokenizer: Tokenizer, process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """The training iterator for the whole config (uses config.batch_size, config.seed, config.data).

  Args:
    config: the run's ConfigDict.
    tokenizer: from `make_tokenizer(config.data)`.
    process_index, process_count: this process's place among the hosts (jax.process_index(),
      jax.process_count()).

  Config fields read: config.batch_size, config.seed, config.data.{augment (default False),
  extra_views (default ()), captions_per_example (default 1), preprocess (default: none),
  num_threads (default 2), prefetch (default 2), max_len, image_size} and the source's fields.

  Returns:
    A `TrainIterator` whose items are this process's slices ([config.batch_size // process_count]
    rows) of the global batches, with `get_state()` / `set_state()`; their shapes and dtypes are
    those of `train_batch_spec(config)`.

  Raises:
    ConfigError: a bad field, or a source whose images are not config.data.image_size pixels.
  """
  batch_size, source_fields, data, extra_views = _stream_fields(config)
  seed = schema.integer()(config.get("seed"), "config.seed")
  if data.max_len != tokenizer.max_len:
    raise ConfigError(f"config.data.max_len = {data.max_len!r} but the tokenizer encodes rows "
                      f"of {tokenizer.max_len}; build it with make_tokenizer(config.data)")
  source = data_registry.build_source(config.data)
  if source.image_size != source_fields.image_size:
    raise ConfigError(f"data source {source.name!r} renders {source.image_size}-pixel images but "
                      f"config.data.image_size = {source_fields.image_size}; the model is built "
                      "for the latter, so the source must follow it")
  return TrainIterator(source, tokenizer, global_batch_size=batch_size, seed=seed,
                       process_index=process_index, process_count=process_count,
                       augment=data.augment, extra_views=extra_views,
                       captions_per_example=data.captions_per_example,
                       preprocess=data.preprocess, num_threads=data.num_threads,
                       prefetch=data.prefetch)


def load_eval_split(data_config: Any, split: str = "heldout") -> EvalSet:
  """The evaluation split `split` of the source named by `config.data.name`, its images
  normalised as the training images are (`config.data.preprocess.normalize`; crops and flips are
  for training only).

  Raises:
    ConfigError: a bad `config.data.preprocess` field, or an unknown split (naming them).
  """
  normalize = preprocess_lib.parse(data_config.get("preprocess")).normalize
  eval_set = data_registry.build_source(data_config).eval_split(split)
  if normalize == "minus_one_one":
    return eval_set
  return dataclasses.replace(
      eval_set, images=preprocess_lib.from_minus_one_one(eval_set.images, normalize))
