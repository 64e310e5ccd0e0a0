"""The training stream: deterministic, resumable, infinite, and sliced per host.

The stream is a sequence of positions s = 0, 1, 2, ... over the source's training units. Let n be
the number of units and B the global batch size; an epoch is L = B * (n // B) positions when
n >= B (the remainder of each epoch's shuffle is dropped, so no global batch holds a unit twice),
and L = n when B > n (then batches run across epoch boundaries). Position s lies in epoch
e = s // L at offset i = s % L and shows unit perm_e[i], where perm_e is a permutation of [0, n)
fixed by (config.seed, e) alone. The draws that pick a unit's image and caption, and the
augmentation shifts, are fixed by (config.seed, e, i) alone as well.

Global batch k covers positions [k * B, (k + 1) * B). Process p of P builds only its slice
[k * B + p * b, k * B + (p + 1) * b), b = B / P: it never renders, decodes or tokenises another
process's examples, and the P slices concatenated in process order are the global batch.

All randomness comes from a SplitMix64 hash of (seed, epoch, stream, offset), not from a NumPy
generator, so the stream does not change across NumPy versions. The iterator's state is the index
k of the next global batch (plus fields that identify the stream, checked on restore).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from clip_jax.data import registry as data_registry
from clip_jax.data import transforms
from clip_jax.data.registry import DataSource, EvalSet
from clip_jax.data.tokenizer import Tokenizer
from clip_jax.registry import ConfigError

STATE_FORMAT = "clip_jax.data.TrainIterator/v1"

_U64 = np.uint64
_STREAM_PERMUTATION = 0
_STREAM_IMAGE_DRAW = 1
_STREAM_CAPTION_DRAW = 2
_STREAM_SHIFT_Y = 3
_STREAM_SHIFT_X = 4


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


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """int64 [n]: the order in which epoch `epoch` visits units [0, n)."""
  return np.argsort(stream_hash(seed, epoch, _STREAM_PERMUTATION, np.arange(n)), kind="stable")


class TrainIterator(Iterator[dict[str, np.ndarray]]):
  """Infinite iterator of this process's slices of the global training batches.

  Each item is {"image": float32 [b, H, W, 3] in [-1, 1], "text": int32 [b, max_len]} with
  b = global_batch_size // process_count. See the module docstring for the order.
  """

  def __init__(self, source: DataSource, tokenizer: Tokenizer, *, global_batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1,
               augment: bool = False):
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"process_index = {process_index} must lie in [0, process_count = "
                       f"{process_count})")
    if global_batch_size % process_count:
      raise ConfigError(f"config.batch_size = {global_batch_size} must be divisible by the "
                        f"number of processes ({process_count})")
    if source.num_train < 1:
      raise ConfigError(f"data source {source.name!r} has no training examples with this config")
    self.source = source
    self.tokenizer = tokenizer
    self.global_batch_size = global_batch_size
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.batch_size = global_batch_size // process_count
    self.augment = augment
    n = source.num_train
    self.epoch_length = n if n < global_batch_size else (n // global_batch_size) * global_batch_size
    self.step = 0
    self._perms: dict[int, np.ndarray] = {}

  @property
  def steps_per_epoch(self) -> float:
    """Global batches per epoch (a fraction when the batch is larger than the data)."""
    return self.epoch_length / self.global_batch_size

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 4:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = epoch_permutation(self.seed, epoch, self.source.num_train)
    return self._perms[epoch]

  def positions(self, step: int) -> np.ndarray:
    """int64 [b]: the stream positions of this process's slice of global batch `step`."""
    start = step * self.global_batch_size + self.process_index * self.batch_size
    return start + np.arange(self.batch_size, dtype=np.int64)

  def units(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(units int64 [b], epochs int64 [b], offsets int64 [b]) of this slice of batch `step`."""
    pos = self.positions(step)
    epochs, offsets = pos // self.epoch_length, pos % self.epoch_length
    units = np.empty_like(pos)
    for e in np.unique(epochs).tolist():
      m = epochs == e
      units[m] = self._permutation(e)[offsets[m]]
    return units, epochs, offsets

  def _uniform(self, stream: int, epochs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.empty(len(offsets), np.float64)
    for e in np.unique(epochs).tolist():
      m = epochs == e
      out[m] = stream_uniform(self.seed, e, stream, offsets[m])
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of global batch `step` (does not move the iterator)."""
    units, epochs, offsets = self.units(step)
    draws = np.stack([self._uniform(_STREAM_IMAGE_DRAW, epochs, offsets),
                      self._uniform(_STREAM_CAPTION_DRAW, epochs, offsets)], axis=1)
    images, captions = self.source.train_examples(units, draws)
    size = self.source.image_size
    if images.shape != (len(units), size, size, 3) or images.dtype != np.uint8:
      raise ValueError(f"data source {self.source.name!r} returned {images.dtype} images of shape "
                       f"{images.shape}; expected uint8 {(len(units), size, size, 3)}")
    if self.augment:
      m = transforms.max_augment_shift(size)
      shifts = np.stack([
          np.floor(self._uniform(s, epochs, offsets) * (2 * m + 1)).astype(np.int64) - m
          for s in (_STREAM_SHIFT_Y, _STREAM_SHIFT_X)], axis=1)
      images = transforms.random_shift(images, shifts)
    return {"image": transforms.to_float(images), "text": self.tokenizer.encode(captions)}

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    out = self.batch(self.step)
    self.step += 1
    return out

  def get_state(self) -> dict[str, Any]:
    """The position in the stream: JSON-serialisable ints and strings.

    "step" is the index of the next global batch; "epoch" and "offset" are where it starts.
    The other fields identify the stream and are checked by `set_state`. The state holds no
    process index, so it can be restored on a different number of processes.
    """
    start = self.step * self.global_batch_size
    return {
        "format": STATE_FORMAT,
        "source": self.source.name,
        "num_train": int(self.source.num_train),
        "seed": self.seed,
        "global_batch_size": int(self.global_batch_size),
        "step": int(self.step),
        "epoch": int(start // self.epoch_length),
        "offset": int(start % self.epoch_length),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Moves to `state` (from `get_state`): the next batch is the one that followed it."""
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"not a data iterator state of format {STATE_FORMAT!r}: {state!r}")
    expected = {"source": (self.source.name, "config.data.name"),
                "num_train": (self.source.num_train, "config.data (the training set changed)"),
                "seed": (self.seed, "config.seed"),
                "global_batch_size": (self.global_batch_size, "config.batch_size")}
    for key, (value, field) in expected.items():
      if state.get(key) != value:
        raise ConfigError(f"cannot resume the data stream: the saved state has {key} = "
                          f"{state.get(key)!r} but {field} gives {value!r}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"data iterator state has an invalid step {step!r}")
    self.step = int(step)


def make_train_iterator(config: Any, tokenizer: Tokenizer, process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """The training iterator for the whole config (uses config.batch_size, config.seed, config.data).

  Args:
    config: the run's ConfigDict.
    tokenizer: from `make_tokenizer(config.data)`.
    process_index, process_count: this process's place among the hosts (jax.process_index(),
      jax.process_count()).

  Returns:
    A `TrainIterator` whose items are this process's slices ([config.batch_size // process_count]
    examples) of the global batches, with `get_state()` / `set_state()`.
  """
  batch_size = data_registry.check_int(
      data_registry.get_field(config, "batch_size", prefix="config"), "config.batch_size", 1)
  seed = data_registry.check_int(data_registry.get_field(config, "seed", prefix="config"),
                                 "config.seed")
  data_config = data_registry.get_field(config, "data", prefix="config")
  augment = data_registry.check_bool(
      data_registry.get_field(data_config, "augment", False), "config.data.augment")
  max_len = data_config.get("max_len", tokenizer.max_len)
  if max_len != tokenizer.max_len:
    raise ConfigError(f"config.data.max_len = {max_len!r} but the tokenizer encodes rows of "
                      f"{tokenizer.max_len}; build it with make_tokenizer(config.data)")
  source = data_registry.build_source(data_config)
  return TrainIterator(source, tokenizer, global_batch_size=batch_size, seed=seed,
                       process_index=process_index, process_count=process_count,
                       augment=augment)


def load_eval_split(data_config: Any, split: str = "heldout") -> EvalSet:
  """The evaluation split `split` of the source named by `config.data.name`."""
  return data_registry.build_source(data_config).eval_split(split)
