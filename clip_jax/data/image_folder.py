"""A folder of class subfolders ("image_folder"), local or on gs://: ImageNet's layout.

    <path>/<class>/<image>.jpg       e.g. train/n01440764/n01440764_10026.JPEG

Classes are the subfolder names in sorted order (label c = the c-th name), so ImageNet's WordNet
ids give the standard class indices; images are the files with an image extension
(`IMAGE_EXTENSIONS`, any case) directly inside a class folder, sorted. Training unit i is the
i-th image (by class, then name); its captions are the class name ("_" read as a space) in each of
`caption_templates` (training draws one). Images are decoded with the centre crop at
`config.data.image_size`; unreadable ones are skipped, counted and replaced
(`clip_jax.data.files`).

Held-out split "heldout" (`eval_path`, a folder of the same layout): at most `num_eval` images,
those whose relative paths have the smallest SHA-1 digests (a cut spread over the classes that
does not depend on listing order), each with the label set "class" (the held-out folder's own
sorted subfolder names) and one text, its class name in the first template. The training folder
is not read for it. For zero-shot classification with other names (ImageNet's WordNet ids to words), give
the evaluator `classnames="imagenet1k"` (`clip_jax.evals.zeroshot`).

`path` may be "" when only evaluating (`python -m clip_jax.evaluate` of a converted checkpoint):
then there are no training units, and only the held-out split is read.

Config fields: `ImageFolderFields`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np

from clip_jax import fs, schema
from clip_jax.data import transforms
from clip_jax.data.files import (FileFields, FileSource, Sample, Skips, caption_templates,
                                 read_image)
from clip_jax.data.registry import SOURCES, EvalSet, parse_source
from clip_jax.log import get_logger
from clip_jax.registry import ConfigError

log = get_logger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LABEL = "class"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageFolderFields(FileFields):
  """`config.data` of "image_folder": `FileFields` and

  Attributes:
    path: the training folder ("" = none: evaluation only).
    eval_path: the held-out folder ("" = no held-out split).
    caption_templates: format strings with one "{}" for the class name.
  """

  path: str = ""
  eval_path: str = ""
  caption_templates: Any = schema.field(("a photo of a {}.",), caption_templates)



def list_folder(root: str, field: str) -> tuple[list[str], list[tuple[str, int]]]:
  """(sorted class names, [(image path, label)] by class then name) of a class-folder tree.

  Raises:
    ConfigError: naming `field`: `root` is not a folder, or holds no class folder with an image.
  """
  if not fs.isdir(root):
    raise ConfigError(f"{field} = {root!r}: no such folder; point it at a folder of class "
                      "subfolders (<class>/<image>.jpg)")
  classes = sorted(d for d in fs.listdir(root) if fs.isdir(fs.join(root, d)))
  images = []
  for label, name in enumerate(classes):
    folder = fs.join(root, name)
    images += [(fs.join(folder, f), label) for f in sorted(fs.listdir(folder))
               if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
  if not images:
    raise ConfigError(f"{field} = {root!r} holds no class subfolder with images "
                      f"({', '.join(IMAGE_EXTENSIONS)})")
  return classes, images


class ImageFolderSource(FileSource):
  """See the module docstring."""
  name = "image_folder"

  def __init__(self, fields: ImageFolderFields):
    self.fields = fields
    super().__init__(self._train_samples, image_size=fields.image_size,
                     max_skip_fraction=fields.max_skip_fraction, field="config.data.path",
                     eval_index=None, num_eval=fields.num_eval, required=bool(fields.path))

  def _train_samples(self) -> tuple[list[Sample], Skips]:
    """The training index: every image of every class folder of `path`, captioned."""
    if not self.fields.path:
      return [], Skips()
    classes, images = list_folder(self.fields.path, "config.data.path")
    names = [c.replace("_", " ") for c in classes]
    templates = tuple(self.fields.caption_templates)
    return [Sample(path, 0, -1, tuple(t.format(names[label]) for t in templates), path)
            for path, label in images], Skips()

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("heldout",) if self.fields.eval_path else ()

  def eval_split(self, split: str) -> EvalSet:
    if split not in self.eval_splits:
      raise self.unknown_split(split)
    f = self.fields
    classes, images = list_folder(f.eval_path, "config.data.eval_path")
    digest = {path: hashlib.sha1(os.path.relpath(path, f.eval_path).encode()).hexdigest()
              for path, _ in images}
    kept = set(sorted(digest.values())[:f.num_eval])
    names = [c.replace("_", " ") for c in classes]
    pixels, labels = [], []
    for path, label in images:
      if digest[path] not in kept:
        continue
      image, reason = read_image(Sample(path, 0, -1, (), path), self.image_size)
      if image is None:
        log.warning("Leaving %s out of the held-out split (%s).", path, reason)
        continue
      pixels.append(image)
      labels.append(label)
    if not pixels:
      raise ConfigError(f"config.data.eval_path = {f.eval_path!r} holds no readable image")
    first = tuple(f.caption_templates)[0]
    return EvalSet(images=transforms.to_float(np.stack(pixels)),
                   texts=[first.format(names[label]) for label in labels],
                   text_image=np.arange(len(pixels), dtype=np.int32),
                   labels={LABEL: (np.array(labels, np.int32), names)})


@SOURCES.register("image_folder", fields=ImageFolderFields)
def _build(data_config: Any) -> ImageFolderSource:
  fields: ImageFolderFields = parse_source(data_config, "image_folder")
  if not fields.path and not fields.eval_path:
    raise ConfigError("config.data.path and config.data.eval_path are both empty for data "
                      "source 'image_folder': set path to a folder of class subfolders to train "
                      "on, and/or eval_path to evaluate on")
  return ImageFolderSource(fields)
