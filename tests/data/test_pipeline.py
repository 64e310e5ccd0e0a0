"""Tests for clip_jax.data.pipeline: determinism, resume, per-host slices, epochs, the
memory-flat shuffle, background building, errors."""

from __future__ import annotations

import json
import time
import tracemalloc

import ml_collections
import numpy as np
import pytest

from clip_jax.data import (DataSource, EvalSet, TrainIterator, make_tokenizer,
                           make_train_iterator, tokenizer as tokenizer_lib)
from clip_jax.data.pipeline import epoch_permutation
from clip_jax.registry import ConfigError


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys() == {"image", "text"}
    assert x["image"].dtype == y["image"].dtype
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["text"], y["text"])


def test_batch_shapes_and_dtypes(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  for count in (1, 2, 4):
    it = make_train_iterator(synthetic_config, tok, process_index=count - 1, process_count=count)
    batch = next(it)
    b = synthetic_config.batch_size // count
    assert batch["image"].shape == (b, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["text"].shape == (b, synthetic_config.data.max_len)
    assert batch["text"].dtype == np.int32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert np.all(batch["text"][:, 0] != tok.pad_id)


def test_deterministic_given_seed(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  a = _take(make_train_iterator(synthetic_config, tok), 4)
  b = _take(make_train_iterator(synthetic_config, tok), 4)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["image"], a[1]["image"])
  synthetic_config.seed = 4
  c = _take(make_train_iterator(synthetic_config, tok), 1)
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_state_round_trip_resumes_exactly(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  it = make_train_iterator(synthetic_config, tok)
  _take(it, 5)  # 40 examples, batch 16: epochs of 2 batches, so this crosses epochs
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 5 and state["epoch"] == 2 and state["offset"] == 16
  expected = _take(it, 3)
  fresh = make_train_iterator(synthetic_config, make_tokenizer(synthetic_config.data))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 3), expected)
  # The state also restores on another process count: the slices make up the same batches.
  halves = []
  for p in range(2):
    host = make_train_iterator(synthetic_config, tok, process_index=p, process_count=2)
    host.set_state(state)
    halves.append(_take(host, 3))
  for k in range(3):
    for key in ("image", "text"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][k][key], halves[1][k][key]]), expected[k][key])


@pytest.mark.parametrize("augment,crop_flip", [(False, False), (True, False), (True, True)])
def test_process_slices_concatenate_to_global_batch(synthetic_config, augment, crop_flip):
  synthetic_config.data.augment = augment
  if crop_flip:
    synthetic_config.data.preprocess = ml_collections.ConfigDict(dict(crop_scale=(0.5, 1.0),
                                                                      flip=True))
  tok = make_tokenizer(synthetic_config.data)
  whole = _take(make_train_iterator(synthetic_config, tok), 5)
  for count in (2, 4):
    parts = [_take(make_train_iterator(synthetic_config, tok, p, count), 5) for p in range(count)]
    for k in range(5):
      for key in ("image", "text"):
        np.testing.assert_array_equal(
            np.concatenate([parts[p][k][key] for p in range(count)]), whole[k][key])


