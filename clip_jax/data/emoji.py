"""The emoji demo data ("emoji"): emoji images from npm's emoji-datasource-<style> packages.

`config.data.style` picks the art: "google" (emoji-datasource-google, the default) or "twitter"
(emoji-datasource-twitter, Twemoji), both at the pinned release 16.0.0, whose emoji.json files
are identical (the same emoji, names and code points; each emoji has an image in both styles).

On first use the style's pinned package tarball is fetched with `npm pack` into the cache
directory (see `clip_jax.data.cache`), its SHA-1 is checked, emoji.json and the 64 px PNGs are
extracted into <cache>/emoji-datasource-<style>-16.0.0/, and every image is decoded once at
`config.data.image_size` into a uint8 .npy file there. Later runs memory-map that file and start
in well under a second. Each style has its own tarball, directory and decoded-image files.

Units and captions. A unit is one emoji entry with an image in the style (`has_img_<style>`).
Its captions are its name, lowercased (or its first short name where the name is empty), then its
short names with "_" and "-" read as spaces. Its images are the base image and its skin-tone
variations. Training draws one image and one caption of a unit per example.

The split is fixed (independent of `config.seed` and of the style): the base emoji outside the
"Component" category (the 5 skin-tone swatches, which stay in training) are ranked by a SHA-256
hash of their "unified" code point string, and the first ceil(heldout_fraction * count) are held
out. Raising the fraction only adds emoji to the held-out split. Held-out emoji, their skin
variations and every caption of a held-out emoji are kept out of training (a training emoji loses
a caption that equals a held-out caption, e.g. the short name "cat" of "cat face" when "cat" is
held out, and an image that is byte-identical to a held-out emoji's image), so the tokenizer
never sees them either. As every emoji has an image in both styles, the two hold out the same
emoji with the same texts. Their training units differ where the art does: Twemoji draws 21
family emoji kept for training with the same picture as a held-out family emoji, so the twitter
style drops them (1,602 training units against google's 1,623), and its BPE tokenizer, fitted on
fewer captions, differs from google's. A model trained on one style therefore cannot be evaluated
on the other's held-out split with `clip_jax.evaluate --config <other style>` (it would tokenise
with the other style's tokenizer).

Evaluation splits: "heldout" (each held-out emoji's base image and its name) and "train" (the same
for the training emoji), with labels "category" (e.g. "Smileys & Emotion") and "subcategory".

Config fields: `EmojiFields` (config.data.style, default "google"; config.data.heldout_fraction,
default 0.15; and `SourceFields`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax import schema
from clip_jax.data import cache
from clip_jax.data import registry as data_registry
from clip_jax.data import transforms
from clip_jax.data.registry import SOURCES, DataSource, EvalSet, SourceFields

VERSION = "16.0.0"
COMPONENT = "Component"  # skin-tone swatches, not emoji of their own; never held out
DEFAULT_HELDOUT_FRACTION = 0.15
_SPLIT_SALT = "clip_jax/emoji-split/v1:"
_DECODE_FORMAT = 1  # bump when decoding changes, to invalidate the decoded-image caches


@dataclasses.dataclass(frozen=True)
class Style:
  """One art style: the npm package emoji-datasource-<name>@VERSION.

  Attributes:
    name: the `config.data.style` value, e.g. "google".
    tarball_sha1: npm's `shasum` of the package's VERSION tarball.
  """
  name: str
  tarball_sha1: str

  @property
  def package(self) -> str:
    return f"emoji-datasource-{self.name}"

  @property
  def image_dir(self) -> str:
    """The 64 px PNGs, relative to the package root."""
    return f"img/{self.name}/64"

  @property
  def has_image(self) -> str:
    """The emoji.json key that says an entry (or skin variation) has an image in this style."""
    return f"has_img_{self.name}"


STYLES = {s.name: s for s in (Style("google", "a80ac3e8106cbd4d8648ce758aa099e8827b6157"),
                              Style("twitter", "e2bd39a8acb77e158106f8249dd7b4cd93fa1b14"))}
DEFAULT_STYLE = "google"


@dataclasses.dataclass(frozen=True)
class Emoji:
  """One emoji entry that has an image in the chosen style.

  Attributes:
    unified: code points, e.g. "1F600".
    captions: the lowercased name first (the evaluation text), then the short names.
    category, subcategory: from emoji.json.
    images: image file names, the base image first, then skin-tone variations.
    sort_order: emoji.json's display order.
  """
  unified: str
  captions: tuple[str, ...]
  category: str
  subcategory: str
  images: tuple[str, ...]
  sort_order: int

  @property
  def text(self) -> str:
    return self.captions[0]


def _clean(text: str | None) -> str:
  return re.sub(r"\s+", " ", (text or "").replace("_", " ").replace("-", " ")).strip().lower()


def parse_entries(meta: list[dict[str, Any]], style: Style) -> list[Emoji]:
  """The emoji with an image in `style` from emoji.json's entries, with their captions and
  images."""
  entries = []
  for e in meta:
    if not e.get(style.has_image):
      continue
    short = [_clean(s) for s in (e.get("short_names") or [e.get("short_name")]) if _clean(s)]
    name = re.sub(r"\s+", " ", (e.get("name") or "")).strip().lower()
    captions = data_registry.unique(([name] if name else []) + short)
    if not captions:
      continue
    variations = (e.get("skin_variations") or {}).values()
    images = [e["image"]] + [v["image"] for v in variations if v.get(style.has_image)]
    entries.append(Emoji(
        unified=e["unified"], captions=tuple(captions), category=e.get("category") or "",
        subcategory=e.get("subcategory") or "", images=tuple(data_registry.unique(images)),
        sort_order=int(e.get("sort_order") or 0)))
  return entries


def split_rank(unified: str) -> int:
  """The stable position key of an emoji in the held-out ranking (smaller = held out first)."""
  return int.from_bytes(hashlib.sha256((_SPLIT_SALT + unified).encode()).digest()[:8], "big")


def split_entries(entries: list[Emoji], heldout_fraction: float) -> tuple[list[int], list[int]]:
  """(train indices, held-out indices) into `entries`; see the module docstring."""
  base = [i for i, e in enumerate(entries) if e.category != COMPONENT]
  num_heldout = math.ceil(heldout_fraction * len(base))
  ranked = sorted(base, key=lambda i: (split_rank(entries[i].unified), entries[i].unified))
  heldout = sorted(ranked[:num_heldout])
  held = set(heldout)
  train = [i for i in range(len(entries)) if i not in held]
  return train, heldout


def _ordered_labels(entries: list[Emoji], attr: str) -> list[str]:
  """Distinct values of `attr` over non-Component emoji, in emoji display order."""
  first: dict[str, int] = {}
  for e in entries:
    if e.category != COMPONENT:
      value = getattr(e, attr)
      first[value] = min(first.get(value, e.sort_order), e.sort_order)
  return sorted(first, key=lambda v: (first[v], v))


def ensure_extracted(cache_dir: Path, style: Style) -> Path:
  """Returns <cache_dir>/emoji-datasource-<style>-<VERSION>/ holding emoji.json and
  img/<style>/64.

  Fetches (npm pack) and checks the tarball, then extracts atomically, on first use.
  """
  root = Path(cache_dir) / f"{style.package}-{VERSION}"
  if (root / "emoji.json").is_file():
    return root
  tarball = cache.npm_pack(style.package, VERSION, cache_dir)
  sha1 = cache.file_sha1(tarball)
  if sha1 != style.tarball_sha1:
    raise cache.DataDownloadError(
        f"{tarball} has SHA-1 {sha1}, expected {style.tarball_sha1} for "
        f"{style.package}@{VERSION}; it is corrupt or a different version. Delete it and run "
        "again.")
  prefix = f"package/{style.image_dir}/"
  with cache.atomic_path(root) as tmp:
    (tmp / style.image_dir).mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as tar:
      for member in tar:
        if not member.isfile():
          continue
        if member.name == "package/emoji.json":
          dest = tmp / "emoji.json"
        elif (member.name.startswith(prefix) and member.name.endswith(".png")
              and "/" not in member.name[len(prefix):]):
          dest = tmp / style.image_dir / member.name[len(prefix):]
        else:
          continue
        dest.write_bytes(tar.extractfile(member).read())
    if not (tmp / "emoji.json").is_file():
      raise cache.DataDownloadError(f"{tarball} holds no package/emoji.json; delete it and rerun")
  return root


def image_digests(root: Path, image_dir: str, files: list[str]) -> list[str]:
  """SHA-1 of each image file's bytes (in <root>/<image_dir>), cached in <root>/image-sha1.json."""
  path = root / "image-sha1.json"
  known = json.loads(path.read_text()) if path.is_file() else {}
  if not all(f in known for f in files):
    known = {f: hashlib.sha1((root / image_dir / f).read_bytes()).hexdigest() for f in files}
    cache.atomic_write_text(path, json.dumps(known, sort_keys=True))
  return [known[f] for f in files]


