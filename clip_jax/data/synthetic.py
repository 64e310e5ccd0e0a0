"""A synthetic source for fast offline tests ("synthetic"): coloured shapes on white.

Each example is one filled shape (circle, square or triangle) of one colour and one of two sizes
at a random position on a white background, captioned e.g. "a small red circle". The attributes
come from a fixed seed (independent of `config.seed`); images are drawn on demand, 4x supersampled
and box-filtered, so only the requested examples are ever rendered.

Extra views (for multi-view training, `config.data.extra_views`; see `clip_jax.data.pipeline`):
"sketch" draws the same shape at the same place as its black outline (no colour), "gray" fills it
with the grey of its colour's luma. Evaluation splits have no extra views.

Evaluation splits: "heldout" (`num_eval_examples` further examples from another fixed seed) and
"train" (the training examples), each with one text per image and labels "shape", "color" and
"size".

Config fields: `SyntheticFields` (config.data.num_examples, default 512, num_eval_examples,
default 128, and `SourceFields`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clip_jax import schema
from clip_jax.data import registry as data_registry
from clip_jax.data import transforms
from clip_jax.data.registry import SOURCES, DataSource, EvalSet, SourceFields

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
_RADIUS = {"small": (0.14, 0.2), "large": (0.28, 0.38)}  # half-extent range, in image widths
_SUPERSAMPLE = 4
_OUTLINE_WIDTH = 0.06  # of the sketch view, in image widths (at least one pixel)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of the "gray" view
VIEWS = ("sketch", "gray")  # extra views of the training shapes (config.data.extra_views)
_TRAIN_SEED = 20240611
_EVAL_SEED = 20240612
DEFAULT_NUM_EXAMPLES = 512
DEFAULT_NUM_EVAL_EXAMPLES = 128


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
  """bool [n, h, w]: the cells of `mask` whose 4-neighbours up to `width` cells away are in it."""
  out = mask.copy()
  for k in range(1, width + 1):
    out[:, k:, :] &= mask[:, :-k, :]
    out[:, :-k, :] &= mask[:, k:, :]
    out[:, :, k:] &= mask[:, :, :-k]
    out[:, :, :-k] &= mask[:, :, k:]
  return out


class Shapes:
  """Attributes of n shapes: int [n] `color`, `shape`, `size` indices; float [n] `cx`, `cy`, `r`."""

  def __init__(self, n: int, seed: int):
    rng = np.random.default_rng(seed)
    self.color = rng.integers(len(COLORS), size=n)
    self.shape = rng.integers(len(SHAPES), size=n)
    self.size = rng.integers(len(SIZES), size=n)
    low = np.array([_RADIUS[s][0] for s in SIZES])[self.size]
    high = np.array([_RADIUS[s][1] for s in SIZES])[self.size]
    self.r = low + (high - low) * rng.random(n)
    self.cx = self.r + (1 - 2 * self.r) * rng.random(n)
    self.cy = self.r + (1 - 2 * self.r) * rng.random(n)

  def __len__(self) -> int:
    return len(self.color)

  def caption(self, i: int) -> str:
    return (f"a {SIZES[self.size[i]]} {list(COLORS)[self.color[i]]} "
            f"{SHAPES[self.shape[i]]}")

  def render(self, index: np.ndarray, image_size: int, chunk: int = 64,
             style: str = "fill") -> np.ndarray:
    """uint8 [len(index), image_size, image_size, 3] images of the shapes at `index`.

    `style` is "fill" (the training and evaluation images) or one of the extra views in
    `VIEWS`: "sketch" (the shape's outline in black) or "gray" (the filled shape in the grey
    of its colour's luma).
    """
    index = np.asarray(index, dtype=np.int64)
    if len(index) > chunk:
      return np.concatenate([self.render(index[i:i + chunk], image_size, chunk, style)
                             for i in range(0, len(index), chunk)])
    fine = image_size * _SUPERSAMPLE
    mask = self._mask(index, fine)  # [n, fine, fine]
    if style == "sketch":
      mask = mask & ~_erode(mask, max(_SUPERSAMPLE, round(_OUTLINE_WIDTH * fine)))
    coverage = mask.reshape(len(index), image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE)
    coverage = coverage.mean(axis=(2, 4))[..., None]  # [n, S, S, 1] fraction inside the shape
    color = np.array(list(COLORS.values()), np.float64)[self.color[index]][:, None, None, :]
    if style == "sketch":
      color = np.zeros_like(color)
    elif style == "gray":
      color = np.repeat(color @ _LUMA[:, None], 3, axis=-1)
    elif style != "fill":
      raise ValueError(f"unknown style {style!r}; choose 'fill' or one of {VIEWS}")
    return np.round(255.0 + coverage * (color - 255.0)).astype(np.uint8)

  def _mask(self, index: np.ndarray, fine: int) -> np.ndarray:
    """bool [n, fine, fine]: which cells of a fine x fine grid lie inside each shape."""
    grid = (np.arange(fine) + 0.5) / fine
    y, x = grid[None, :, None], grid[None, None, :]
    cx, cy, r = (v[index][:, None, None] for v in (self.cx, self.cy, self.r))
    shape = self.shape[index][:, None, None]
    circle = (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2
    half = 0.85 * r  # a square of about the circle's area
    square = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    triangle = (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)  # apex up, base width 2r
    return np.select([shape == 0, shape == 1], [circle, square], triangle)

  def labels(self) -> dict[str, tuple[np.ndarray, list[str]]]:
    return {"shape": (self.shape.astype(np.int32), list(SHAPES)),
            "color": (self.color.astype(np.int32), list(COLORS)),
            "size": (self.size.astype(np.int32), list(SIZES))}


class SyntheticSource(DataSource):
  """See the module docstring."""
  name = "synthetic"

  def __init__(self, image_size: int, num_examples: int = DEFAULT_NUM_EXAMPLES,
               num_eval_examples: int = DEFAULT_NUM_EVAL_EXAMPLES):
    self.image_size = image_size
    self.train = Shapes(num_examples, _TRAIN_SEED)
    self.heldout = Shapes(num_eval_examples, _EVAL_SEED)
    self.captions = [self.train.caption(i) for i in range(num_examples)]

  @property
  def num_train(self) -> int:
    return len(self.train)

  def train_captions(self) -> list[str]:
    return list(self.captions)

  def train_examples(self, units: np.ndarray,
                     draws: np.ndarray) -> tuple[np.ndarray, list[str]]:
    del draws  # one image and one caption per unit
    units = np.asarray(units, dtype=np.int64)
    return self.train.render(units, self.image_size), [self.captions[u] for u in units.tolist()]

  @property
  def view_names(self) -> tuple[str, ...]:
    return VIEWS

  def train_view(self, view: str, units: np.ndarray, draws: np.ndarray) -> np.ndarray:
    del draws  # one image per unit
    if view not in VIEWS:
      raise ValueError(f"unknown view {view!r} of data source 'synthetic'; choose one of {VIEWS}")
    return self.train.render(np.asarray(units, dtype=np.int64), self.image_size, style=view)

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("heldout", "train")

  def eval_split(self, split: str) -> EvalSet:
    if split not in self.eval_splits:
      raise self.unknown_split(split)
    shapes = self.heldout if split == "heldout" else self.train
    n = len(shapes)
    return EvalSet(
        images=transforms.to_float(shapes.render(np.arange(n), self.image_size)),
        texts=[shapes.caption(i) for i in range(n)],
        text_image=np.arange(n, dtype=np.int32),
        labels=shapes.labels())


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticFields(SourceFields):
  """`config.data` of the synthetic source: `SourceFields` and num_examples (training shapes)
  and num_eval_examples (held-out shapes), each in [1, 2**24]."""

  num_examples: int = schema.field(DEFAULT_NUM_EXAMPLES, schema.integer(1, 1 << 24))
  num_eval_examples: int = schema.field(DEFAULT_NUM_EVAL_EXAMPLES, schema.integer(1, 1 << 24))


@SOURCES.register("synthetic", fields=SyntheticFields)
def build(data_config: Any) -> SyntheticSource:
  """The synthetic source (fields: `SyntheticFields`)."""
  f: SyntheticFields = data_registry.parse_source(data_config, "synthetic")
  return SyntheticSource(f.image_size, f.num_examples, f.num_eval_examples)
