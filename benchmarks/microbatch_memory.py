"""Per-device memory of the train step with and without micro-batching, from XLA's analysis.

Builds the real trainer (`clip_jax.training.trainer.Trainer`) for CLIP-sized models on ONE device
and compiles its train step for abstract inputs (`jax.ShapeDtypeStruct` batch, the trainer's
`eval_shape` state: no weights or batches are ever allocated), then reads
`compiled.memory_analysis()`:

  temp     XLA's temporary buffers (activations, gradients, the loss's blocks, ...);
  total    everything the step holds at once: arguments (params, optimizer state, batch) +
           temp + outputs not aliased to the donated state.

Models (224 px; softmax loss, ring implementation with `--chunk_size` column chunks, float32,
remat off unless `--remat`, AdamW):
  vit_b16  ViT-B/16 (width 768, 12 layers, 12 heads, patch 16) + the CLIP text tower (width 512,
           12 layers, 8 heads, context 77, vocabulary 49408, causal), embed_dim 512;
  vit_l14  ViT-L/14 (width 1024, 24 layers, 16 heads, patch 14) + the text tower at width 768
           (12 heads), embed_dim 768.

For each model: the plain step at the `--plain` global batches, the micro-batched step
(`config.microbatch_size = --microbatch_size`) at the `--micro` global batches, the ratio of the
micro-batched step's temp memory at the largest `--micro` batch that is also a `--plain` batch
to the plain step's at the smallest `--plain` batch (target <= 1.5x), and the largest global
batch whose total fits `--budget_gb` per device: a least-squares line total(B) = a + b B
through the measured points of each step (every term that grows with B is linear in B: inputs,
embeddings and their gradients, chunked loss blocks, and, for the plain step, activations),
with its largest residual printed as a check of the line. On one device the global batch is the
device's batch; with D devices the terms in B are divided by D.

  python benchmarks/microbatch_memory.py      # ViT-B/16: plain 256, 4096; micro 4096 to 16384
  python benchmarks/microbatch_memory.py --models vit_b16,vit_l14 --plain= --microbatch_size 32 \
      --micro 4096,16384,65536

Figures are for XLA's CPU compiler; GPU/TPU compilers fuse and schedule differently. On CPU,
`--remat` did not lower the figures when measured (nor for the demo model in the README), so the
micro-batch size is the knob here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.training.trainer import Trainer  # noqa: E402

GiB = 2.0**30
TEXT = dict(name="text_transformer", vocab_size=49408, context_length=77, width=512, depth=12,
            num_heads=8, mlp_ratio=4.0, causal=True, pooling="eos")
MODELS = {
    "vit_b16": dict(embed_dim=512, image=dict(patch_size=16, width=768, depth=12, num_heads=12),
                    text=TEXT),
    "vit_l14": dict(embed_dim=768, image=dict(patch_size=14, width=1024, depth=24, num_heads=16),
                    text=dict(TEXT, width=768, num_heads=12)),
}
IMAGE_SIZE = 224


def make_config(model: str, batch_size: int, microbatch_size: int, chunk_size: int,
                remat: bool) -> ml_collections.ConfigDict:
  """A training config for `model` on one device (see the module docstring)."""
  spec = MODELS[model]
  c = ml_collections.ConfigDict()
  c.seed, c.total_steps, c.batch_size, c.microbatch_size = 0, 1000, batch_size, microbatch_size
  c.log_every_steps = c.eval_every_steps = c.ckpt_every_steps = 1000
  c.mesh = (("data", 1), ("fsdp", 1))
  c.batch_axes = ("data", "fsdp")
  c.sharding_rules = ((".*", "fsdp"),)
  c.data = ml_collections.ConfigDict(dict(name="synthetic", image_size=IMAGE_SIZE,
                                          max_len=spec["text"]["context_length"]))
  c.model = ml_collections.ConfigDict(dict(embed_dim=spec["embed_dim"], dtype="float32",
                                           remat=remat))
  c.model.towers = ml_collections.ConfigDict(dict(
      image=dict(name="vit", mlp_ratio=4.0, pooling="cls", **spec["image"]),
      text=spec["text"]))
  c.loss = ml_collections.ConfigDict(dict(name="softmax", impl="ring", chunk_size=chunk_size))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=10, end_lr_ratio=0.0, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.2, grad_clip_norm=1.0, no_decay=(r".*/bias$", r".*norm.*", r"^loss/"),
      freeze=()))
  c.evals = ml_collections.ConfigDict()
  return c


def analyse(model: str, batch_size: int, microbatch_size: int, chunk_size: int,
            remat: bool) -> dict:
  """Compiles the train step for abstract inputs; returns its memory (bytes) and compile time."""
  config = make_config(model, batch_size, microbatch_size, chunk_size, remat)
  trainer = Trainer(config, devices=jax.devices()[:1])  # the state stays abstract (eval_shape)
  batch = {k: jax.ShapeDtypeStruct(trainer.batch_spec[k].shape, trainer.batch_spec[k].dtype,
                                   sharding=trainer.batch_sharding) for k in trainer.batch_keys}
  start = time.perf_counter()
  memory = trainer.train_step.lower(trainer.abstract_state, batch).compile().memory_analysis()
  seconds = time.perf_counter() - start
  total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
           + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return dict(temp=memory.temp_size_in_bytes, args=memory.argument_size_in_bytes, total=total,
              compile_s=seconds)


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float, float]:
  """Least-squares total = a + b B through (B, total) points; returns (a, b, largest |residual|)."""
  x, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
  b, a = np.polyfit(x, y, 1)
  return a, b, float(np.max(np.abs(a + b * x - y)))


def largest_batch(a: float, b: float, budget: float, multiple: int) -> int:
  """The largest multiple of `multiple` with a + b B <= budget."""
  return int((budget - a) / b // multiple * multiple)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="vit_b16", help=f"comma list of {', '.join(MODELS)}")
  parser.add_argument("--plain", default="256,4096", help="global batches of the plain step")
  parser.add_argument("--micro", default="4096,8192,16384",
                      help="global batches of the micro-batched step")
  parser.add_argument("--microbatch_size", type=int, default=256)
  parser.add_argument("--chunk_size", type=int, default=1024,
                      help="config.loss.chunk_size (bounds the [B, chunk] logits held at once)")
  parser.add_argument("--remat", action="store_true", help="config.model.remat = True")
  parser.add_argument("--budget_gb", type=float, default=80.0,
                      help="per-device memory for the largest-batch estimate, in GB (1e9 B)")
  args = parser.parse_args()
  if args.microbatch_size < 1:
    parser.error("--microbatch_size must be >= 1")
  plain = [int(v) for v in args.plain.split(",") if v]
  micro = [int(v) for v in args.micro.split(",") if v]
  budget = args.budget_gb * 1e9
  for model in args.models.split(","):
    if model not in MODELS:
      parser.error(f"--models: {model!r} is not one of {', '.join(MODELS)}")
    rows = []
    for step, batches, size in (("plain", plain, 0), ("micro", micro, args.microbatch_size)):
      for batch_size in batches:
        print(f"[{model}] compiling the {step} step at global batch {batch_size} ...",
              file=sys.stderr, flush=True)
        rows.append((step, batch_size, size,
                     analyse(model, batch_size, size, args.chunk_size, args.remat)))
        r = rows[-1][3]
        print(f"[{model}] temp {r['temp'] / GiB:.2f} GiB, total {r['total'] / GiB:.2f} GiB, "
              f"compile {r['compile_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"\n### {model}: one device, float32, remat {'on' if args.remat else 'off'}, softmax "
          f"ring loss (chunk {args.chunk_size})\n")
    print("| step | global batch | micro-batch | temp GiB | arguments GiB | total GiB | "
          "compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for step, batch_size, size, r in rows:
      print(f"| {step} | {batch_size} | {size or '-'} | {r['temp'] / GiB:.2f} | "
            f"{r['args'] / GiB:.2f} | {r['total'] / GiB:.2f} | {r['compile_s']:.0f} |")
    by = {(step, b): r for step, b, _, r in rows}
    shared = [b for b in micro if b in plain]
    if plain and shared:
      base, big = by[("plain", min(plain))], by[("micro", max(shared))]
      print(f"\nmicro-batched at {max(shared)} / plain at {min(plain)}: temp "
            f"{big['temp'] / base['temp']:.2f}x, total {big['total'] / base['total']:.2f}x "
            "(target: temp <= 1.5x)")
    for step, batches, multiple in (("plain", plain, 1), ("micro", micro, args.microbatch_size)):
      if len(batches) >= 2:
        a, b, residual = fit_line([(n, by[(step, n)]["total"]) for n in batches])
        fits = largest_batch(a, b, budget, multiple)
        print(f"{step}: total = {a / GiB:.2f} GiB + {b / 2**20:.3f} MiB x B (largest residual "
              f"{residual / 2**20:.1f} MiB over {len(batches)} points); largest global batch in "
              f"{args.budget_gb:g} GB: " + (f"{fits:,}" if fits > 0 else
                                           "none (try a smaller --microbatch_size)"))


if __name__ == "__main__":
  main()
