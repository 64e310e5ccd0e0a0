"""Tests for clip_jax.data.preprocess: crop boxes, resized crop, flip, normalisation (train and
eval alike) and its config errors. Determinism across process counts with crop and flip on:
test_pipeline.py::test_process_slices_concatenate_to_global_batch."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from clip_jax.data import load_eval_split, make_tokenizer, make_train_iterator, preprocess
from clip_jax.data import transforms
from clip_jax.registry import ConfigError


def test_crop_boxes_stay_inside_with_area_and_ratio_in_range():
  size, scale, ratio = 32, (0.3, 1.0), (3 / 4, 4 / 3)
  draws = np.random.default_rng(0).random((20_000, preprocess.CROP_DRAWS))
  x0, y0, x1, y1 = preprocess.crop_boxes(draws, size, scale, ratio).T
  assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
  w, h = x1 - x0, y1 - y0
  area, r = w * h / size ** 2, w / h
  assert area.min() >= scale[0] - 1e-9 and area.max() <= scale[1] + 1e-9
  assert r.min() >= ratio[0] - 1e-9 and r.max() <= ratio[1] + 1e-9
  # The whole ranges are used: area uniform, log-ratio spread over its range, boxes everywhere.
  assert abs(area.mean() - 0.65) < 0.01 and area.min() < 0.31 and area.max() > 0.99
  assert r.min() < 0.76 and r.max() > 1.32 and abs(np.log(r).mean()) < 0.01
  assert x0.max() > 0.9 * (size - w[x0.argmax()]) and (x0 < 0.5).mean() > 0.05


def test_resized_crop_takes_the_box_and_flip_mirrors():
  images = np.zeros((2, 8, 8, 3), np.uint8)
  images[:, :, 4:] = 255  # left half black, right half white
  images[1, 0, 0] = 9
  full = preprocess.resized_crop(images, np.array([[0, 0, 8, 8], [0, 0, 8, 8]], float))
  np.testing.assert_array_equal(full, images)
  halves = preprocess.resized_crop(images, np.array([[0, 0, 4, 8], [4, 0, 8, 8]], float))
  # Output column x samples the box at 0.25 + x / 2 (bilinear): columns 0-6 lie in the black
  # half; column 7, at 3.75, weighs in a quarter of the white pixel beyond the box's edge.
  np.testing.assert_array_equal(halves[0, :, :7], 0)
  np.testing.assert_array_equal(halves[0, :, 7], 64)
  np.testing.assert_array_equal(halves[1, :, 1:], 255)
  flipped = preprocess.flip(images, np.array([False, True]))
  np.testing.assert_array_equal(flipped[0], images[0])
  np.testing.assert_array_equal(flipped[1], images[1, :, ::-1])
  assert flipped[1, 0, 7, 0] == 9 and images[1, 0, 0, 0] == 9  # the input is not modified


def test_clip_normalization_on_known_pixels_and_eval_agrees_with_train():
  pixels = np.array([[0, 128, 255]], np.uint8)
  got = preprocess.to_model_input(pixels, "clip")
  want = [(0 - 0.48145466) / 0.26862954, (128 / 255 - 0.4578275) / 0.26130258,
          (1 - 0.40821073) / 0.27577711]
  assert got.dtype == np.float32
  np.testing.assert_allclose(got[0], want, rtol=1e-6)
  np.testing.assert_array_equal(preprocess.to_model_input(pixels, "minus_one_one"),
                                transforms.to_float(pixels))
  every = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  for normalize in preprocess.NORMALIZATIONS:
    np.testing.assert_allclose(
        preprocess.from_minus_one_one(transforms.to_float(every), normalize),
        preprocess.to_model_input(every, normalize), rtol=0, atol=1e-6)


def test_config_sets_train_and_eval_normalization_crop_and_flip(synthetic_config):
  tok = make_tokenizer(synthetic_config.data)
  plain = next(make_train_iterator(synthetic_config, tok))["image"]
  plain_eval = load_eval_split(synthetic_config.data).images
  synthetic_config.data.preprocess = ml_collections.ConfigDict(dict(normalize="clip"))
  clip = next(make_train_iterator(synthetic_config, tok))["image"]
  clip_eval = load_eval_split(synthetic_config.data).images
  # Train and eval both map a pixel p in [-1, 1] to the CLIP value of the same pixel.
  np.testing.assert_allclose(clip, preprocess.from_minus_one_one(plain, "clip"), atol=1e-6)
  np.testing.assert_allclose(clip_eval, preprocess.from_minus_one_one(plain_eval, "clip"),
                             atol=1e-6)
  assert clip_eval.min() < -1.5 and clip_eval.max() > 2.0  # really renormalised
  synthetic_config.data.preprocess = ml_collections.ConfigDict(dict(flip=True))
  flipped = next(make_train_iterator(synthetic_config, tok))["image"]
  mirrored = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
              for f, p in zip(flipped, plain, strict=True)]
  unchanged = [np.array_equal(f, p) for f, p in zip(flipped, plain, strict=True)]
  assert all(m or u for m, u in zip(mirrored, unchanged)) and 3 <= sum(mirrored) <= 13
  synthetic_config.data.preprocess = ml_collections.ConfigDict(dict(crop_scale=(0.5, 0.6)))
  cropped = next(make_train_iterator(synthetic_config, tok))["image"]
  assert cropped.shape == plain.shape
  assert all(not np.array_equal(c, p) for c, p in zip(cropped, plain, strict=True))


@pytest.mark.parametrize("field,value,message", [
    ("crop_scale", (0.0, 1.0), "crop_scale must be None or a \\(min, max\\) area fraction"),
    ("crop_scale", (0.9, 1.1), "crop_scale"),
    ("crop_ratio", (1.2, 2.0), "crop_ratio must be a \\(min, max\\) width / height range"),
    ("normalize", "imagenet", "normalize must be one of 'minus_one_one', 'clip'"),
    ("flips", True, "flips is not a known field; did you mean 'flip'"),
])
def test_config_errors_name_the_field(synthetic_config, field, value, message):
  tok = make_tokenizer(synthetic_config.data)
  synthetic_config.data.preprocess = ml_collections.ConfigDict({field: value})
  with pytest.raises(ConfigError, match=f"config.data.preprocess.{message}"):
    make_train_iterator(synthetic_config, tok)
  if field == "normalize":
    with pytest.raises(ConfigError, match="config.data.preprocess.normalize"):
      load_eval_split(synthetic_config.data)
