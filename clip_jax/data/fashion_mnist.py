"""Fashion-MNIST ("fashion_mnist"): Zalando's 28x28 clothing photos from Debian's package.

The data are read from the local files of the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`), in `config.data.path` (default
/usr/share/datasets/fashion-mnist): train-{images-idx3,labels-idx1}-ubyte.gz (60,000 images) and
t10k-{images-idx3,labels-idx1}-ubyte.gz (10,000 images), gzipped IDX files (big-endian header:
magic 0x803 for uint8 images [N, 28, 28], 0x801 for uint8 labels [N] in [0, 10)). Nothing is
downloaded. The grey images (a light garment on black, kept as they are) are resized once with
Pillow's Lanczos filter to `config.data.image_size`, repeated to RGB and cached as uint8 .npy
files in the cache directory (see `clip_jax.data.cache`), keyed by the SHA-1 of the package's
image file; later runs memory-map them.

Units and captions. Training unit i is train image i, for i < `config.data.num_train` (default:
all 60,000), less the images of `config.data.heldout_classes` (default none): with
`heldout_classes=("Sandal", "Shirt", "Bag")` the first num_train images of the other 7 classes
are trained on, and those three classes are only seen in evaluation (zero-shot classification of
unseen classes, as in the LiT demo `configs/demo/lit_fashion_mnist.py`). Fashion-MNIST has no text but the class, so a unit's captions are its lowercased
class name in each of `CAPTION_TEMPLATES` ("{}", "a photo of the {}.", "a picture of the {}."):
the bare name, and two framings so that the text tower sees more than one phrasing of the same
content ("the" rather than "a" so that "ankle boot" needs no "an"). Training draws one of them per
example. The tokenizer is fitted on the distinct captions of the trained classes (30 without
held-out classes), each once (the 10 classes are balanced, 6,000 training images each, so
repeating them per unit would change nothing but the fitting time).

Evaluation split: "heldout", the 10,000 test images (never trained on), each with one text, its
bare lowercased class name, and the label "class" (indices into `CLASSES`); with held-out
classes also the label "heldout_class", indices into `config.data.heldout_classes` for the test
images of those classes and -1 (skipped by classification) for the others. The zero-shot
classifier builds its own prompts from the class names (`configs/demo/fashion_mnist.py` uses
`CAPTION_TEMPLATES`). There is no "train" split: the evaluators need only one split.

Config fields: `FashionMnistFields` (config.data.path, num_train, heldout_classes, and
`SourceFields`).
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_jax import schema
from clip_jax.data import cache
from clip_jax.data import registry as data_registry
from clip_jax.data import transforms
from clip_jax.data.registry import SOURCES, DataSource, EvalSet, SourceFields
from clip_jax.registry import ConfigError

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                            "Shirt", "Sneaker", "Bag", "Ankle boot")
CAPTION_TEMPLATES: tuple[str, ...] = ("{}", "a photo of the {}.", "a picture of the {}.")
# IDX file stem of each part: (stem, number of images in the package).
PARTS: dict[str, tuple[str, int]] = {"train": ("train", 60000), "heldout": ("t10k", 10000)}
SIDE = 28
_IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions
_LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension
_DECODE_FORMAT = 1  # bump when decoding changes, to invalidate the decoded-image caches


def idx_files(path: Path, stem: str) -> tuple[Path, Path]:
  """The (images, labels) IDX files of part `stem` ("train" or "t10k") in `path`.

  Raises:
    ConfigError: a file is missing; the message names config.data.path and the Debian package.
  """
  files = (path / f"{stem}-images-idx3-ubyte.gz", path / f"{stem}-labels-idx1-ubyte.gz")
  for f in files:
    if not f.is_file():
      raise ConfigError(
          f"config.data.path = {str(path)!r}: {f.name} is not there. Install the data with "
          f"`apt-get install {PACKAGE}` (it puts the files in {DEFAULT_PATH}), or point "
          "config.data.path at a folder holding the four Fashion-MNIST *-ubyte.gz files.")
  return files


def read_idx(file: Path, magic: int, count: int | None = None) -> np.ndarray:
  """The first `count` (default: all) items of a gzipped uint8 IDX file.

  Returns:
    uint8 [count, *item_shape], e.g. [n, 28, 28] for images, [n] for labels.

  Raises:
    cache.DataDownloadError: the header's magic number or sizes do not match the file.
  """
  with gzip.open(file, "rb") as f:
    raw = f.read()
  dims = magic & 0xFF
  header = np.frombuffer(raw, ">u4", count=1 + dims) if len(raw) >= 4 * (1 + dims) else None
  if header is None or int(header[0]) != magic:
    raise cache.DataDownloadError(
        f"{file} is not a uint8 IDX file with {dims} dimension(s) (magic {magic:#010x}); the "
        f"copy is damaged: reinstall it (`apt-get install --reinstall {PACKAGE}`)")
  shape = tuple(int(d) for d in header[1:])
  data = np.frombuffer(raw, np.uint8, offset=4 * (1 + dims))
  if data.size != int(np.prod(shape)):
    raise cache.DataDownloadError(
        f"{file} declares shape {shape} but holds {data.size} bytes of data; the copy is damaged: "
        f"reinstall it (`apt-get install --reinstall {PACKAGE}`)")
  data = data.reshape(shape)
  return data if count is None else data[:count]


def resize(images: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [n, 28, 28] grey -> uint8 [n, image_size, image_size, 3] RGB (Pillow, Lanczos)."""
  if image_size != images.shape[1]:
    images = np.stack([
        np.asarray(Image.fromarray(img, "L").resize((image_size, image_size),
                                                    Image.Resampling.LANCZOS)) for img in images])
  return np.repeat(images[..., None], 3, axis=-1)


