"""Tests for clip_jax.data.transforms: decoding, white compositing, scaling, shifting."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import transforms


def _png(array: np.ndarray, mode: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array, mode).save(buf, format="PNG")
  return buf.getvalue()


def test_transparent_pixels_become_white_and_scale_to_one():
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[:4, :, :] = (200, 10, 30, 255)  # top half opaque red-ish, bottom half fully transparent
  rgba[4:, :, :3] = (0, 0, 0)  # transparent black must not leak
  img = transforms.decode_image(_png(rgba, "RGBA"), 8)
  assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
  np.testing.assert_array_equal(img[:4], np.broadcast_to([200, 10, 30], (4, 8, 3)))
  np.testing.assert_array_equal(img[4:], 255)
  f = transforms.to_float(img)
  assert f.dtype == np.float32
  np.testing.assert_array_equal(f[4:], 1.0)
  np.testing.assert_allclose(f[0, 0], np.array([200, 10, 30]) / 127.5 - 1, rtol=0, atol=1e-6)


def test_half_transparent_pixel_blends_with_white():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[...] = (0, 0, 0, 128)
  img = transforms.decode_image(_png(rgba, "RGBA"), 4)
  np.testing.assert_allclose(img.astype(float), 255 * (1 - 128 / 255), atol=1.0)


def test_resize_is_antialiased_and_handles_other_modes():
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
  img = transforms.decode_image(_png(checker, "L"), 16)
  assert img.shape == (16, 16, 3)
  # Antialiasing averages the checkerboard to mid grey instead of aliasing to black or white.
  assert np.all(np.abs(img.astype(float) - 127.5) < 20), img.min()


def test_to_float_range_and_dtype_check():
  f = transforms.to_float(np.array([0, 1, 254, 255], np.uint8))
  assert f[0] == -1.0 and f[-1] == 1.0 and np.all(np.diff(f) > 0)
  with pytest.raises(TypeError):
    transforms.to_float(np.zeros(3, np.float32))


def test_random_shift_moves_content_and_fills_white():
  images = np.zeros((2, 6, 6, 3), np.uint8)
  images[:, 2, 3] = 7
  out = transforms.random_shift(images, np.array([[1, -2], [0, 0]]))
  assert out[0, 3, 1, 0] == 7 and (out[0] == 7).sum() == 3
  np.testing.assert_array_equal(out[0, 0], 255)  # top row uncovered by a downward shift
  np.testing.assert_array_equal(out[0, :, 4:], 255)  # right columns uncovered by a left shift
  np.testing.assert_array_equal(out[1], images[1])
  with pytest.raises(ValueError):
    transforms.random_shift(images, np.array([[6, 0], [0, 0]]))
