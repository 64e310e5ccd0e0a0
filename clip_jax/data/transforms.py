"""Image preprocessing: decode, composite on white, resize, scale to [-1, 1], light augmentation.

Images travel as uint8 `[..., H, W, 3]` until the last step, `to_float`, which maps 0 -> -1.0 and
255 -> 1.0 exactly (a fully transparent pixel, composited on white, becomes 1.0 in all channels).

Decoding rules (`decode_image`, the one place that turns image files into pixels):

- Orientation: the EXIF Orientation tag (JPEG, PNG eXIf, WebP, TIFF) is applied, so the pixels are
  the image as displayed (`PIL.ImageOps.exif_transpose`; Pillow applies TIFF's own tag on load).
- Alpha: every kind of transparency Pillow reads (an alpha channel in LA, PA, RGBA; a palette or
  colour-key tRNS in P, L, RGB, 16-bit grey PNG; GIF's transparent index) is composited on white:
  out = alpha/255 * colour + (1 - alpha/255) * 255.
- 8-bit modes convert with Pillow: 1 -> 0 or 255; CMYK -> (255 - C) * (255 - K) / 255 per channel
  (no ICC profile is applied); YCbCr by the JFIF matrix; LAB (CIELab TIFF) to sRGB by Pillow's
  LittleCMS transform from D50 Lab.
- 16-bit grey (I;16, I;16B, I;16L, I;16N: 16-bit PNG and TIFF) -> round(v / 257), which maps
  0 -> 0, 65535 -> 255 and each other level k from the 257 values nearest 257 * k.
- I (32-bit int: Pillow's mode for 16-bit PGM and signed or 32-bit TIFF) holds 16-bit samples:
  clip(v, 0, 65535), then round(v / 257) as above.
- F (32-bit float TIFF) holds intensities in [0, 1]: round(clip(v, 0, 1) * 255); NaN counts as 0.
- 16-bit-per-channel colour (48/64-bit RGB(A) and 32-bit LA PNG, 16-bit RGB(A)/CMYK TIFF): Pillow
  reads these as 8-bit itself and keeps the high byte, v >> 8, which is within one level of
  round(v / 257); 16-bit PPM is rounded by Pillow. The low bytes are not available to us.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Modes whose samples have more than 8 bits; Pillow's own conversion of these to L or RGB clips
# at 255 instead of scaling, so they are scaled here (rules in the module docstring).
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def decode_image(data: bytes | str | os.PathLike, image_size: int, *,
                 crop: str = "none") -> np.ndarray:
  """Decodes an image file (PNG, JPEG, TIFF, WebP, GIF, BMP, ...) to RGB at `image_size` square.

  The EXIF orientation is applied, high-bit-depth samples are scaled to 8 bits and transparency
  is composited on a white background (rules in the module docstring), all before resizing;
  resizing is antialiased (Pillow's Lanczos filter, whose support widens when it shrinks).

  Args:
    data: the encoded bytes or a file path.
    image_size: output height and width in pixels.
    crop: "none" resizes the whole image to the square (a non-square one is stretched: the demo
      sources' square art); "center" resizes the shorter side to `image_size`, keeping the
      aspect ratio, and cuts the central square (CLIP's evaluation preprocessing; the users'
      photos, `center_crop`).

  Returns:
    uint8 [image_size, image_size, 3].

  Raises:
    OSError: (PIL.UnidentifiedImageError among them) the data is not a readable image, or is
      truncated. ValueError: an unknown `crop`.
  """
  if crop not in ("none", "center"):
    raise ValueError(f"crop = {crop!r}; expected 'none' or 'center'")
  source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else Path(data)
  with Image.open(source) as img:
    ImageOps.exif_transpose(img, in_place=True)
    rgb = _to_rgb(img)
  if crop == "center":
    rgb = center_crop(rgb, image_size)
  elif rgb.size != (image_size, image_size):
    rgb = rgb.resize((image_size, image_size), Image.Resampling.LANCZOS)
  return np.asarray(rgb, dtype=np.uint8)


def center_crop(img: Image.Image, image_size: int) -> Image.Image:
  """Resizes `img` (Lanczos) so that its shorter side is `image_size`, the longer one
  round(longer * image_size / shorter), and returns the central `image_size` square (for an odd
  excess the extra column or row is cut on the right or bottom)."""
  w, h = img.size
  scale = image_size / min(w, h)
  size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
  if size != (w, h):
    img = img.resize(size, Image.Resampling.LANCZOS)
  left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
  return img.crop((left, top, left + image_size, top + image_size))


def _to_rgb(img: Image.Image) -> Image.Image:
  """A loaded image of any mode -> 8-bit RGB with transparency composited on white."""
  if img.mode in _HIGH_DEPTH_MODES:
    return _high_depth_to_rgb(img)
  rgba = img.convert("RGBA")
  white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  return Image.alpha_composite(white, rgba).convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
  """A one-channel 16-bit, 32-bit int or float image -> grey RGB (module docstring rules).

  A grey tRNS key (16-bit PNG) makes the pixels equal to it transparent, hence white.
  """
  values = np.asarray(img)
  if img.mode == "F":
    levels = np.nan_to_num(values, nan=0.0).clip(0.0, 1.0) * 255.0
  else:
    levels = values.clip(0, 65535) / 257.0
  grey = np.floor(levels + 0.5).astype(np.uint8)
  key = img.info.get("transparency")
  if isinstance(key, int):
    grey[values == key] = 255
  return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))


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
