"""Image-caption pairs listed in a table ("csv"): CSV, TSV or JSON Lines, local or gs://.

`config.data.path` is the table. Its format follows the extension: ".jsonl" is one JSON object
per line, ".tsv" is tab-separated, anything else comma-separated; `config.data.sep` sets the
separator of a CSV-like table instead ("" = by extension). A CSV/TSV's first row names the
columns. `config.data.image_key` (default "filepath") names the image path column and
`config.data.caption_key` (default "title") the caption column, the names open_clip's CSV loader
uses; in JSONL the caption may also be a list of captions (training draws one per example). A
relative image path is relative to the table's folder.

Start-up reads the table once and, for local images, checks that each file exists and is not
empty (one `stat` per row); images on object storage are checked only when read. Training unit i
is the i-th usable row in file order; images are decoded with the centre crop at
`config.data.image_size` when a batch needs them (nothing is cached). Units by index give the
same guarantees as the other sources: exact resume, and the same global batch for any number of
processes (`clip_jax.data.pipeline`).

Held-out split "heldout": `config.data.eval_path` (optional), a table with the same columns.
Bad input, skip counts, `max_skip_fraction` and the held-out rules: `clip_jax.data.files`.

Config fields: `TableFields`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any

from clip_jax import fs, schema
from clip_jax.data import registry as data_registry
from clip_jax.data.files import FileFields, FileSource, Sample, Skips, clean_caption
from clip_jax.data.registry import SOURCES
from clip_jax.registry import ConfigError

SEPARATORS = {".tsv": "\t"}  # by extension; any other (not .jsonl) is ","


def table_format(path: str, sep: str) -> str:
  """"jsonl", or the separator of a CSV-like table (`sep` if set, else by extension)."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".jsonl":
    return "jsonl"
  return sep or SEPARATORS.get(ext, ",")


def read_table(path: str, image_key: str, caption_key: str, sep: str = "",
               field: str = "config.data.path") -> tuple[list[Sample], Skips]:
  """The usable rows of a table as samples, and the skipped rows (module docstring).

  Args:
    path: the table (local or object storage).
    image_key, caption_key: the image path and caption columns (or JSON fields).
    sep: the separator of a CSV-like table ("" = by extension).
    field: the config field that names `path`, for messages.

  Returns:
    (samples with whole-file images and `where` = "<table>:<line> (<image path as given>)",
    their skips).

  Raises:
    ConfigError: `path` is missing or unreadable, or the header lacks a column, naming `field`
      or config.data.image_key / caption_key.
  """
  try:
    text = fs.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{field} = {path!r} cannot be read ({type(e).__name__}: {e}); point it "
                      "at a CSV, TSV or JSONL table of image paths and captions") from None
  table = fs.resolve(path)
  folder = fs.dirname(table)
  fmt = table_format(path, sep)
  samples, skips = [], Skips()
  for line, row in _rows(text, fmt, path, field, image_key, caption_key):
    where = f"{table}:{line}"
    if row is None:
      skips.add("bad_row", where)
      continue
    image = row.get(image_key)
    if not isinstance(image, str) or not image.strip():
      skips.add("image_missing", where)
      continue
    captions, reason = clean_caption(row.get(caption_key))
    if reason is not None:
      skips.add(reason, where)
      continue
    image = image.strip()
    where = f"{where} ({image})"
    if not (fs.is_remote(image) or os.path.isabs(image)):
      image = fs.join(folder, image)
    reason = _local_check(image)
    if reason is not None:
      skips.add(reason, where)
      continue
    samples.append(Sample(image, 0, -1, captions, where))
  return samples, skips


def _rows(text: str, fmt: str, path: str, field: str, image_key: str,
          caption_key: str) -> Any:
  """(line number, row dict or None for an unparsable row) for each data row."""
  if fmt == "jsonl":
    for line, raw in enumerate(text.splitlines(), 1):
      if not raw.strip():
        continue
      try:
        row = json.loads(raw)
      except json.JSONDecodeError:
        row = None
      yield line, row if isinstance(row, dict) else None
    return
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt)
  header = next(reader, None) or []
  for key, name in ((image_key, "image_key"), (caption_key, "caption_key")):
    if key not in header:
      raise ConfigError(
          f"config.data.{name} = {key!r} is not a column of {field} = {path!r} (columns: "
          f"{', '.join(map(repr, header)) or 'none'}; separator {fmt!r}); set config.data."
          f"{name} to the column name" + ("" if len(header) > 1 else
                                           ", or config.data.sep to the file's separator"))
  for row in reader:
    if row:
      yield reader.line_num, dict(zip(header, row)) if len(row) == len(header) else None


def _local_check(image: str) -> str | None:
  """The skip reason of a local image file that is missing, empty or not a file; None if fine
  (object-storage images are checked when read)."""
  if fs.is_remote(image):
    return None
  try:
    st = os.stat(image)
  except FileNotFoundError:
    return "image_missing"
  except OSError:
    return "image_unreadable"
  if not os.path.isfile(image):
    return "image_unreadable"
  return "image_empty" if st.st_size == 0 else None


class TableSource(FileSource):
  """See the module docstring."""
  name = "csv"


def _separator(value: Any, path: str) -> str:
  if not isinstance(value, str) or len(value) > 1:
    raise ConfigError(f"{path} must be one character (e.g. ',' or '\\t') or '' for the "
                      f"table's extension; got {value!r}")
  return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableFields(FileFields):
  """`config.data` of the "csv" source: `FileFields` and

  Attributes:
    path: the training table (required).
    eval_path: the held-out table ("" = no held-out split).
    image_key, caption_key: the image path and caption columns.
    sep: the separator of a CSV-like table ("" = by extension: .tsv tab, else comma).
  """

  path: str = ""
  eval_path: str = ""
  image_key: str = schema.field("filepath", schema.string(nonempty=True))
  caption_key: str = schema.field("title", schema.string(nonempty=True))
  sep: str = schema.field("", _separator)


@SOURCES.register("csv", fields=TableFields)
def build(data_config: Any) -> TableSource:
  """The "csv" source for `config.data` (fields: `TableFields`)."""
  f: TableFields = data_registry.parse_source(data_config, "csv")
  if not f.path:
    raise ConfigError("config.data.path is required for data source 'csv': set it to a CSV, TSV "
                      "or JSONL table with columns config.data.image_key and caption_key")

  if f.eval_path and not fs.exists(f.eval_path):
    raise ConfigError(f"config.data.eval_path = {f.eval_path!r}: no such file; point it at the "
                      "held-out table, or set it to '' for no held-out split")

  def eval_index() -> tuple[list[Sample], Skips]:
    return read_table(f.eval_path, f.image_key, f.caption_key, f.sep, "config.data.eval_path")

  def train_index() -> tuple[list[Sample], Skips]:
    return read_table(f.path, f.image_key, f.caption_key, f.sep)

  return TableSource(train_index, image_size=f.image_size,
                     max_skip_fraction=f.max_skip_fraction, field=f"config.data.path = {f.path!r}",
                     eval_index=eval_index if f.eval_path else None, num_eval=f.num_eval)
