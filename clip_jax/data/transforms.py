"""Image preprocessing: decode, composite on white, resize, scale to [-1, 1], light augmentation.

Images travel as uint8 `[..., H, W, 3]` until the last step, `to_float`, which maps 0 -> -1.0 and
255 -> 1.0 exactly (a fully transparent pixel, composited on white, becomes 1.0 in all channels).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def decode_image(data: bytes | str | os.PathLike, image_size: int) -> np.ndarray:
  """Decodes an image file (PNG, ...) to RGB at `image_size` x `image_size`.

  Transparency is composited on a white background before resizing; resizing is antialiased
  (Pillow's Lanczos filter, whose support widens when it shrinks an image).

  Args:
    data: the encoded bytes or a file path.
    image_size: output height and width in pixels.

  Returns:
    uint8 [image_size, image_size, 3].
  """
  source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else Path(data)
  with Image.open(source) as img:
    img.load()
    rgba = img.convert("RGBA")
  white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  rgb = Image.alpha_composite(white, rgba).convert("RGB")
  if rgb.size != (image_size, image_size):
    rgb = rgb.resize((image_size, image_size), Image.Resampling.LANCZOS)
  return np.asarray(rgb, dtype=np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] in [0, 255] -> float32 [..., 3] in [-1, 1] (0 -> -1, 255 -> 1 exactly)."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def random_shift(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
  """Translates each image by whole pixels, filling the uncovered border with white.

  Args:
    images: uint8 [n, H, W, C].
    shifts: int [n, 2], the (down, right) shift of each image in pixels; |shift| < H and < W.

  Returns:
    uint8 [n, H, W, C]; out[i, y, x] = images[i, y - dy, x - dx] where that is inside the image,
    else 255.
  """
  images = np.asarray(images)
  shifts = np.asarray(shifts, dtype=np.int64)
  n, h, w, _ = images.shape
  if shifts.shape != (n, 2):
    raise ValueError(f"shifts has shape {shifts.shape}; expected ({n}, 2)")
  if n and (np.abs(shifts[:, 0]).max() >= h or np.abs(shifts[:, 1]).max() >= w):
    raise ValueError(f"shifts must be smaller than the image size ({h}, {w})")
  out = np.full_like(images, 255)
  for i, (dy, dx) in enumerate(shifts):
    out[i, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = (
        images[i, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)])
  return out


def max_augment_shift(image_size: int) -> int:
  """The largest shift `random_shift` uses for training augmentation: 1/8 of the image side."""
  return max(1, image_size // 8)
