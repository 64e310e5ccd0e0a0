"""Per-device memory and time of the contrastive losses, ring vs all-gather, on simulated devices.

For each loss (sigmoid, softmax), implementation (ring, all_gather, ring with column chunks) and
device count D, compiles jit(value_and_grad(shard_map(loss))) for a LOCAL batch of n rows of
dimension d (global batch n D) and reports XLA's temporary memory per device
(`compiled.memory_analysis().temp_size_in_bytes`, forward plus backward) and the wall time per
call. Then checks the targets: ring memory flat in D (D=8 at most 1.25x D=2) and, on one device,
column chunks of n/8 at n=8192 using under a quarter of the unchunked memory.

  python benchmarks/loss_memory.py                      # n=1024, d=768, D=1,2,4,8, timed
  python benchmarks/loss_memory.py --quick              # memory only (no timing)
  python benchmarks/loss_memory.py --n 256 --d 128 --devices 2,8 --calls 2

Numbers are for the CPU backend; GPU/TPU compilers schedule differently, but the ring's memory
flatness comes from the program structure (no gathered batch, no stacked per-step residuals).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.losses import sigmoid_loss, softmax_loss  # noqa: E402

MiB = 2.0**20


def _loss_fn(loss: str, impl: str, chunk_size: int | None, axis_name):
  if loss == "sigmoid":
    return lambda x, y, t, b: sigmoid_loss(x, y, t, b, axis_name=axis_name, impl=impl,
                                           chunk_size=chunk_size)
  return lambda x, y, t, b: softmax_loss(x, y, t, axis_name=axis_name, impl=impl,
                                         chunk_size=chunk_size) + 0.0 * b


def build(loss: str, impl: str, chunk_size: int | None, devices: int, n: int, d: int):
  """Returns (compiled value_and_grad, its argument shapes) for D devices, local batch n."""
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:devices])
  f = jax.shard_map(_loss_fn(loss, impl, chunk_size, "data"), mesh=mesh,
                    in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
  step = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
  batch = NamedSharding(mesh, P("data"))
  scalar = NamedSharding(mesh, P())
  args = (jax.ShapeDtypeStruct((n * devices, d), jnp.float32, sharding=batch),
          jax.ShapeDtypeStruct((n * devices, d), jnp.float32, sharding=batch),
          jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar),
          jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar))
  return step.lower(*args).compile(), args


def inputs(args, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for a in args[:2]:
    v = rng.normal(size=a.shape).astype(np.float32)
    out.append(jax.device_put(v / np.linalg.norm(v, axis=1, keepdims=True), a.sharding))
  out.append(jax.device_put(np.float32(10.0), args[2].sharding))
  out.append(jax.device_put(np.float32(-10.0), args[3].sharding))
  return out


def measure(loss, impl, chunk_size, devices, n, d, calls):
  compiled, args = build(loss, impl, chunk_size, devices, n, d)
  temp = compiled.memory_analysis().temp_size_in_bytes
  seconds = float("nan")
  if calls:
    xs = inputs(args)
    jax.block_until_ready(compiled(*xs))  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(compiled(*xs))
    seconds = (time.perf_counter() - start) / calls
  return temp, seconds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=1024, help="local batch per device")
  parser.add_argument("--d", type=int, default=768, help="embedding dimension")
  parser.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  parser.add_argument("--calls", type=int, default=3, help="timed calls after one warm-up")
  parser.add_argument("--quick", action="store_true", help="memory only: no timed calls")
  parser.add_argument("--single_n", type=int, default=8192,
                      help="local batch of the one-device chunking check (0 = skip)")
  args = parser.parse_args(argv)
  calls = 0 if args.quick else args.calls
  device_counts = [int(v) for v in args.devices.split(",")]
  n, d = args.n, args.d
  chunk = max(1, n // 8)

  configs = [(loss, impl, cs) for loss in ("sigmoid", "softmax")
             for impl, cs in (("ring", None), ("ring", chunk), ("all_gather", None))]
  results = {}
  for loss, impl, cs in configs:
    for devices in device_counts:
      results[loss, impl, cs, devices] = measure(loss, impl, cs, devices, n, d, calls)
      temp, sec = results[loss, impl, cs, devices]
      print(f"  measured {loss:7s} {impl:10s} chunk={cs} D={devices}: "
            f"{temp / MiB:9.2f} MiB  {sec * 1e3:9.1f} ms", file=sys.stderr, flush=True)

  print("\n### Per-device temporary memory (MiB) and time per call (ms), forward + backward\n")
  print(f"local batch n = {n}, d = {d}, global batch N = n D; backend {jax.default_backend()}; "
        f"{'memory only' if not calls else f'mean of {calls} calls after warm-up'}\n")
  head = " | ".join(f"D={v} MiB" for v in device_counts)
  if calls:
    head += " | " + " | ".join(f"D={v} ms" for v in device_counts)
  lo, hi = (2, 8) if {2, 8} <= set(device_counts) else (device_counts[0], device_counts[-1])
  print(f"| loss | impl | chunk | {head} | mem D={hi} / D={lo} |")
  print("|" + "---|" * (4 + len(device_counts) * (2 if calls else 1)))
  ratios = {}
  for loss, impl, cs in configs:
    temps = [results[loss, impl, cs, v][0] for v in device_counts]
    cells = [f"{t / MiB:.2f}" for t in temps]
    if calls:
      cells += [f"{results[loss, impl, cs, v][1] * 1e3:.1f}" for v in device_counts]
    ratio = results[loss, impl, cs, hi][0] / max(results[loss, impl, cs, lo][0], 1)
    ratios[loss, impl, cs] = ratio
    print(f"| {loss} | {impl} | {cs or '-'} | {' | '.join(cells)} | {ratio:.2f} |")

  ok = True
  print("\n### Targets\n")
  if {2, 8} <= set(device_counts):
    for loss in ("sigmoid", "softmax"):
      for cs in (None, chunk):
        r = ratios[loss, "ring", cs]
        good = r <= 1.25
        ok &= good
        print(f"- {loss} ring (chunk {cs or '-'}): temp memory D=8 / D=2 = {r:.2f} "
              f"(target <= 1.25) {'OK' if good else 'MISSED'}; all_gather: "
              f"{ratios[loss, 'all_gather', None]:.2f}")
  if args.single_n:
    big = args.single_n
    for loss in ("sigmoid", "softmax"):
      full, _ = measure(loss, "ring", None, 1, big, d, 0)
      chunked, _ = measure(loss, "ring", big // 8, 1, big, d, 0)
      good = chunked < full / 4
      ok &= good
      print(f"- {loss}, one device, n = {big}: chunk {big // 8} uses {chunked / MiB:.1f} MiB vs "
            f"{full / MiB:.1f} MiB unchunked = {chunked / full:.3f}x (target < 0.25) "
            f"{'OK' if good else 'MISSED'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
