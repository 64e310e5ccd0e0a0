"""Preprocessing from the config: a source's uint8 images -> the model's float input.

`config.data.preprocess` (a ConfigDict; missing = every field's default, which is the plain
mapping 0 -> -1, 255 -> 1 and no crop or flip) has the fields of `PreprocessFields`:

    config.data.preprocess = ml_collections.ConfigDict(dict(
        crop_scale=(0.9, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True, normalize="clip"))

Random resized crop. Sources deliver images at `config.data.image_size` = S, and the crop is
taken from that image, then resized back to S: a crop of area fraction a is upsampled by
1 / sqrt(a) (about 1.05x for a = 0.9), so it never adds detail the source image did not have. The
box of a row comes from four uniform numbers (u_area, u_ratio, u_x, u_y):

    area fraction a = lo + u_area * (hi - lo)                      (crop_scale = (lo, hi))
    aspect ratio  r = exp(log r0 + u_ratio * (log r1 - log r0)),   log-uniform, where
                  [r0, r1] = crop_ratio intersected with [a, 1 / a] (the ratios for which a box
                  of area a * S^2 fits in the square; it holds 1 because crop_ratio must)
    width w = S * sqrt(a * r), height h = S * sqrt(a / r)          (w / h = r, w * h = a * S^2)
    left x0 = u_x * (S - w), top y0 = u_y * (S - h)

The box has real-valued corners (no rounding, so its area and ratio are exactly a and r); Pillow
resamples it to S x S with its bilinear filter (`Image.resize(..., box=...)`), which suits the
mild upsampling (Lanczos would overshoot at edges). Output pixel centres map to points inside the
box, and the interpolation there may weigh in the pixel just beyond the box's edge, as sampling
the continuous image would. Every row always gets a box: no retries, so
each row uses a fixed set of random numbers and the stream stays a function of its position.

Flip: a row is mirrored left-right when its uniform number is < 1/2.

Normalisation (`normalize`), the same for training batches, their extra views and evaluation
sets (`to_model_input` for uint8 pixels, `from_minus_one_one` for an `EvalSet`'s float images):
  "minus_one_one": p / 127.5 - 1 (0 -> -1, 255 -> 1 exactly; `transforms.to_float`);
  "clip": (p / 255 - mean) / std per channel, with OpenAI CLIP's mean and std (`CLIP_MEAN`,
    `CLIP_STD`).

The random numbers are the pipeline's (`clip_jax.data.pipeline`): it draws them per training row
from (config.seed, epoch, row), so the crops and flips are deterministic and the same for any
number of processes. A row's extra views get the same box and flip as its image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from clip_jax import schema
from clip_jax.data import transforms
from clip_jax.registry import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's per-channel mean of [0, 1] RGB
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # and standard deviation
NORMALIZATIONS = ("minus_one_one", "clip")
PATH = "config.data.preprocess"
CROP_DRAWS = 4  # uniform numbers per row that place a crop box: area, ratio, x, y


def _range(low: float, high: float | None, *, contains: float | None = None,
           what: str) -> schema.Check:
  """A (min, max) pair of numbers with low < min <= max (<= high), returned as a float tuple;
  it must contain `contains` if given."""
  def check(value: Any, path: str) -> tuple[float, float]:
    try:
      lo, hi = (float(v) for v in value)
      ok = (all(isinstance(v, (int, float, np.integer, np.floating))
                and not isinstance(v, (bool, np.bool_)) for v in value)
            and np.isfinite([lo, hi]).all() and low < lo <= hi
            and (high is None or hi <= high)
            and (contains is None or lo <= contains <= hi))
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f"{path} must be {what}; got {value!r}")
    return lo, hi
  return check


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessFields:
  """The fields of `config.data.preprocess` (module docstring for the exact rules).

  Attributes:
    crop_scale: None (no random resized crop) or (min, max), the crop's area as a fraction of the
      image, 0 < min <= max <= 1 (e.g. (0.9, 1.0)).
    crop_ratio: (min, max) range of the crop's width / height, sampled log-uniformly;
      0 < min <= 1 <= max. Only used with crop_scale.
    flip: mirror each training row left-right with probability 1/2.
    normalize: "minus_one_one" (p / 127.5 - 1) or "clip" (OpenAI CLIP's mean and std on [0, 1]).
  """

  crop_scale: Any = schema.field(None, _range(
      0.0, 1.0, what="None or a (min, max) area fraction with 0 < min <= max <= 1, e.g. (0.9, 1.0)"))
  crop_ratio: Any = schema.field((3 / 4, 4 / 3), _range(
      0.0, None, contains=1.0,
      what="a (min, max) width / height range with 0 < min <= 1 <= max, e.g. (3 / 4, 4 / 3)"))
  flip: bool = False
  normalize: str = schema.field("minus_one_one", schema.one_of(*NORMALIZATIONS))


def parse(value: Any, path: str = PATH) -> PreprocessFields:
  """`config.data.preprocess` (a ConfigDict, a mapping, None for all defaults, or an already
  parsed `PreprocessFields`) as `PreprocessFields`; raises ConfigError naming `<path>.<field>`."""
  if isinstance(value, PreprocessFields):
    return value
  return schema.parse(PreprocessFields, {} if value is None else value, path)


def crop_boxes(draws: np.ndarray, size: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> np.ndarray:
  """The crop box of each row from its uniform numbers (module docstring).

  Args:
    draws: float64 [n, 4] in [0, 1): (area, ratio, x, y) numbers of each row.
    size: S, the image side in pixels.
    scale, ratio: `crop_scale` and `crop_ratio`.

  Returns:
    float64 [n, 4] boxes (x0, y0, x1, y1) in pixels, 0 <= x0 < x1 <= S, 0 <= y0 < y1 <= S.
  """
  draws = np.asarray(draws, np.float64)
  area = scale[0] + draws[:, 0] * (scale[1] - scale[0])
  log_lo = np.log(np.maximum(ratio[0], area))
  log_hi = np.log(np.minimum(ratio[1], 1.0 / area))
  r = np.exp(log_lo + draws[:, 1] * (log_hi - log_lo))
  w = np.minimum(size * np.sqrt(area * r), size)  # min: rounding at r = 1 / area
  h = np.minimum(size * np.sqrt(area / r), size)
  x0 = draws[:, 2] * (size - w)
  y0 = draws[:, 3] * (size - h)
  return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def resized_crop(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Each image's box resampled to the full image size (Pillow's bilinear filter).

  Args:
    images: uint8 [n, S, S, 3].
    boxes: float [n, 4] (x0, y0, x1, y1) inside the image (`crop_boxes`).

  Returns:
    uint8 [n, S, S, 3].
  """
  images = np.asarray(images)
  n, h, w, _ = images.shape
  out = np.empty_like(images)
  for i in range(n):
    box = tuple(float(v) for v in boxes[i])
    out[i] = np.asarray(Image.fromarray(images[i]).resize((w, h), Image.Resampling.BILINEAR,
                                                           box=box))
  return out


def flip(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """uint8 [n, H, W, C]: the rows where bool `mask` [n] is set mirrored left-right."""
  out = np.array(images, copy=True)
  out[mask] = out[mask][:, :, ::-1]
  return out


def to_model_input(images: np.ndarray, normalize: str) -> np.ndarray:
  """uint8 [..., 3] pixels -> the model's float32 [..., 3] input under `normalize`."""
  if normalize == "minus_one_one":
    return transforms.to_float(images)
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"to_model_input expects uint8 images, got {images.dtype}")
  return _clip_normalize(images.astype(np.float32) / np.float32(255.0))


def from_minus_one_one(images: np.ndarray, normalize: str) -> np.ndarray:
  """float32 [..., 3] in [-1, 1] (an `EvalSet`'s images) -> the model's input under `normalize`:
  the same values as `to_model_input` of the pixels they came from (to float32 rounding)."""
  images = np.asarray(images, np.float32)
  if normalize == "minus_one_one":
    return images
  return _clip_normalize((images + np.float32(1.0)) * np.float32(0.5))


def _clip_normalize(unit: np.ndarray) -> np.ndarray:
  mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
  return (unit - mean) / std