def decoded_images(root: Path, image_dir: str, files: list[str], image_size: int) -> np.ndarray:
  """All `files` (in <root>/<image_dir>) decoded at `image_size`, cached as
  <root>/images-<size>px-v<format>.npy.

  Returns:
    uint8 [len(files), image_size, image_size, 3], memory-mapped read-only.
  """
  shape = (len(files), image_size, image_size, 3)

  def write(tmp: Path) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    for i, f in enumerate(files):
      out[i] = transforms.decode_image(root / image_dir / f, image_size)
    out.flush()

  return cache.cached_images(root / f"images-{image_size}px-v{_DECODE_FORMAT}.npy", shape, write)


class EmojiSource(DataSource):
  """See the module docstring."""
  name = "emoji"

  def __init__(self, cache_dir: Path, image_size: int,
               heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, style: str = DEFAULT_STYLE):
    self.image_size = image_size
    self.heldout_fraction = heldout_fraction
    self.style = STYLES[style]
    self.root = ensure_extracted(cache_dir, self.style)
    self.meta = json.loads((self.root / "emoji.json").read_text(encoding="utf-8"))
    self.entries = parse_entries(self.meta, self.style)
    train, heldout = split_entries(self.entries, heldout_fraction)
    self.heldout_ids = heldout
    self.files = sorted({f for e in self.entries for f in e.images})
    index = {f: k for k, f in enumerate(self.files)}
    self.entry_images = [np.array([index[f] for f in e.images], np.int64) for e in self.entries]
    digests = image_digests(self.root, self.style.image_dir, self.files)
    self.heldout_captions = frozenset(c for i in heldout for c in self.entries[i].captions)
    heldout_digests = {digests[k] for i in heldout for k in self.entry_images[i].tolist()}
    # Training units: their captions minus every held-out caption, and their images minus any
    # that is byte-identical to a held-out emoji's image (a few emoji share artwork, e.g. the
    # Diego Garcia and British Indian Ocean Territory flags). A unit left without a caption or an
    # image is dropped.
    self.train_ids = []
    self.train_caption_lists = []
    self.train_image_lists = []
    for i in train:
      kept = [c for c in self.entries[i].captions if c not in self.heldout_captions]
      imgs = [k for k in self.entry_images[i].tolist() if digests[k] not in heldout_digests]
      if kept and imgs:
        self.train_ids.append(i)
        self.train_caption_lists.append(kept)
        self.train_image_lists.append(np.array(imgs, np.int64))
    self.images = decoded_images(self.root, self.style.image_dir, self.files, image_size)
    self.categories = _ordered_labels(self.entries, "category")
    self.subcategories = _ordered_labels(self.entries, "subcategory")

  @property
  def num_train(self) -> int:
    return len(self.train_ids)

  def train_captions(self) -> list[str]:
    return [c for caps in self.train_caption_lists for c in caps]

  def train_examples(self, units: np.ndarray,
                     draws: np.ndarray) -> tuple[np.ndarray, list[str]]:
    rows, captions = [], []
    draws = np.asarray(draws)
    for unit, (u_image, u_caption) in zip(np.asarray(units).tolist(), draws, strict=True):
      imgs = self.train_image_lists[unit]
      caps = self.train_caption_lists[unit]
      rows.append(imgs[data_registry.draw_index(u_image, len(imgs))])
      captions.append(caps[data_registry.draw_index(u_caption, len(caps))])
    order = np.asarray(rows, dtype=np.int64)
    return np.asarray(self.images[order]), captions

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return ("heldout", "train")

  def eval_split(self, split: str) -> EvalSet:
    if split == "heldout":
      ids = self.heldout_ids
      texts = [self.entries[i].text for i in ids]
      base = [self.entry_images[i][0] for i in ids]
    elif split == "train":  # the training emoji outside "Component", with their first caption
      kept = [k for k, i in enumerate(self.train_ids) if self.entries[i].category != COMPONENT]
      ids = [self.train_ids[k] for k in kept]
      texts = [self.train_caption_lists[k][0] for k in kept]
      base = [self.train_image_lists[k][0] for k in kept]
    else:
      raise self.unknown_split(split)
    entries = [self.entries[i] for i in ids]
    return EvalSet(
        images=transforms.to_float(np.asarray(self.images[np.array(base, np.int64)])),
        texts=texts,
        text_image=np.arange(len(ids), dtype=np.int32),
        labels={
            "category": (np.array([self.categories.index(e.category) for e in entries], np.int32),
                         list(self.categories)),
            "subcategory": (np.array([self.subcategories.index(e.subcategory) for e in entries],
                                     np.int32), list(self.subcategories)),
        })


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmojiFields(SourceFields):
  """`config.data` of the emoji source: `SourceFields`, style, the art ("google" or "twitter"),
  and heldout_fraction, the share of the base emoji held out for evaluation, in (0, 1)."""

  style: str = schema.field(DEFAULT_STYLE, schema.one_of(*STYLES))
  heldout_fraction: float = schema.field(
      DEFAULT_HELDOUT_FRACTION, schema.number(0.0, 1.0, low_open=True, high_open=True))


@SOURCES.register("emoji", fields=EmojiFields)
def build(data_config: Any) -> EmojiSource:
  """The emoji source for `config.data` (fields: `EmojiFields`)."""
  f: EmojiFields = data_registry.parse_source(data_config, "emoji")
  return EmojiSource(cache.resolve_cache_dir(data_config), f.image_size, f.heldout_fraction,
                     f.style)
