"""`train_batch_spec` (the shapes the trainer and the evaluator build from, with no data drawn)
is exactly what the pipeline delivers, for every config file: every source, extra views, several
captions per example; and for each, exact resume and per-process slices."""

import glob
import os

import numpy as np
import pytest

from clip_jax.config import load_config_file
from clip_jax.data import (make_tokenizer, make_train_iterator, pack, registry as data_registry,
                           synthetic, table, train_batch_spec)
from clip_jax.registry import ConfigError

from tests.data.test_image_folder import write_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILES = sorted([p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                            recursive=True)
                       # table configs: tests/test_tables.py
                       if os.path.dirname(p) != os.path.join(ROOT, "configs", "tables")]
                      + glob.glob(os.path.join(ROOT, "tests", "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_spec_is_the_shape_of_a_real_batch(path, request):
  config = load_config_file(path)
  if config.data.name == "emoji":  # the session's emoji cache (tests/data/conftest.py)
    config.data.cache_dir = str(request.getfixturevalue("emoji_cache_dir"))
  if config.data.name == "fashion_mnist":  # a fresh cache, a few of the training images
    config.data.cache_dir = str(request.getfixturevalue("tmp_path"))
    config.data.num_train = 16
  if config.data.name in ("csv", "webdataset"):  # 12 small images (tests/conftest.py)
    table_path = str(request.getfixturevalue("photo_table"))
    config.data.cache_dir = os.path.join(os.path.dirname(table_path), "cache")
    if config.data.name == "csv":
      config.data.path = table_path
    else:
      samples, _ = table.read_table(table_path, "filepath", "title")
      config.data.train_shards = pack.write_shards(samples, config.data.cache_dir, 5)[0][0]
  if config.data.name == "tfds":  # the tiny captions dataset (tests/data/conftest.py)
    config.data.update(data_dir=request.getfixturevalue("tfds_data_dir"),
                       dataset="clip_jax_tiny_captions", text_key="captions/text",
                       max_skip_fraction=0.5, cache_dir=str(request.getfixturevalue("tmp_path")))
  if config.data.name == "image_folder":  # 3 class folders of 4 images
    config.data.path = str(write_folder(request.getfixturevalue("tmp_path") / "folders"))
  request.getfixturevalue("with_tokenizer_files")(config)  # a paper config's tokenizer file
  config.batch_size = 4 * config.data.get("captions_per_example", 1)  # a few examples suffice
  spec = train_batch_spec(config)
  tokenizer = make_tokenizer(config.data)
  it = make_train_iterator(config, tokenizer)
  batch = next(it)
  assert {k: (s.shape, s.dtype) for k, s in spec.items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items()}
  # Every source: a restored iterator continues with the identical next batch, and two
  # processes' slices concatenate to the one-process batch.
  state, following = it.get_state(), next(it)
  restored = make_train_iterator(config, tokenizer)
  restored.set_state(state)
  halves = [make_train_iterator(config, tokenizer, p, 2) for p in range(2)]
  for half in halves:
    half.set_state(state)
  again, (first, second) = next(restored), [next(h) for h in halves]
  for key, value in following.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)
    np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), value, err_msg=key)


def test_config_files_cover_every_source_views_and_captions():
  configs = [load_config_file(p).data for p in CONFIG_FILES]
  assert {c.name for c in configs} == {"csv", "emoji", "fashion_mnist", "image_folder",
                                       "synthetic", "tfds", "webdataset"}
  assert any(c.get("extra_views", ()) for c in configs)
  assert any(c.get("captions_per_example", 1) > 1 for c in configs)


def test_a_source_of_another_image_size_is_named(synthetic_config, monkeypatch):
  other = synthetic.SyntheticSource(image_size=synthetic_config.data.image_size * 2)
  monkeypatch.setattr(data_registry, "build_source", lambda data_config: other)
  with pytest.raises(ConfigError, match=r"renders 32-pixel images but config.data.image_size "
                                        r"= 16"):
    make_train_iterator(synthetic_config, make_tokenizer(synthetic_config.data))
