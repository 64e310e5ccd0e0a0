"""Image-caption pairs in webdataset tar shards ("webdataset"), local or gs://, read by index.

`config.data.train_shards` names the shards: a brace pattern ("/data/shard-{00000..00127}.tar",
expanded with `braceexpand`), a glob ("/data/shard-*.tar"; on object storage only in the last
path component), or a list of either. Every named shard must exist; a pattern that matches
nothing stops the run at start-up naming the field.

Samples follow webdataset's key rule: a member's key is its path up to the first dot of its last
component, the rest is its extension ("a/b/x.y.jpg": key "a/b/x", extension "y.jpg"; compared in
lower case), and consecutive members with the same key form one sample. A sample's image is its
first member with extension jpg, jpeg, png or webp (in that order of preference); its caption is
its "txt" member, or else the `config.data.caption_key` field (default "caption") of its "json"
member, which may also be a list of captions (training draws one per example). Other members
are ignored.

Random access. Unlike webdataset's own streaming reader, this source serves units by index like
the other sources, so resuming is exact and the global batch is the same for any number of
processes (`clip_jax.data.pipeline`). The cost: at start-up every shard's tar headers are read
once (a pass over the shard: tarfile seeks from header to header; captions are read then too)
into an index of (shard, image offset, image size, captions); and training reads each image as
a range read of its shard (one ranged request per image on object storage, no read-ahead). The
index of each shard is cached as JSON in <cache dir>/webdataset-index/, keyed by the shard's
path, size and modification time (and caption_key), so a restart scans only changed shards.
The shards are scanned by 16 threads.

A truncated tar keeps the complete samples before the cut; the cut-off sample counts as
"truncated_tar" (the samples after it are lost uncounted), and a file that is not a tar at all
counts once as "shard_unreadable". Held-out split "heldout": `config.data.eval_shards`
(optional, the same forms). Bad input, skip counts, `max_skip_fraction` and the held-out rules:
`clip_jax.data.files`.

Config fields: `WebDatasetFields`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any, Sequence

import braceexpand

from clip_jax import fs, schema
from clip_jax.data import cache
from clip_jax.data import registry as data_registry
from clip_jax.data.files import FileFields, FileSource, Sample, Skips, clean_caption
from clip_jax.data.registry import SOURCES
from clip_jax.registry import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference
_INDEX_FORMAT = 1  # bump when the index changes, to invalidate the cached ones
_SCAN_THREADS = 16
_GLOB_CHARS = frozenset("*?[")


def split_key(name: str) -> tuple[str, str] | None:
  """(key, lower-case extension) of a member path by webdataset's rule, or None for a member
  whose last component has no dot (not part of any sample)."""
  folder, _, last = name.rpartition("/")
  stem, dot, ext = last.partition(".")
  if not dot or not stem:
    return None
  return (f"{folder}/{stem}" if folder else stem), ext.lower()


def expand_shards(spec: Any, field: str) -> list[str]:
  """The shard paths that a brace pattern, glob or list of them names, in order.

  Raises:
    ConfigError: naming `field`: nothing given, a glob that matches nothing, or a named shard
      that does not exist.
  """
  specs = [spec] if isinstance(spec, str) else list(spec or ())
  if not specs or not all(isinstance(s, str) and s for s in specs):
    raise ConfigError(f"{field} = {spec!r} must name the tar shards: a brace pattern "
                      "('/data/shard-{00000..00127}.tar'), a glob ('/data/*.tar') or a list")
  shards = []
  for s in specs:
    for path in braceexpand.braceexpand(s):
      if _GLOB_CHARS & set(path):
        found = fs.glob(path)
        if not found:
          raise ConfigError(f"{field}: the pattern {path!r} matches no file; check the folder and "
                            "the name pattern")
        shards.extend(found)
      elif not fs.exists(path):
        raise ConfigError(f"{field}: shard {path!r} does not exist (from {s!r}); check the path "
                          "and the brace range")
      else:
        shards.append(path)
  return shards


@dataclasses.dataclass
class _Pending:
  """The members seen so far of the sample being scanned: extension -> (offset, size), and the
  text of its txt / json members."""
  key: str
  members: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
  texts: dict[str, bytes] = dataclasses.field(default_factory=dict)


def _finish(pending: _Pending, caption_key: str) -> tuple[tuple[int, int, tuple[str, ...]] | None,
                                                          str | None]:
  """((image offset, size, captions), None) for a usable sample, else (None, skip reason)."""
  image = next((pending.members[e] for e in IMAGE_EXTENSIONS if e in pending.members), None)
  if image is None:
    return None, "image_missing"
  if image[1] == 0:
    return None, "image_empty"
  if "txt" in pending.texts:
    try:
      value = pending.texts["txt"].decode("utf-8")
    except UnicodeDecodeError:
      return None, "bad_row"
  elif "json" in pending.texts:
    try:
      meta = json.loads(pending.texts["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
      return None, "bad_row"
    value = meta.get(caption_key) if isinstance(meta, dict) else None
  else:
    value = None
  captions, reason = clean_caption(value)
  return (image[0], image[1], captions) if reason is None else None, reason


def scan_shard(shard: str, caption_key: str) -> dict[str, Any]:
  """One pass over a shard's tar headers (module docstring).

  Returns:
    {"samples": [[image offset, image size, [captions]], ...] in member order,
     "skipped": {reason: count}}.
  """
  samples: list[list[Any]] = []
  skipped: dict[str, int] = {}

  def finish(pending: _Pending | None) -> None:
    if pending is not None:
      sample, reason = _finish(pending, caption_key)
      if sample is None:
        skipped[reason] = skipped.get(reason, 0) + 1
      else:
        samples.append([sample[0], sample[1], list(sample[2])])

  pending = None
  try:
    with fs.open_read(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for member in tar:
        parts = split_key(member.name) if member.isfile() else None
        if parts is None:
          continue
        key, ext = parts
        if pending is None or key != pending.key:
          finish(pending)
          pending = _Pending(key)
        pending.members.setdefault(ext, (member.offset_data, member.size))
        if ext in ("txt", "json") and ext not in pending.texts:
          pending.texts[ext] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError):
    # Cut short after some members (tarfile checks that each member's data ends within the
    # file: "unexpected end of data"), or not readable as a tar at all.
    reason = "truncated_tar" if samples or pending is not None else "shard_unreadable"
    skipped[reason] = skipped.get(reason, 0) + 1
    pending = None
  finish(pending)
  return {"samples": samples, "skipped": skipped}


def shard_index(shard: str, caption_key: str, cache_dir: Path) -> dict[str, Any]:
  """`scan_shard`'s result, cached in <cache_dir>/webdataset-index/ by (path, size, mtime,
  caption_key); a shard that cannot be stat'ed or read is scanned (and counted) uncached."""
  try:
    size, mtime = fs.size_and_mtime(shard)
  except OSError:
    return scan_shard(shard, caption_key)
  key = json.dumps([_INDEX_FORMAT, fs.resolve(shard), size, mtime, caption_key])
  path = (Path(cache_dir) / "webdataset-index" /
          f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json")
  if path.is_file():
    return json.loads(path.read_text(encoding="utf-8"))
  index = scan_shard(shard, caption_key)
  if "shard_unreadable" not in index["skipped"]:  # e.g. a permission fixed later: scan again
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.atomic_write_text(path, json.dumps(index, ensure_ascii=False))
  return index


def index_shards(shards: Sequence[str], caption_key: str,
                 cache_dir: Path) -> tuple[list[Sample], Skips]:
  """The usable samples of all `shards` in order (`where` = the shard), and their skips."""
  with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
    indexes = list(pool.map(lambda s: shard_index(s, caption_key, cache_dir), shards))
  samples, skips = [], Skips()
  for shard, index in zip(shards, indexes, strict=True):
    samples.extend(Sample(shard, offset, size, tuple(captions), shard)
                   for offset, size, captions in index["samples"])
    for reason, count in index["skipped"].items():
      skips.add(reason, shard, count)
  return samples, skips


class WebDatasetSource(FileSource):
  """See the module docstring."""
  name = "webdataset"


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebDatasetFields(FileFields):
  """`config.data` of the "webdataset" source: `FileFields` and

  Attributes:
    train_shards: the training shards (required): a brace pattern, glob, or a list of them.
    eval_shards: the held-out shards, the same forms ("" = no held-out split).
    caption_key: the caption field of a sample's json member (when it has no txt member).
  """

  train_shards: Any = ""
  eval_shards: Any = ""
  caption_key: str = schema.field("caption", schema.string(nonempty=True))


@SOURCES.register("webdataset", fields=WebDatasetFields)
def build(data_config: Any) -> WebDatasetSource:
  """The "webdataset" source for `config.data` (fields: `WebDatasetFields`)."""
  f: WebDatasetFields = data_registry.parse_source(data_config, "webdataset")
  cache_dir = cache.resolve_cache_dir(data_config)
  eval_shards = expand_shards(f.eval_shards, "config.data.eval_shards") if f.eval_shards else []

  def train_index() -> tuple[list[Sample], Skips]:
    shards = expand_shards(f.train_shards, "config.data.train_shards")
    return index_shards(shards, f.caption_key, cache_dir)

  def eval_index() -> tuple[list[Sample], Skips]:
    return index_shards(eval_shards, f.caption_key, cache_dir)

  return WebDatasetSource(train_index, image_size=f.image_size,
                          max_skip_fraction=f.max_skip_fraction,
                          field=f"config.data.train_shards = {f.train_shards!r}",
                          eval_index=eval_index if eval_shards else None, num_eval=f.num_eval)
