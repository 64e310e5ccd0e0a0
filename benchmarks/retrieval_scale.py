"""Wall time and peak host memory of COCO-scale retrieval ranking, blockwise, on this machine.

Random unit-norm embeddings stand in for a model: `--images` images with `--captions` captions
each (COCO's 5k val / 25k-image test sets have 5 per image), dimension `--d`. The evaluator's own
ranking (`clip_jax.evals.retrieval.retrieval_ranks`: image->text and text->image ranks, with the
duplicate rule) runs block by block; the table gives its wall time, the peak of the memory the
ranking allocates on top of the embeddings (numpy allocations, `tracemalloc`), the block it used
and the size the whole similarity matrix would have had.

  python benchmarks/retrieval_scale.py                    # 25,000 x 125,000, d = 512
  python benchmarks/retrieval_scale.py --images 1000      # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.evals.retrieval import (CHUNK_ROWS, MAX_BLOCK_ELEMENTS, rank_summary,  # noqa: E402
                                      recalls_at, retrieval_ranks, row_blocks)

MiB = 2.0 ** 20


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
  x = rng.standard_normal((n, d), dtype=np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=25_000)
  parser.add_argument("--captions", type=int, default=5, help="captions per image")
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  num_texts = args.images * args.captions
  image_emb = unit(rng, args.images, args.d)
  # Each caption is near its image, so the recalls are far from 0 and from 1.
  text_emb = unit(rng, num_texts, args.d) + 0.05 * np.repeat(image_emb, args.captions, axis=0)
  text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
  text_image = np.repeat(np.arange(args.images), args.captions)
  inputs_mib = (image_emb.nbytes + text_emb.nbytes) / MiB

  tracemalloc.start()
  start = time.perf_counter()
  i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image)
  seconds = time.perf_counter() - start
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()

  block = next(iter(row_blocks(args.images, num_texts, CHUNK_ROWS)))
  rows = block.stop - block.start
  full_gib = args.images * num_texts * 4 / 2.0 ** 30
  print("| images | texts | d | seconds | peak MiB (ranking) | embeddings MiB | "
        "block (query rows x candidates) | full matrix GiB |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.images:,} | {num_texts:,} | {args.d} | {seconds:.1f} | {peak / MiB:.0f} | "
        f"{inputs_mib:.0f} | {rows:,} x {num_texts:,} (cap {MAX_BLOCK_ELEMENTS:,} similarities) | "
        f"{full_gib:.1f} |")
  metrics = {**recalls_at(i2t, t2i), **rank_summary(i2t, t2i)}
  print(", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


if __name__ == "__main__":
  main()