def decoded_images(file: Path, count: int, image_size: int, cache_dir: Path) -> np.ndarray:
  """The first `count` images of IDX file `file` at `image_size`, cached in
  <cache_dir>/fashion-mnist/<stem>-<sha1 of file, 12 hex>-n<count>-<size>px-v<format>.npy.

  Returns:
    uint8 [count, image_size, image_size, 3], memory-mapped read-only.
  """
  stem = file.name.split("-")[0]
  path = (Path(cache_dir) / "fashion-mnist" /
          f"{stem}-{cache.file_sha1(file)[:12]}-n{count}-{image_size}px-v{_DECODE_FORMAT}.npy")

  def write(tmp: Path) -> None:
    grey = read_idx(file, _IMAGES_MAGIC, count)
    if grey.shape != (count, SIDE, SIDE):
      raise cache.DataDownloadError(
          f"{file} holds images of shape {grey.shape[1:]} (first {count}: {grey.shape[0]}); "
          f"expected {count} of {SIDE}x{SIDE}")
    with open(tmp, "wb") as f:
      np.save(f, resize(grey, image_size))

  return cache.cached_images(path, (count, image_size, image_size, 3), write)


class FashionMnistSource(DataSource):
  """See the module docstring.

  Attributes:
    images: uint8 [n, image_size, image_size, 3] the first n = `config.data.num_train` training
      images (memory-mapped), held-out classes included.
    labels: uint8 [n] their classes, indices into `CLASSES`.
    heldout_classes: the class names left out of training.
    train_index: int64 [num_train] the indices into `images` of the training units (the images
      of the other classes).
  """
  name = "fashion_mnist"

  def __init__(self, path: str, image_size: int, cache_dir: Path, num_train: int = 60000,
               heldout_classes: tuple[str, ...] = ()):
    self.path = Path(path)
    self.image_size = image_size
    self.cache_dir = Path(cache_dir)
    if not self.path.is_dir():
      raise ConfigError(
          f"config.data.path = {path!r} is not a directory. Install Fashion-MNIST with "
          f"`apt-get install {PACKAGE}` (it puts the files in {DEFAULT_PATH}), or point "
          "config.data.path at a folder holding the four Fashion-MNIST *-ubyte.gz files.")
    for stem, _ in PARTS.values():
      idx_files(self.path, stem)  # all four files, before any decoding
    self.images, self.labels = self._part("train", num_train)
    self.heldout_classes = tuple(heldout_classes)
    self.heldout_ids = np.asarray([CLASSES.index(c) for c in self.heldout_classes], np.int64)
    self.train_index = np.flatnonzero(~np.isin(self.labels, self.heldout_ids))
    if not len(self.train_index):
      raise ConfigError(
          f"config.data.num_train = {num_train}: the first {num_train} training images are all of "
          f"config.data.heldout_classes = {self.heldout_classes}; train on more images")
    self.captions = [[t.format(c.lower()) for t in CAPTION_TEMPLATES] for c in CLASSES]

  def _part(self, part: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    stem, _ = PARTS[part]
    image_file, label_file = idx_files(self.path, stem)
    labels = read_idx(label_file, _LABELS_MAGIC, count)
    if labels.shape != (count,) or labels.max(initial=0) >= len(CLASSES):
      raise cache.DataDownloadError(
          f"{label_file} holds {labels.shape[0]} labels up to {labels.max(initial=0)} for the "
          f"first {count}; expected {count} in [0, {len(CLASSES)})")
    return decoded_images(image_file, count, self.image_size, self.cache_dir), labels

  @property
  def num_train(self) -> int:
    return len(self.train_index)

  def train_captions(self) -> list[str]:
    return [c for k, caps in enumerate(self.captions) if k not in self.heldout_ids for c in caps]

  def train_examples(self, units: np.ndarray,
                     draws: np.ndarray) -> tuple[np.ndarray, list[str]]:
    units = self.train_index[np.asarray(units, dtype=np.int64)]
    picks = data_registry.draw_index(np.asarray(draws)[:, 1], len(CAPTION_TEMPLATES))
    captions = [self.captions[self.labels[u]][t] for u, t in zip(units.tolist(), picks.tolist(),
                                                                  strict=True)]
    return np.asarray(self.images[units]), captions

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("heldout",)

  def eval_split(self, split: str) -> EvalSet:
    if split not in self.eval_splits:
      raise self.unknown_split(split)
    images, labels = self._part(split, PARTS[split][1])
    label_sets = {"class": (labels.astype(np.int32), list(CLASSES))}
    if self.heldout_classes:
      heldout = np.full(len(labels), -1, np.int32)
      for i, k in enumerate(self.heldout_ids.tolist()):
        heldout[labels == k] = i
      label_sets["heldout_class"] = (heldout, list(self.heldout_classes))
    return EvalSet(
        images=transforms.to_float(np.asarray(images)),
        texts=[self.captions[k][0] for k in labels.tolist()],
        text_image=np.arange(len(labels), dtype=np.int32),
        labels=label_sets)


def _class_names(value: Any, path: str) -> tuple[str, ...]:
  """Distinct names of `CLASSES`, fewer than all of them, as a tuple."""
  try:
    names = (value,) if isinstance(value, str) else tuple(value)
  except TypeError:
    names = (None,)
  if (any(n not in CLASSES for n in names) or len(set(names)) != len(names)
      or len(names) >= len(CLASSES)):
    raise ConfigError(f"{path} = {value!r} must be distinct Fashion-MNIST class names, fewer than "
                      f"all {len(CLASSES)}, from: {', '.join(map(repr, CLASSES))}")
  return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class FashionMnistFields(SourceFields):
  """`config.data` of the Fashion-MNIST source: `SourceFields` and

  Attributes:
    path: the folder of the four IDX files (Debian's `dataset-fashion-mnist` puts them in
      /usr/share/datasets/fashion-mnist).
    num_train: how many of the 60,000 training images (the first ones) to read, in
      [1, 60000]; fewer make tests fast.
    heldout_classes: names of `CLASSES` whose images are left out of training (at most 9,
      distinct), e.g. ("Sandal", "Shirt", "Bag"); the eval split then has the label
      "heldout_class" over them. Default: none.
  """

  path: str = schema.field(DEFAULT_PATH, schema.string(nonempty=True))
  num_train: int = schema.field(PARTS["train"][1], schema.integer(1, PARTS["train"][1]))
  heldout_classes: tuple[str, ...] = schema.field((), _class_names)


@SOURCES.register("fashion_mnist", fields=FashionMnistFields)
def build(data_config: Any) -> FashionMnistSource:
  """The Fashion-MNIST source for `config.data` (fields: `FashionMnistFields`)."""
  f: FashionMnistFields = data_registry.parse_source(data_config, "fashion_mnist")
  return FashionMnistSource(f.path, f.image_size, cache.resolve_cache_dir(data_config),
                            f.num_train, f.heldout_classes)
