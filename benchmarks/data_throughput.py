"""Training-pipeline throughput at 224 px from webdataset JPEG shards, next to a plain webdataset
+ Pillow loop over the same shards, in one run: the ratio is the figure.

The shards: the emoji demo's Google images (`clip_jax.data.emoji`, 64 px) enlarged to 256 x 256
and saved as JPEG (quality 90) with their names as captions, packed by `clip_jax.data.pack`
(`--images` of them, in shards of `--shard_size`), once, in `--workdir`.

* clip_jax: `make_train_iterator` over the "webdataset" source at 224 px: shuffled by index,
  each image read from its shard and decoded with the centre crop (Pillow, Lanczos), tokenised,
  batched, built ahead in `--threads` grain threads (config.data.num_threads); each batch is
  float32 [B, 224, 224, 3].
* baseline: `webdataset.WebDataset(shards).decode("pil").to_tuple("jpg", "txt")` read in order
  (no shuffle buffer), each image resized so its short side is 224 (Pillow, bicubic), centre-
  cropped, stacked and scaled to float32 [-1, 1] in batches of B, in the main thread; no
  tokenisation.

Both read `--batches` batches of `--batch` images after one warm-up batch; images/s is their
count over the wall time.

  python benchmarks/data_throughput.py                         # 2048 images, threads 0 and 2
  python benchmarks/data_throughput.py --threads 0,1,2,4 --batches 20
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.data import (make_tokenizer, make_train_iterator,  # noqa: E402
                           registry as data_registry)

SIZE = 224
STORED = 256


def make_shards(workdir: str, num_images: int, shard_size: int, cache_dir: str) -> list[str]:
  """The benchmark's shards in `workdir` (made once): emoji as 256 px JPEGs with captions."""
  shards = sorted(glob.glob(os.path.join(workdir, "shards", "shard-*.tar")))
  if shards:
    return shards
  emoji = data_registry.build_source(ml_collections.ConfigDict(dict(
      name="emoji", style="google", image_size=64, heldout_fraction=0.15, cache_dir=cache_dir)))
  units = np.arange(num_images) % emoji.num_train
  images, captions = emoji.train_examples(units, np.zeros((num_images, 2)))
  folder = os.path.join(workdir, "images")
  os.makedirs(folder, exist_ok=True)
  for i, (image, caption) in enumerate(zip(images, captions)):
    big = Image.fromarray(image).resize((STORED, STORED), Image.Resampling.BICUBIC)
    big.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    with open(os.path.join(folder, f"{i:06d}.txt"), "w", encoding="utf-8") as f:
      f.write(caption)
  subprocess.run([sys.executable, "-m", "clip_jax.data.pack", "--images", folder, "--output",
                  os.path.join(workdir, "shards"), f"--shard_size={shard_size}"], check=True)
  return sorted(glob.glob(os.path.join(workdir, "shards", "shard-*.tar")))


def ours(shards: list[str], workdir: str, batch: int, batches: int, threads: int) -> float:
  """Images/s of clip_jax's pipeline."""
  config = ml_collections.ConfigDict(dict(seed=0, batch_size=batch))
  config.data = ml_collections.ConfigDict(dict(
      name="webdataset", train_shards=list(shards), image_size=SIZE, max_len=32,
      cache_dir=os.path.join(workdir, "cache"), num_threads=threads, prefetch=2,
      tokenizer=dict(name="bytes")))
  it = make_train_iterator(config, make_tokenizer(config.data))
  next(it)  # warm-up: index, threads started
  start = time.perf_counter()
  for _ in range(batches):
    out = next(it)
  seconds = time.perf_counter() - start
  assert out["image"].shape == (batch, SIZE, SIZE, 3)
  it.close()
  return batch * batches / seconds


def baseline(shards: list[str], batch: int, batches: int) -> float:
  """Images/s of a plain webdataset + Pillow loop."""
  import webdataset as wds  # pylint: disable=import-outside-toplevel

  def prepare(image: Image.Image) -> np.ndarray:
    w, h = image.size
    scale = SIZE / min(w, h)
    image = image.convert("RGB").resize((max(SIZE, round(w * scale)), max(SIZE, round(h * scale))),
                                        Image.Resampling.BICUBIC)
    left, top = (image.width - SIZE) // 2, (image.height - SIZE) // 2
    return np.asarray(image.crop((left, top, left + SIZE, top + SIZE)))

  dataset = wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("jpg", "txt")
  stream = iter(dataset.repeat())

  def one_batch() -> np.ndarray:
    rows = [prepare(next(stream)[0]) for _ in range(batch)]
    return np.stack(rows).astype(np.float32) / np.float32(127.5) - np.float32(1.0)

  one_batch()  # warm-up
  start = time.perf_counter()
  for _ in range(batches):
    out = one_batch()
  seconds = time.perf_counter() - start
  assert out.shape == (batch, SIZE, SIZE, 3)
  return batch * batches / seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="/tmp/clip_jax_data_throughput")
  parser.add_argument("--images", type=int, default=2048)
  parser.add_argument("--shard_size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=10)
  parser.add_argument("--threads", default="0,2", help="config.data.num_threads values")
  parser.add_argument("--cache_dir", default="", help="the emoji data cache ('' = the default)")
  args = parser.parse_args()

  shards = make_shards(args.workdir, args.images, args.shard_size, args.cache_dir)
  base = baseline(shards, args.batch, args.batches)
  print(f"{len(shards)} shards of {args.shard_size} JPEGs ({STORED} px), {args.batches} batches "
        f"of {args.batch} at {SIZE} px, {os.cpu_count()} CPUs")
  print("| pipeline | threads | images/s | ratio to baseline |")
  print("|---|---|---|---|")
  print(f"| webdataset + Pillow loop | - | {base:.0f} | 1.00 |")
  for threads in [int(t) for t in args.threads.split(",")]:
    rate = ours(shards, args.workdir, args.batch, args.batches, threads)
    print(f"| clip_jax (grain) | {threads} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
  main()
