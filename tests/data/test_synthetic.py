"""Tests for the synthetic source: deterministic images that match their captions and labels."""

from __future__ import annotations

import numpy as np
import pytest

from clip_jax.data import build_source, load_eval_split, synthetic
from clip_jax.registry import ConfigError


def test_eval_split_labels_match_texts_and_pixels(synthetic_config):
  ev = load_eval_split(synthetic_config.data, split="heldout")
  n = synthetic_config.data.num_eval_examples
  size = synthetic_config.data.image_size
  assert ev.images.shape == (n, size, size, 3) and ev.images.dtype == np.float32
  assert ev.images.min() >= -1.0 and ev.images.max() <= 1.0
  assert len(ev.texts) == n
  np.testing.assert_array_equal(ev.text_image, np.arange(n))
  assert {"shape", "color"} <= set(ev.labels)
  shape_idx, shape_names = ev.labels["shape"]
  color_idx, color_names = ev.labels["color"]
  assert shape_names == list(synthetic.SHAPES) and color_names == list(synthetic.COLORS)
  assert shape_idx.dtype == np.int32 and shape_idx.shape == (n,)
  assert len(set(shape_idx.tolist())) > 1 and len(set(color_idx.tolist())) > 1
  for i, text in enumerate(ev.texts):
    words = text.split()
    assert shape_names[shape_idx[i]] == words[-1] and color_names[color_idx[i]] == words[-2]
    # The most common non-white colour in the image is the labelled colour.
    pixels = np.round((ev.images[i].reshape(-1, 3) + 1) * 127.5)
    inside = pixels[np.abs(pixels - 255).max(axis=1) > 0]
    dist = np.abs(inside[:, None, :] - np.array(list(synthetic.COLORS.values()))[None]).sum(-1)
    assert np.bincount(dist.argmin(1), minlength=len(color_names)).argmax() == color_idx[i]
  # White background: the image has pure white pixels (the shapes never fill the image).
  assert np.all((ev.images == 1.0).all(-1).any(axis=(1, 2)))


def test_deterministic_and_separate_from_training(synthetic_config):
  source = build_source(synthetic_config.data)
  other = synthetic.build(synthetic_config.data)  # a fresh object, not the memoised one
  assert source is not other
  units = np.array([5, 0, 39, 5])
  images, captions = source.train_examples(units, np.zeros((4, 2)))
  images2, captions2 = other.train_examples(units, np.ones((4, 2)) * 0.5)
  np.testing.assert_array_equal(images, images2)
  assert captions == captions2 and images.dtype == np.uint8 and images.shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(images[0], images[3])
  train = source.eval_split("train")
  assert train.texts == source.train_captions()
  np.testing.assert_array_equal(np.round((train.images[units[:3]] + 1) * 127.5), images[:3])
  heldout = source.eval_split("heldout")
  assert not np.array_equal(heldout.images[:3], train.images[:3])


def test_config_errors(synthetic_config):
  data = synthetic_config.data
  data.num_examples = 0
  with pytest.raises(ConfigError, match="config.data.num_examples"):
    build_source(data)
  data.num_examples = 8
  data.image_size = 2
  with pytest.raises(ConfigError, match="config.data.image_size"):
    build_source(data)
  data.image_size = 16
  with pytest.raises(ConfigError, match="split"):
    load_eval_split(data, split="validation")
  data.name = "imagenet"
  with pytest.raises(ConfigError, match=r"config.data.name.*emoji.*synthetic"):
    build_source(data)
