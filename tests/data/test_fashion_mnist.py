"""Tests for the Fashion-MNIST source on the files of Debian's dataset-fashion-mnist."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from clip_jax.data import (build_source, fashion_mnist, load_eval_split, make_tokenizer,
                           make_train_iterator)
from clip_jax.data.registry import clear_source_memo
from clip_jax.registry import ConfigError

NUM_TRAIN = 48


def raw_idx(stem: str, kind: str) -> np.ndarray:
  """The whole IDX file, parsed here independently of the source: uint8 [n] or [n, 28, 28]."""
  name = f"{stem}-images-idx3-ubyte.gz" if kind == "images" else f"{stem}-labels-idx1-ubyte.gz"
  raw = gzip.decompress((Path(fashion_mnist.DEFAULT_PATH) / name).read_bytes())
  dims = 3 if kind == "images" else 1
  shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> ml_collections.ConfigDict:
  """A run config on Fashion-MNIST: 48 training images at 16 px, batch 16, a fresh cache."""
  if not Path(fashion_mnist.DEFAULT_PATH).is_dir():
    pytest.fail(f"Fashion-MNIST tests need `apt-get install {fashion_mnist.PACKAGE}`",
                pytrace=False)
  config = ml_collections.ConfigDict()
  config.seed = 1
  config.batch_size = 16
  config.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist", cache_dir=str(tmp_path_factory.mktemp("fm_cache")), image_size=16,
      num_train=NUM_TRAIN, max_len=12, augment=False,
      tokenizer=ml_collections.ConfigDict(dict(name="bpe", vocab_size=320))))
  return config


def test_training_units_match_the_idx_files_and_are_cached(config):
  source = build_source(config.data)
  raw_labels = raw_idx("train", "labels")[:NUM_TRAIN]
  assert source.num_train == NUM_TRAIN
  np.testing.assert_array_equal(source.labels, raw_labels)
  assert source.images.shape == (NUM_TRAIN, 16, 16, 3) and source.images.dtype == np.uint8
  grey = raw_idx("train", "images")[:NUM_TRAIN]
  for i in (0, 7, NUM_TRAIN - 1):  # Pillow's Lanczos resize of the raw pixels, as grey RGB
    want = np.asarray(Image.fromarray(grey[i], "L").resize((16, 16), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(source.images[i], np.repeat(want[..., None], 3, axis=-1))
  units = np.arange(NUM_TRAIN)
  for column, template in zip((0.0, 0.4, 0.99), fashion_mnist.CAPTION_TEMPLATES, strict=True):
    images, captions = source.train_examples(units, np.full((NUM_TRAIN, 2), column))
    np.testing.assert_array_equal(images, source.images)
    assert captions == [template.format(fashion_mnist.CLASSES[k].lower()) for k in raw_labels]
  assert len(source.train_captions()) == 30 and "a photo of the ankle boot." in (
      source.train_captions())
  # A fresh build memory-maps the decoded cache instead of decoding again.
  cached, = Path(config.data.cache_dir, "fashion-mnist").glob(f"train-*-n{NUM_TRAIN}-16px-v1.npy")
  mtime = cached.stat().st_mtime_ns
  clear_source_memo()
  again = build_source(config.data)
  assert again is not source and cached.stat().st_mtime_ns == mtime
  assert isinstance(again.images, np.memmap)
  np.testing.assert_array_equal(again.images, source.images)


def test_heldout_split_is_the_10k_test_images_with_their_classes(config):
  ev = load_eval_split(config.data, split="heldout")
  raw_labels = raw_idx("t10k", "labels")
  assert ev.images.shape == (10000, 16, 16, 3) and ev.images.dtype == np.float32
  assert ev.images.min() == -1.0 and ev.images.max() == 1.0
  labels, classes = ev.labels["class"]
  assert classes == list(fashion_mnist.CLASSES) and list(ev.labels) == ["class"]
  np.testing.assert_array_equal(labels, raw_labels)
  assert ev.texts == [fashion_mnist.CLASSES[k].lower() for k in raw_labels]
  np.testing.assert_array_equal(ev.text_image, np.arange(10000))
  with pytest.raises(ConfigError, match="'test'.*choose one of: heldout"):
    load_eval_split(config.data, split="test")


def test_missing_files_and_bad_fields_are_named(config, tmp_path):
  data = config.data.copy_and_resolve_references()
  data.path = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match=r"config.data.path = .*nowhere.* is not a directory.*"
                     r"apt-get install dataset-fashion-mnist"):
    build_source(data)
  for f in Path(fashion_mnist.DEFAULT_PATH).glob("*-ubyte.gz"):
    if f.name != "t10k-labels-idx1-ubyte.gz":
      shutil.copy(f, tmp_path / f.name)
  data.path = str(tmp_path)
  with pytest.raises(ConfigError, match=r"config.data.path = .*t10k-labels-idx1-ubyte.gz is not "
                     r"there.*apt-get install dataset-fashion-mnist"):
    build_source(data)
  data.path = fashion_mnist.DEFAULT_PATH
  for bad in (0, 60001):
    data.num_train = bad
    with pytest.raises(ConfigError, match="config.data.num_train"):
      build_source(data)


def test_training_stream_is_deterministic(config):
  tok = make_tokenizer(config.data)
  source = build_source(config.data)
  batches = [next(make_train_iterator(config, tok)) for _ in range(2)]
  for key in ("image", "text"):
    np.testing.assert_array_equal(batches[0][key], batches[1][key])
  batch = batches[0]
  assert batch["image"].shape == (16, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["text"].shape == (16, 12) and batch["text"].dtype == np.int32
  # Each row's text is one of the captions of the class of its image.
  unit_of = {source.images[u].tobytes(): u for u in range(NUM_TRAIN)}
  pixels = np.round((batch["image"] + 1.0) * 127.5).astype(np.uint8)
  for image, text in zip(pixels, batch["text"], strict=True):
    label = source.labels[unit_of[image.tobytes()]]
    assert tok.decode(text) in source.captions[label]


def test_heldout_classes_are_left_out_of_training_and_labelled_in_evaluation(config):
  data = config.data.copy_and_resolve_references()
  data.heldout_classes = ("Sandal", "Shirt", "Bag")
  source = build_source(data)
  raw_labels = raw_idx("train", "labels")[:NUM_TRAIN]
  kept = np.flatnonzero(~np.isin(raw_labels, (5, 6, 8)))
  assert 0 < source.num_train == len(kept) < NUM_TRAIN
  images, captions = source.train_examples(np.arange(source.num_train),
                                           np.zeros((source.num_train, 2)))
  np.testing.assert_array_equal(images, source.images[kept])
  assert captions == [fashion_mnist.CLASSES[k].lower() for k in raw_labels[kept]]
  assert len(source.train_captions()) == 21 and not {"sandal", "shirt", "bag"} & set(
      source.train_captions())
  ev = load_eval_split(data, split="heldout")
  heldout, names = ev.labels["heldout_class"]
  assert names == ["Sandal", "Shirt", "Bag"]
  test_labels = raw_idx("t10k", "labels")
  np.testing.assert_array_equal(heldout, np.select(
      [test_labels == 5, test_labels == 6, test_labels == 8], [0, 1, 2], -1))
  for bad in (("Sandal", "Sandal"), ("Sandals",), fashion_mnist.CLASSES):
    data.heldout_classes = bad
    with pytest.raises(ConfigError, match=r"config.data.heldout_classes = .* must be distinct "
                       "Fashion-MNIST class names"):
      build_source(data)
