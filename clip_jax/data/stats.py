"""Print what a config's training data holds, before training on it.

  python -m clip_jax.data.stats --config configs/custom/csv.py:path=data/train.csv
  python -m clip_jax.data.stats --config configs/custom/webdataset.py \
      --config.data.train_shards='data/shards/shard-{00000..00009}.tar' --sample 500

Builds the source of `config.data` (for the file sources this is the start-up index: the table
read, or every shard's headers scanned) and prints: the number of training units and captions,
the samples skipped at start-up by reason and the files with the most skips, caption length
percentiles (characters and words, over all captions), and the original image size percentiles
(width, height, in pixels) over `--sample` units spread evenly over the data (their headers only;
an image that cannot be opened is counted under its read-time skip reason).
"""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from clip_jax.cli import define_config_flag, parse_flags_or_exit
from clip_jax.data import build_source, files
from clip_jax.registry import ConfigError

_CONFIG = define_config_flag("Path to a get_config() file.")
_SAMPLE = flags.DEFINE_integer("sample", 1000, "Units whose image sizes are read.", lower_bound=1)
PERCENTILES = (0, 5, 50, 95, 100)


def percentile_line(name: str, values: list[float]) -> str:
  """'<name>: p0 a, p5 b, p50 c, p95 d, p100 e, mean m' (nearest-rank percentiles)."""
  if not values:
    return f"{name}: (none)"
  p = np.percentile(np.asarray(values, np.float64), PERCENTILES, method="nearest")
  parts = ", ".join(f"p{q} {v:g}" for q, v in zip(PERCENTILES, p))
  return f"{name}: {parts}, mean {np.mean(values):.1f}"


def image_sizes(source: Any, count: int) -> tuple[list[tuple[int, int]], dict[str, int]]:
  """((width, height) of up to `count` units spread evenly over the source, read-time skip
  reasons -> count) for a file source; other sources' images have no original size."""
  if not isinstance(source, files.FileSource):
    return [], {}
  units = np.unique(np.linspace(0, source.num_train - 1, min(count, source.num_train)).astype(int))
  sizes, failed = [], {}
  for u in units.tolist():
    data, reason = files.read_bytes(source.samples[u])
    if data is not None:
      try:
        with Image.open(io.BytesIO(data)) as img:
          sizes.append(img.size)
        continue
      except (OSError, Image.DecompressionBombError):
        reason = "image_decode"
    failed[reason] = failed.get(reason, 0) + 1
  return sizes, failed


def report(config: Any, sample: int) -> list[str]:
  """The printed lines for a run config, image sizes over `sample` units (module docstring)."""
  source = build_source(config.data)
  captions = source.train_captions()
  lines = [f"source {source.name!r}: {source.num_train} training units, {len(captions)} captions"]
  if isinstance(source, files.FileSource):
    skips = source.index_skips
    lines.append(f"found {source.found} samples; skipped at start-up: {skips.total}" + (
        " (" + ", ".join(f"{r} {c}" for r, c in skips.by_reason.items() if c) + "; most in "
        + ", ".join(f"{w} ({c})" for w, c in skips.by_file.most_common(5)) + ")"
        if skips.total else ""))
  lines.append(percentile_line("caption characters", [len(c) for c in captions]))
  lines.append(percentile_line("caption words", [len(c.split()) for c in captions]))
  sizes, failed = image_sizes(source, sample)
  if sizes or failed:
    lines.append(f"images read: {len(sizes)} of {len(sizes) + sum(failed.values())} sampled"
                 + (" (failed: " + ", ".join(f"{r} {c}" for r, c in failed.items()) + ")"
                    if failed else ""))
    lines.append(percentile_line("image width", [w for w, _ in sizes]))
    lines.append(percentile_line("image height", [h for _, h in sizes]))
  return lines


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if _CONFIG.value is None:
      raise ConfigError("--config is required, e.g. --config configs/custom/csv.py:path=x.csv")
    print("\n".join(report(_CONFIG.value, _SAMPLE.value)))
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
