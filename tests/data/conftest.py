"""Fixtures for the data tests: small synthetic configs, a session-wide emoji cache and the files
of open_clip's tokenizer."""

from __future__ import annotations

import functools
import io
import importlib.util
from pathlib import Path

import ml_collections
import pytest
import tensorflow_datasets as tfds
from PIL import Image


def make_config(cache_dir: Path, **data_overrides) -> ml_collections.ConfigDict:
  """A whole run config with a small synthetic data section."""
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.batch_size = 16
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic", cache_dir=str(cache_dir), image_size=16, max_len=12, num_examples=40,
      num_eval_examples=24, augment=False,
      tokenizer=ml_collections.ConfigDict(dict(name="bpe", vocab_size=320))))
  for key, value in data_overrides.items():
    config.data[key] = value
  return config


@pytest.fixture
def synthetic_config(tmp_path) -> ml_collections.ConfigDict:
  return make_config(tmp_path / "cache")


def demo_config() -> ml_collections.ConfigDict:
  """configs/demo/emoji.py's get_config()."""
  path = Path(__file__).resolve().parents[2] / "configs" / "demo" / "emoji.py"
  spec = importlib.util.spec_from_file_location("demo_emoji_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="session")
def emoji_config(emoji_cache_dir) -> ml_collections.ConfigDict:
  """The demo config (configs/demo/emoji.py) on the session emoji cache, global batch 64."""
  config = demo_config()
  config.data.cache_dir = str(emoji_cache_dir)
  config.batch_size = 64
  return config


@pytest.fixture
def file_config(tmp_path):
  """`file_config(**data)`: a run config (batch 4, seed 3) over a file source ("csv" or
  "webdataset": `data` holds its name and fields), 8 px images, the bytes tokenizer and a cache
  in tmp_path."""
  return functools.partial(_file_config, tmp_path / "cache")


def _file_config(cache_dir: Path, **data) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.batch_size = 4
  config.data = ml_collections.ConfigDict(dict(
      cache_dir=str(cache_dir), image_size=8, max_len=20,
      tokenizer=ml_collections.ConfigDict(dict(name="bytes")), **data))
  return config


# Two tiny TFDS datasets, prepared without TensorFlow (the images are given to TFDS already
# PNG-encoded): a captions dataset with two bad records, and a classification dataset.
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (150, 40, 150),
           (40, 180, 180), (90, 90, 90), (250, 140, 20)]
NAMES = ["red", "green", "blue", "yellow", "purple", "cyan", "grey", "orange"]


def png(colour, size=(12, 9)) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, colour).save(out, "PNG")
  return out.getvalue()


class ClipJaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
  """8 training records (record 5's image is not an image, record 6's captions are empty)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(8)),
            "val": self._generate_examples(range(3))}

  def _generate_examples(self, indices):
    for i in indices:
      image = b"not an image" if i == 5 else png(COLOURS[i])
      texts = [] if i == 6 else [f"a {NAMES[i]} card", f"{NAMES[i]}"]
      yield i, {"image": image, "captions": {"text": texts}}


class ClipJaxTinyClasses(tfds.core.GeneratorBasedBuilder):
  """12 records of 3 classes ("dark_red", "green", "blue")."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(names=["dark_red", "green", "blue"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": png(COLOURS[i % 3]), "label": i % 3}


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the two tiny datasets in the ArrayRecord format."""
  folder = tmp_path_factory.mktemp("tfds")
  for builder in (ClipJaxTinyCaptions, ClipJaxTinyClasses):
    builder(data_dir=str(folder), file_format="array_record").download_and_prepare()
  return str(folder)
