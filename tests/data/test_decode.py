"""Tests for transforms.decode_image over Pillow's image modes, containers and EXIF orientations.

Every image is built in memory; each expected RGB is computed with numpy from the samples written,
by the rules in the transforms module docstring, never by decoding with Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import transforms

SIDE = 16  # images are SIDE x SIDE and decoded at SIDE, so no resizing takes part
LOSSY_TOLERANCE = {"JPEG": 6}  # max |decoded - expected| per channel; 0 for the rest
MODE_TOLERANCE = {"YCbCr": 1}  # Pillow's fixed-point YCbCr -> RGB vs the exact JFIF formula
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt, **SAVE_OPTIONS.get(fmt, {}), **options)
  return buf.getvalue()


def _png16(samples: np.ndarray) -> bytes:
  """A PNG with 16-bit samples, written by hand since Pillow writes only 16-bit grey.

  Args:
    samples: uint16 [H, W, C] with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA).
  """
  h, w, c = samples.shape
  colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]

  def chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

  header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)  # no interlacing
  rows = b"".join(b"\0" + row.tobytes() for row in samples.astype(">u2"))  # filter 0 per row
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def _round(x: np.ndarray) -> np.ndarray:
  return np.floor(np.asarray(x, np.float64) + 0.5).astype(np.uint8)


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """[H, W, 3] colour and [H, W] alpha, both 0..255 -> the colour composited on white."""
  a = alpha[..., None] / 255.0
  return _round(colour * a + 255.0 * (1.0 - a))


def _grey(levels: np.ndarray) -> np.ndarray:
  return np.repeat(np.asarray(levels, np.uint8)[..., None], 3, axis=-1)


class _Samples:
  """Random samples for one test image; `blocky` makes them flat on 8x8 blocks (for JPEG)."""

  def __init__(self, seed: int, blocky: bool):
    self.rng = np.random.default_rng(seed)
    self.blocky = blocky

  def ints(self, low: int, high: int, channels: tuple[int, ...] = ()) -> np.ndarray:
    n = 2 if self.blocky else SIDE
    return self._spread(self.rng.integers(low, high, (n, n) + channels))

  def floats(self, low: float, high: float) -> np.ndarray:
    n = 2 if self.blocky else SIDE
    return self._spread(self.rng.uniform(low, high, (n, n)).astype(np.float32))

  def _spread(self, x: np.ndarray) -> np.ndarray:
    return x.repeat(8, 0).repeat(8, 1) if self.blocky else x


def _raw(mode: str, samples: np.ndarray) -> Image.Image:
  return Image.frombytes(mode, (SIDE, SIDE), np.ascontiguousarray(samples).tobytes())


def _palette_image(s: _Samples, alpha: np.ndarray | None = None):
  """A P (or, with alpha, PA) image of random indices into a random palette.

  Returns:
    (image, palette uint8 [256, 3], index uint8 [SIDE, SIDE]).
  """
  palette = s.rng.integers(0, 256, (256, 3), dtype=np.uint8)
  index = s.ints(0, 256).astype(np.uint8)
  img = _raw("P" if alpha is None else "PA",
             index if alpha is None else np.stack([index, alpha.astype(np.uint8)], -1))
  img.putpalette(palette.tobytes())
  return img, palette, index


def _keyed(img: Image.Image, key: int | tuple[int, ...]) -> Image.Image:
  """Marks pixels equal to `key` (a palette index, grey level or RGB) transparent."""
  img.info["transparency"] = key
  return img


def _case_1(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  bits = s.ints(0, 2).astype(bool)
  return Image.fromarray(bits), _grey(bits * 255)


def _case_l(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256).astype(np.uint8)
  return Image.fromarray(v), _grey(v)


def _case_l_trns(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256).astype(np.uint8)
  key = int(v[0, 0])
  return _keyed(Image.fromarray(v), key), np.where((v == key)[..., None], 255, _grey(v))


def _case_la(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256, (2,)).astype(np.uint8)
  return Image.fromarray(v), _over_white(_grey(v[..., 0]), v[..., 1])


def _case_p(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  img, palette, index = _palette_image(s)
  return img, palette[index]


def _case_p_trns(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  img, palette, index = _palette_image(s)
  key = int(index[0, 0])
  return _keyed(img, key), np.where((index == key)[..., None], 255, palette[index])


def _case_pa(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  alpha = s.ints(0, 256)
  img, palette, index = _palette_image(s, alpha)
  return img, _over_white(palette[index], alpha)


def _case_rgb(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256, (3,)).astype(np.uint8)
  return Image.fromarray(v), v


def _case_rgb_trns(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 8, (3,)).astype(np.uint8) * 36  # few colours, so the key colour repeats
  key = tuple(int(c) for c in v[0, 0])
  return _keyed(Image.fromarray(v), key), np.where(np.all(v == key, -1)[..., None], 255, v)


def _case_rgba(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256, (4,)).astype(np.uint8)
  return Image.fromarray(v), _over_white(v[..., :3], v[..., 3])


def _case_cmyk(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256, (4,)).astype(np.uint8)
  white_share = (255.0 - v[..., 3:]) / 255.0
  return _raw("CMYK", v), _round((255.0 - v[..., :3]) * white_share)


def _case_ycbcr(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 256, (3,)).astype(np.float64)
  y, cb, cr = v[..., 0], v[..., 1] - 128, v[..., 2] - 128  # JFIF (full-range BT.601)
  rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
  return _raw("YCbCr", v.astype(np.uint8)), _round(rgb.clip(0, 255))


def _sixteen_bit_case(mode: str, dtype: str) -> Callable[[_Samples], tuple]:
  def case(s: _Samples) -> tuple[Image.Image, np.ndarray]:
    v = s.ints(0, 65536)
    v[0, 0], v[0, 1] = 0, 65535  # both ends of the range
    return _raw(mode, v.astype(dtype)), _grey(_round(v / 257))
  return case


def _case_i16_trns(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(0, 65536)
  v[1] = 40000  # the key: a whole row, plus a value one below it that must stay opaque
  v[2, 0] = 39999
  expected = np.where((v == 40000)[..., None], 255, _grey(_round(v / 257)))
  return _keyed(_raw("I;16", v.astype("<u2")), 40000), expected


def _case_i32(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.ints(-70000, 140000)  # outside 0..65535 clips
  return _raw("I", v.astype(np.int32)), _grey(_round(v.clip(0, 65535) / 257))


def _case_f(s: _Samples) -> tuple[Image.Image, np.ndarray]:
  v = s.floats(-0.25, 1.25)
  v[0, 0] = np.nan
  return _raw("F", v), _grey(_round(np.nan_to_num(v.astype(np.float64)).clip(0, 1) * 255))


CASES = {
    "1": _case_1, "L": _case_l, "L+tRNS": _case_l_trns, "LA": _case_la, "P": _case_p,
    "P+tRNS": _case_p_trns, "PA": _case_pa, "RGB": _case_rgb, "RGB+tRNS": _case_rgb_trns,
    "RGBA": _case_rgba, "CMYK": _case_cmyk, "YCbCr": _case_ycbcr,
    "I;16": _sixteen_bit_case("I;16", "<u2"), "I;16B": _sixteen_bit_case("I;16B", ">u2"),
    "I;16L": _sixteen_bit_case("I;16L", "<u2"), "I;16+tRNS": _case_i16_trns, "I": _case_i32,
    "F": _case_f,
}
# The containers Pillow writes each mode to without first reducing it to fewer bits; WebP and GIF
# writers convert to RGB(A) / P, which is lossless for these 8-bit modes.
CONTAINERS = {
    "1": ["PNG", "TIFF", "GIF", "BMP", "PPM", "WEBP"],
    "L": ["PNG", "TIFF", "GIF", "BMP", "PPM", "WEBP", "JPEG"],
    "L+tRNS": ["PNG"],
    "LA": ["PNG", "TIFF", "WEBP"],
    "P": ["PNG", "TIFF", "GIF", "BMP", "WEBP"],
    "P+tRNS": ["PNG", "GIF", "WEBP"],
    "PA": ["TIFF"],
    "RGB": ["PNG", "TIFF", "GIF", "BMP", "PPM", "WEBP", "JPEG"],
    "RGB+tRNS": ["PNG"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "CMYK": ["TIFF", "JPEG"],
    "YCbCr": ["TIFF", "JPEG"],
    "I;16": ["PNG", "TIFF", "PPM"],
    "I;16B": ["PNG", "TIFF"],
    "I;16L": ["TIFF"],
    "I;16+tRNS": ["PNG"],
    "I": ["TIFF", "PPM"],
    "F": ["TIFF"],
}
MATRIX = [(mode, fmt) for mode, formats in CONTAINERS.items() for fmt in formats]


@pytest.mark.parametrize("mode,fmt", MATRIX, ids=[f"{m}-{f}" for m, f in MATRIX])
def test_mode_and_container_decode_to_expected_rgb(mode, fmt):
  samples = _Samples(seed=zlib.crc32(f"{mode}-{fmt}".encode()), blocky=fmt == "JPEG")
  img, expected = CASES[mode](samples)
  out = transforms.decode_image(_encode(img, fmt), SIDE)
  assert out.dtype == np.uint8 and out.shape == (SIDE, SIDE, 3)
  error = np.abs(out.astype(int) - expected.astype(int))
  assert error.max() <= max(LOSSY_TOLERANCE.get(fmt, 0), MODE_TOLERANCE.get(mode, 0)), error.max()


def test_16bit_grey_png_mid_value_is_128():
  img = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # mode I;16
  assert img.mode == "I;16"
  out = transforms.decode_image(_encode(img, "PNG"), 8)
  np.testing.assert_array_equal(out, np.full((8, 8, 3), 128, np.uint8))  # round(32896 / 257)


def test_16bit_grey_ramp_keeps_256_levels():
  ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
  out = transforms.decode_image(_encode(Image.fromarray(ramp), "PNG"), 256)
  assert len(np.unique(out)) == 256
  np.testing.assert_array_equal(out, _grey(_round(ramp / 257)))


def test_16bit_per_channel_png_is_within_one_level():
  # Pillow keeps the high byte of 48/64-bit RGB(A) and 32-bit LA PNGs: v >> 8, not round(v / 257).
  v = np.arange(65536).reshape(256, 256)
  rgb = np.stack([v, 65535 - v, (v * 7) % 65536], -1)
  out = transforms.decode_image(_png16(rgb), 256)
  assert np.abs(out.astype(int) - _round(rgb / 257)).max() <= 1
  assert len(np.unique(out[..., 0])) == 256
  alpha = np.where(v % 2 == 0, 0, 65535)  # fully transparent or opaque
  for samples, colour in [(np.stack([v, alpha], -1), _grey(_round(v / 257))),
                          (np.concatenate([rgb, alpha[..., None]], -1), _round(rgb / 257))]:
    out = transforms.decode_image(_png16(samples), 256)
    expected = np.where((alpha == 0)[..., None], 255, colour)
    assert np.abs(out.astype(int) - expected).max() <= 1, samples.shape


def test_cielab_tiff_decodes_to_srgb():
  # TIFF CIELab: L* * 2.55 in a byte, a* and b* signed bytes. The sRGB references come from the CIE
  # formulas for the stored L* (D50 Lab -> XYZ -> Bradford to D65 -> sRGB), all inside the gamut.
  lab = [(50, 0, 0), (100, 0, 0), (70, -40, 30), (60, 30, 20), (40, 20, -50), (80, -20, 60),
         (45, 50, 30)]
  srgb = [(118, 118, 118), (255, 255, 255), (101, 189, 113), (201, 123, 111), (85, 85, 177),
          (188, 208, 77), (185, 63, 60)]
  row = np.array([(round(l * 2.55), a % 256, b % 256) for l, a, b in lab], np.uint8)
  stored = np.broadcast_to(row, (len(lab),) + row.shape)  # square, every row the same
  data = _encode(Image.frombytes("LAB", (len(lab), len(lab)), stored.tobytes()), "TIFF")
  assert stored.tobytes() in data  # the file holds these bytes: signed a*, b* as TIFF defines
  out = transforms.decode_image(data, len(lab))
  np.testing.assert_allclose(out, np.broadcast_to(srgb, out.shape), rtol=0, atol=3)


def _displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
  """The displayed image, placing each stored pixel (r, c) by the EXIF 2.3 Orientation table.

  E.g. 6: stored row 0 becomes the right column and stored column 0 the top row (a clockwise turn).
  """
  h, w = stored.shape[:2]
  out_h, out_w = (h, w) if orientation <= 4 else (w, h)
  out = np.empty((out_h, out_w) + stored.shape[2:], stored.dtype)
  for r in range(h):
    for c in range(w):
      y, x = {1: (r, c), 2: (r, w - 1 - c), 3: (h - 1 - r, w - 1 - c), 4: (h - 1 - r, c),
              5: (c, r), 6: (c, h - 1 - r), 7: (w - 1 - c, h - 1 - r),
              8: (w - 1 - c, r)}[orientation]
      out[y, x] = stored[r, c]
  return out


def _with_orientation(img: Image.Image, fmt: str, orientation: int) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = orientation
  return _encode(img, fmt, exif=exif)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_displayed_pixels(orientation, fmt):
  stored = _Samples(seed=orientation, blocky=fmt == "JPEG").ints(0, 256, (3,)).astype(np.uint8)
  out = transforms.decode_image(_with_orientation(Image.fromarray(stored), fmt, orientation), SIDE)
  error = np.abs(out.astype(int) - _displayed(stored, orientation).astype(int))
  assert error.max() <= LOSSY_TOLERANCE.get(fmt, 0), error.max()


def test_exif_orientation_6_on_wide_jpeg_turns_it_upright():
  stored = np.zeros((16, 32, 3), np.uint8)  # 32 wide, 16 tall: left half red, right half blue
  stored[:, :16] = (255, 0, 0)
  stored[:, 16:] = (0, 0, 255)
  out = transforms.decode_image(_with_orientation(Image.fromarray(stored), "JPEG", 6), 16)
  # Displayed 16 wide, 32 tall (rotated clockwise): red on top, blue below; resized to 16 x 16,
  # Lanczos mixes only the rows near the middle (5..10).
  assert np.abs(out[:5].astype(int) - (255, 0, 0)).max() <= 6
  assert np.abs(out[11:].astype(int) - (0, 0, 255)).max() <= 6


def test_exif_orientation_applies_before_16bit_scaling():
  v = _Samples(seed=6, blocky=False).ints(0, 65536)
  data = _with_orientation(Image.fromarray(v.astype(np.uint16)), "PNG", 8)
  out = transforms.decode_image(data, SIDE)
  np.testing.assert_array_equal(out, _displayed(_grey(_round(v / 257)), 8))