def test_augment_changes_images_but_not_texts(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  plain = _take(make_train_iterator(synthetic_config, tok), 2)
  synthetic_config.data.augment = True
  aug = _take(make_train_iterator(synthetic_config, tok), 2)
  aug2 = _take(make_train_iterator(synthetic_config, tok), 2)
  _assert_batches_equal(aug, aug2)
  for p, a in zip(plain, aug, strict=True):
    np.testing.assert_array_equal(p["text"], a["text"])
    assert not np.array_equal(p["image"], a["image"])
    # Shifting only moves content: the non-white pixel count barely changes (border clipping).
    assert (a["image"] < 1).sum() <= (p["image"] < 1).sum()


class CountingSource(DataSource):
  """Unit u: an image whose first pixel is u, captioned 'item u'."""
  name = "counting"
  image_size = 4

  def __init__(self, n):
    self.n = n
    self.requested = []

  @property
  def num_train(self):
    return self.n

  def train_captions(self):
    return [f"item {u}" for u in range(self.n)]

  def train_examples(self, units, draws):
    self.requested.append(np.asarray(units).copy())
    images = np.zeros((len(units), 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = units
    return images, [f"item {u}" for u in units]

  @property
  def eval_splits(self):
    return ()

  def eval_split(self, split):
    raise self.unknown_split(split)


def _units(batch):
  return np.round((batch["image"][:, 0, 0, 0] + 1) * 127.5).astype(int)


def test_epochs_are_permutations_and_remainder_is_dropped():
  tok = tokenizer_lib.ByteTokenizer(max_len=12)
  source = CountingSource(10)
  it = TrainIterator(source, tok, global_batch_size=4, seed=1)
  assert it.epoch_length == 8
  epochs = [np.concatenate([_units(next(it)) for _ in range(2)]) for _ in range(6)]
  for e in epochs:
    assert len(set(e.tolist())) == 8 and set(e.tolist()) <= set(range(10))
  assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch
  assert len(set(np.concatenate(epochs).tolist())) == 10  # the dropped units differ by epoch
  assert it.get_state()["epoch"] == 6 and it.get_state()["offset"] == 0
  assert tok.decode(next(it)["text"][0]).startswith("item ")


def test_batch_larger_than_data_runs_across_epochs():
  tok = tokenizer_lib.ByteTokenizer(max_len=12)
  it = TrainIterator(CountingSource(10), tok, global_batch_size=16, seed=0)
  stream = np.concatenate([_units(next(it)) for _ in range(5)])  # 80 positions = 8 epochs
  for e in range(8):
    assert sorted(stream[10 * e:10 * (e + 1)].tolist()) == list(range(10))


def test_each_process_builds_only_its_slice():
  tok = tokenizer_lib.ByteTokenizer(max_len=12)
  source = CountingSource(64)
  whole = TrainIterator(source, tok, global_batch_size=16, seed=2).units(3)[0]
  source.requested.clear()
  it = TrainIterator(source, tok, global_batch_size=16, seed=2, process_index=1, process_count=4)
  it.set_state({**it.get_state(), "step": 3})
  next(it)
  assert len(source.requested) == 1
  np.testing.assert_array_equal(source.requested[0], whole[4:8])


def test_config_and_state_errors(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  synthetic_config.batch_size = 15
  with pytest.raises(ConfigError, match="config.batch_size"):
    make_train_iterator(synthetic_config, tok, process_index=0, process_count=2)
  synthetic_config.batch_size = 0
  with pytest.raises(ConfigError, match="config.batch_size"):
    make_train_iterator(synthetic_config, tok)
  synthetic_config.batch_size = 16
  with pytest.raises(ValueError, match="process_index"):
    make_train_iterator(synthetic_config, tok, process_index=2, process_count=2)
  state = make_train_iterator(synthetic_config, tok).get_state()
  synthetic_config.batch_size = 8
  with pytest.raises(ConfigError, match="config.batch_size"):
    make_train_iterator(synthetic_config, tok).set_state(state)
  synthetic_config.batch_size = 16
  synthetic_config.seed = 99
  with pytest.raises(ConfigError, match="config.seed"):
    make_train_iterator(synthetic_config, tok).set_state(state)
  with synthetic_config.data.ignore_type():
    synthetic_config.data.augment = "yes"
  with pytest.raises(ConfigError, match="config.data.augment"):
    make_train_iterator(synthetic_config, tok)
  with synthetic_config.data.ignore_type():
    synthetic_config.data.augment = False
  synthetic_config.data.max_len = 20
  with pytest.raises(ConfigError, match="config.data.max_len"):
    make_train_iterator(synthetic_config, tok)


def test_eval_set_validates_shapes():
  with pytest.raises(ValueError, match="text_image"):
    EvalSet(images=np.zeros((2, 4, 4, 3)), texts=["a", "b"], text_image=np.array([0, 2]),
            labels={})
  with pytest.raises(ValueError, match="labels"):
    EvalSet(images=np.zeros((2, 4, 4, 3)), texts=["a"], text_image=np.array([1]),
            labels={"x": (np.array([0]), ["c"])})


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 4097])
def test_epoch_permutation_is_a_bijection_that_changes_with_epoch_and_seed(n):
  offsets = np.arange(n)
  orders = {(seed, epoch): epoch_permutation(seed, epoch, n, offsets)
            for seed in (0, 5) for epoch in (0, 1, 2)}
  for order in orders.values():
    assert order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order), offsets)
  if n >= 1000:
    assert len({o.tobytes() for o in orders.values()}) == len(orders)
    assert not np.array_equal(orders[0, 0], offsets)
    # Any slice of offsets gives the same units as the whole order there.
    np.testing.assert_array_equal(epoch_permutation(5, 2, n, offsets[n // 3:n // 2]),
                                  orders[5, 2][n // 3:n // 2])


class IndexOnlySource(CountingSource):
  """A source of `n` units that builds nothing: the iterator's indexing alone is measured."""
  name = "index_only"

  def train_captions(self):
    raise AssertionError("not needed")


def test_shuffle_memory_is_flat_in_the_number_of_units():
  n = 100_000_000  # a full permutation of these would take 800 MB
  tok = tokenizer_lib.ByteTokenizer(max_len=12)
  tracemalloc.start()
  try:
    it = TrainIterator(IndexOnlySource(n), tok, global_batch_size=256, seed=0)
    steps = (0, 1, 390_624, 390_625, 10_000_000)  # the last epoch-0 batch, epochs 1 and 25
    units = [it.units(k) for k in steps]
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 1 << 20, f"peak {peak} bytes"
  for (u, epochs, _), k in zip(units, steps, strict=True):
    assert len(set(u.tolist())) == 256 and u.min() >= 0 and u.max() < n
    assert set(epochs.tolist()) == {k * 256 // n}


def test_prefetched_stream_equals_synchronous_and_builds_ahead(synthetic_config):
  synthetic_config.data.preprocess = ml_collections.ConfigDict(dict(crop_scale=(0.5, 1.0)))
  tok = make_tokenizer(synthetic_config.data)
  synthetic_config.data.num_threads = 0
  sync = make_train_iterator(synthetic_config, tok)
  expected = _take(sync, 5)
  _assert_batches_equal(expected, [sync.batch(k) for k in range(5)])
  synthetic_config.data.num_threads = 2
  synthetic_config.data.prefetch = 3
  _assert_batches_equal(_take(make_train_iterator(synthetic_config, tok), 5), expected)
  # The next batches are built in the background, before `next()` asks for them.
  source = CountingSource(64)
  for threads, built in ((0, 1), (2, 4)):
    it = TrainIterator(source, tok, global_batch_size=8, seed=0, num_threads=threads,
                       prefetch=3)
    source.requested.clear()
    next(it)
    deadline = time.time() + 10
    while len(source.requested) < built and time.time() < deadline:
      time.sleep(0.01)
    time.sleep(0.05)
    assert len(source.requested) == built
    it.close()


def test_resume_with_prefetching_gives_the_next_batch(synthetic_config):
  synthetic_config.data.num_threads = 2
  tok = make_tokenizer(synthetic_config.data)
  it = make_train_iterator(synthetic_config, tok)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 2)
  fresh = make_train_iterator(synthetic_config, tok)
  _take(fresh, 1)  # its threads are building batches 1, 2, ...
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 2), expected)
  it.close()
  fresh.close()
