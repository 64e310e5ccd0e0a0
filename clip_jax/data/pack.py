"""Pack image-caption pairs into webdataset tar shards for the "webdataset" source.

  python -m clip_jax.data.pack --table data/train.csv --output data/shards --shard_size 1000
  python -m clip_jax.data.pack --images data/photos --output data/shards

Input: a table read exactly as the "csv" source reads it (`--table`, with `--image_key`,
`--caption_key` and `--sep` as config.data.image_key / caption_key / sep), or a folder of images
(`--images`, searched recursively, in sorted path order) each with a caption in a .txt file of
the same stem beside it. Rows or images without a usable caption or image file are skipped and
counted by reason, as the source would (`clip_jax.data.files`); image bytes are not decoded here.

Output: <output>/shard-00000.tar, shard-00001.tar, ... with `--shard_size` samples each (the last
one fewer). Sample i has key "%09d" % i and the members <key>.<ext> (the image bytes as they are
for jpg, jpeg, png and webp; any other format Pillow reads is re-encoded as PNG) and <key>.txt
(its caption) or, for a row with a list of captions (JSONL), <key>.json {"caption": [...]}.
Members carry no time stamps or owners, so the same input gives byte-identical shards. Each shard
is written to a temporary file and then moved into place; `--output` may be on object storage.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import tempfile
from typing import Iterator

from absl import app, flags
from PIL import Image

from clip_jax import fs
from clip_jax.data import table
from clip_jax.data.files import Sample, Skips, clean_caption
from clip_jax.data.webdataset import IMAGE_EXTENSIONS
from clip_jax.registry import ConfigError

_TABLE = flags.DEFINE_string("table", None, "A CSV, TSV or JSONL table of image paths and captions.")
_IMAGES = flags.DEFINE_string("images", None, "A folder of images with same-stem .txt captions.")
_OUTPUT = flags.DEFINE_string("output", None, "The folder for shard-00000.tar, ...")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 1000, "Samples per shard.", lower_bound=1)
_IMAGE_KEY = flags.DEFINE_string("image_key", "filepath", "The table's image path column.")
_CAPTION_KEY = flags.DEFINE_string("caption_key", "title", "The table's caption column.")
_SEP = flags.DEFINE_string("sep", "", "The table's separator ('' = by extension).")


def folder_samples(folder: str) -> tuple[list[Sample], Skips]:
  """The images under local `folder` (any file Pillow may read, by extension) with their
  same-stem .txt captions, in sorted path order."""
  if not os.path.isdir(folder):
    raise ConfigError(f"--images {folder!r} is not a directory")
  known = {e.lower() for e, f in Image.registered_extensions().items() if f in Image.OPEN}
  samples, skips = [], Skips()
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in known:
        continue
      path = os.path.join(root, name)
      caption_file = os.path.join(root, stem + ".txt")
      captions, reason = ((), "caption_missing")
      if os.path.isfile(caption_file):
        with open(caption_file, encoding="utf-8") as f:
          captions, reason = clean_caption(f.read())
      if reason is None and os.path.getsize(path) == 0:
        reason = "image_empty"
      if reason is not None:
        skips.add(reason, path)
        continue
      samples.append(Sample(path, 0, -1, captions, path))
  return samples, skips


def sample_members(key: str, sample: Sample) -> Iterator[tuple[str, bytes]]:
  """The tar members (name, bytes) of one sample (module docstring)."""
  data = fs.read_bytes(sample.path, sample.offset, sample.size)
  ext = os.path.splitext(sample.path)[1].lower().lstrip(".")
  if ext not in IMAGE_EXTENSIONS:
    with Image.open(io.BytesIO(data)) as img:
      out = io.BytesIO()
      img.save(out, format="PNG")
    data, ext = out.getvalue(), "png"
  yield f"{key}.{ext}", data
  if len(sample.captions) == 1:
    yield f"{key}.txt", sample.captions[0].encode("utf-8")
  else:
    yield f"{key}.json", json.dumps({"caption": list(sample.captions)},
                                    ensure_ascii=False).encode("utf-8")


def write_shards(samples: list[Sample], output: str, shard_size: int) -> tuple[list[str], Skips]:
  """Writes the samples as shards in `output` (module docstring); returns (the shard paths, the
  samples skipped because their image could not be read or re-encoded)."""
  fs.makedirs(output)
  if any(n.startswith("shard-") and n.endswith(".tar") for n in fs.listdir(output)):
    raise ConfigError(f"--output {output!r} holds shard-*.tar files already; choose an empty "
                      "folder or delete them")
  skips, shards = Skips(), []
  tmp_dir = None if fs.is_remote(output) else output
  for first in range(0, len(samples), shard_size):
    path = fs.join(output, f"shard-{len(shards):05d}.tar")
    fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".tar.tmp", dir=tmp_dir)
    try:
      with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                  format=tarfile.USTAR_FORMAT) as tar:
        for i in range(first, min(first + shard_size, len(samples))):
          try:
            members = list(sample_members(f"{i:09d}", samples[i]))
          except FileNotFoundError:
            skips.add("image_missing", samples[i].where)
            continue
          except OSError:
            skips.add("image_unreadable", samples[i].where)
            continue
          for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
      os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the shards from other readers
      fs.move(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    shards.append(path)
  return shards, skips


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if (_TABLE.value is None) == (_IMAGES.value is None):
      raise ConfigError("give exactly one of --table (a CSV/TSV/JSONL table) or --images (a "
                        "folder of images with .txt captions)")
    if not _OUTPUT.value:
      raise ConfigError("--output is required: the folder for the shards")
    if _TABLE.value is not None:
      samples, skips = table.read_table(_TABLE.value, _IMAGE_KEY.value, _CAPTION_KEY.value,
                                        _SEP.value, "--table")
    else:
      samples, skips = folder_samples(_IMAGES.value)
    shards, read_skips = write_shards(samples, _OUTPUT.value, _SHARD_SIZE.value)
  except ConfigError as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)
  skips.merge(read_skips)
  print(f"Wrote {len(samples) - read_skips.total} samples in {len(shards)} shards to "
        f"{_OUTPUT.value} (shard-00000.tar ... shard-{max(len(shards) - 1, 0):05d}.tar).")
  if skips.total:
    print("Skipped: " + ", ".join(f"{r} {c}" for r, c in skips.by_reason.items() if c)
          + "; e.g. " + ", ".join(list(skips.by_file)[:3]))


if __name__ == "__main__":
  app.run(main)
