"""Training-step throughput of the real trainer, for several variants of one config, side by side.

Builds `clip_jax.training.trainer.Trainer` from a config (default configs/demo/emoji.py) for every
variant: loss implementation (ring vs all_gather, overriding config.loss.impl), compute dtype
(float32 vs bfloat16), remat (off vs on) and micro-batching (config.microbatch_size: 0 = off,
else the global examples per micro-batch; the same global batch, the same result). Each
variant's train step is compiled ahead of time (`train_step.lower(state, batch).compile()`,
timed as "compile s") and then run on a few random global batches of the config's shapes built
beforehand (no data loading in the timed loop): `--warmup` steps, then `--steps` steps each
timed to completion. The table gives the median ms/step, examples/s, and examples/s relative to
the first variant.

XLA's FLOPs (`compiled.cost_analysis()["flops"]`, which counts one device's program; times
the devices, divided by the batch) are the cross-check column. XLA counts a while loop's body
once, so a program with loops (the ring loss) is undercounted (marked †); the header's XLA model
FLOPs therefore come from the all_gather variant without remat (compiled for that purpose if it
is not among the variants): forward, backward and optimizer update, summed over devices. The
"memory" column is the compiled step's temporaries (open_clip: CUDA's peak allocation).

  python benchmarks/train_throughput.py --steps 20
  python benchmarks/train_throughput.py --devices 8 --steps 20 --dtypes float32,bfloat16
  python benchmarks/train_throughput.py --config configs/demo/emoji_softmax.py \
      --config.batch_size=512 --remat off,on --peak_tflops 989
  python benchmarks/train_throughput.py --impls config --microbatch 0,64 --steps 20
  python benchmarks/train_throughput.py --config benchmarks/configs/demo_scale.py --devices 1 \
      --impls all_gather --open_clip eager,compile --steps 10

The open_clip peer (`--open_clip eager,compile`; default none): open_clip 3.3.0's CLIP on
PyTorch, the same architecture, initial weights (exported from the first clip_jax variant's
state), random batches, loss and AdamW settings (benchmarks/open_clip_peer.py), one row per mode
x dtype (float32, or amp_bf16 for bfloat16) x remat (grad checkpointing), timed in turns with
the clip_jax variants. It needs an open_clip-shaped config (`open_clip.Architecture`:
configs/paper/clip_vit_b32_laion400m.py, clip_vit_b16_laion400m.py,
benchmarks/configs/demo_scale.py). Both step-0 losses are printed: in float32 they agree (the
models, losses and weights are the same). "vs open_clip best" divides a row's examples/s by the
fastest open_clip row's. open_clip is imported when installed, else from --open_clip_wheel
with torchvision stood in for.

MFU uses the analytic model FLOPs (clip_jax.training.flops.model_flops_per_example: 3 x
forward, no remat recomputation; 44.3 GFLOP per example for ViT-B/32 at 224 px, 123.3 for
ViT-B/16) of each clip_jax row's trainer, and of the first clip_jax row for the open_clip rows
(the loss's B^2 term makes the count depend on the batch by a few kFLOP per example): MFU =
FLOPs per example x examples/s / (peak x devices), the peak of ONE device from --peak_tflops,
else `clip_jax.training.flops.PEAK_FLOPS_PER_DEVICE` by device kind (H100 SXM and H200: 989),
else n/a (a CPU).

`--batch_per_device N` sets config.batch_size = N x devices; `max` takes the largest that
fits: for each clip_jax variant, two compiles (64 and 128 per device) give its memory
(`memory_analysis()`: arguments + outputs - aliased + temporaries) as a line in the batch, solved
for 90 % of the device's memory (--memory_gib, else `memory_stats()['bytes_limit']`), rounded
down to a multiple of 8; a run that still runs out of memory backs off to 85 % (three tries).
open_clip starts at clip_jax's batch of the same dtype and remat and halves on
torch.OutOfMemoryError. With `max`, the variants run one after another (--nointerleave is
implied), open_clip first (PyTorch frees its cache after each), so each has the device to itself.

`--json PATH` writes every row's raw numbers with the versions (jax, jaxlib, torch, open_clip),
device kind and date. benchmarks/gpu_session.sh runs the GPU comparison (ViT-B/32 and B/16) in
one call.

`--devices N` uses the first N devices; on the CPU backend it first makes N simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, set before the flags are parsed: parsing
--config imports jax, and the backend reads XLA_FLAGS when it starts). The CPU's
simulated devices share its cores, so their numbers show program costs, not scaling.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import statistics
import sys
import time
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging

# jax's backend starts in run(), after _parse_flags has set XLA_FLAGS for --devices.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clip_jax.cli import define_config_flag, parse_flags_or_exit  # noqa: E402
from clip_jax.registry import ConfigError  # noqa: E402
from open_clip_peer import DEFAULT_WHEEL, random_batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "demo", "emoji.py")

_CONFIG = define_config_flag(f"Path to a get_config() file (default {DEFAULT_CONFIG}).")
_DEVICES = flags.DEFINE_integer("devices", 0, "Number of devices (0: all). On CPU, simulated.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per variant (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per variant after compiling.")
_BATCHES = flags.DEFINE_integer("batches", 2, "Random global batches built up front, cycled.")
_IMPLS = flags.DEFINE_list("impls", ["ring", "all_gather"],
                           "Loss implementations (config.loss.impl); 'config' keeps the file's.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes: float32, bfloat16.")
_REMAT = flags.DEFINE_list("remat", ["off"], "Remat settings: off, on.")
_MICRO = flags.DEFINE_list("microbatch", ["0"],
                           "config.microbatch_size values (global examples; 0: off).")
_PEAK = flags.DEFINE_float("peak_tflops", None,
                           "Peak TFLOP/s of one device, for MFU (default: the device kind's, "
                           "clip_jax.training.flops.PEAK_FLOPS_PER_DEVICE; n/a for a CPU).")
_INTERLEAVE = flags.DEFINE_bool(
    "interleave", True, "Time the variants in turns, one step each, so that background load "
    "hits all alike (holds every variant's state at once); --nointerleave runs them one after "
    "another.")
_INSTANCE_IDS = flags.DEFINE_bool("instance_ids", False,
                                  "Add batch['instance_id'] (for multi_positive losses).")
_OPEN_CLIP = flags.DEFINE_list("open_clip", ["none"],
                               "open_clip peer modes: eager, compile, or none.")
_OPEN_CLIP_WHEEL = flags.DEFINE_string(
    "open_clip_wheel", DEFAULT_WHEEL, "open_clip_torch wheel to import open_clip from when `import "
    "open_clip` fails (default $CLIP_JAX_OPEN_CLIP_WHEEL, else the newest "
    ".whl/open_clip_torch-*.whl).")
_BATCH = flags.DEFINE_string("batch_per_device", "",
                             "Per-device batch: N, or 'max' (the largest that fits); '' keeps "
                             "config.batch_size.")
_MEMORY_GIB = flags.DEFINE_float("memory_gib", None,
                                 "Device memory for --batch_per_device=max, instead of the "
                                 "device's bytes_limit (needed where the backend reports none: "
                                 "CPU).")
_JSON = flags.DEFINE_string("json", "", "Write the rows' raw numbers to this JSON file.")

IMPLS = ("ring", "all_gather", "config")
LOOP = re.compile(r"\bwhile\(")
# --batch_per_device=max: the per-device batches of the two probe compiles, the share of the
# device's memory to fill, and the back-off factor after an out-of-memory error.
PROBES = (64, 128)
FILL = 0.9
BACK_OFF = 0.85


def _simulate_devices(argv: list[str]) -> None:
  """Sets XLA_FLAGS for `--devices=N` (or `--devices N`) simulated CPU devices, N > 0."""
  for i, arg in enumerate(argv[1:], start=1):
    name, eq, value = arg.lstrip("-").partition("=")
    if name != "devices":
      continue
    value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    if value.isdigit() and int(value):
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={value}").strip()


def _parse_flags(argv: list[str]) -> list[str]:
  """The CLI parser, with configs/demo/emoji.py as the --config when none is given; `--devices`
  sets XLA_FLAGS first (parsing --config imports jax, whose backend reads XLA_FLAGS once)."""
  _simulate_devices(argv)
  if not any(a in ("--config", "-config") or a.startswith(("--config=", "-config="))
             for a in argv[1:]):
    argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
  return parse_flags_or_exit(argv)


def _choices(flag: str, values: list[str], allowed: tuple[str, ...]) -> list[str]:
  bad = [v for v in values if v not in allowed]
  if not values or bad:
    raise ConfigError(f"--{flag}={','.join(values)}: choose from {', '.join(allowed)}")
  return values


def _set_impl(loss_config: Any, impl: str) -> int:
  """Sets `impl` on every sigmoid/softmax objective in `loss_config`; returns how many.

  Switching to all_gather also clears `chunk_size` (it applies to the ring only).
  """
  if loss_config.get("name") in ("sigmoid", "softmax"):
    loss_config.impl = impl
    if impl == "all_gather" and loss_config.get("chunk_size"):
      loss_config.chunk_size = 0
    return 1
  count = 0
  for term in (loss_config.get("terms") or {}).values():  # composite
    count += _set_impl(term, impl)
  if loss_config.get("pair_loss") is not None:  # pairwise
    count += _set_impl(loss_config.pair_loss, impl)
  return count


def variant_config(base: ml_collections.ConfigDict, impl: str, dtype: str, remat: bool,
                   microbatch_size: int = 0) -> ml_collections.ConfigDict:
  """A copy of `base` with the loss impl ("config": unchanged), compute dtype, remat and
  micro-batch size set. Without remat, config.model.remat_policy (e.g. "dots", given with
  --config.model.remat_policy for the remat variants) goes back to its default, "full"."""
  config = ml_collections.ConfigDict(base.to_dict())
  if impl != "config" and not _set_impl(config.loss, impl):
    raise ConfigError(f"config.loss.name = {config.loss.name!r} has no sigmoid or softmax "
                      "objective whose impl could be set; use --impls=config")
  config.model.dtype = dtype
  config.model.remat = remat
  if not remat and "remat_policy" in config.model:
    config.model.remat_policy = "full"
  config.microbatch_size = microbatch_size
  return config


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _memory_bytes(compiled) -> int | None:
  """One device's memory for a compiled step: arguments + outputs - aliased + temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
          m.temp_size_in_bytes)


def _is_oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def host_batches(config: ml_collections.ConfigDict, with_ids: bool) -> list[dict[str, np.ndarray]]:
  """`--batches` random host batches of `config` (seed 0: every variant of a batch size gets
  the same ones)."""
  rng = np.random.default_rng(0)
  return [random_batch(config, rng, with_ids) for _ in range(max(1, _BATCHES.value))]


def _batch_spec(config: ml_collections.ConfigDict,
                with_ids: bool) -> dict[str, Any]:
  """ShapeDtypeStructs of `random_batch(config)`'s entries (global batch)."""
  import jax

  one = random_batch(with_batch(config, 1, 1), np.random.default_rng(0), with_ids)
  return {k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype)
          for k, v in one.items()}


def initial_params(config: ml_collections.ConfigDict, devices: list[Any],
                   with_ids: bool) -> dict[str, Any]:
  """The initial params {"model", "loss"} (numpy) of `config`'s trainer state: every variant's
  (they differ in dtype, remat, loss impl and batch only; the seed is the config's)."""
  import jax

  from clip_jax.training.trainer import Trainer

  trainer = Trainer(config, devices=devices, batch_spec=_batch_spec(config, with_ids))
  state = trainer.init_state()
  params = jax.device_get(state["params"])
  del state
  return params


def with_batch(config: ml_collections.ConfigDict, per_device: int,
               devices: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.batch_size = per_device * devices
  return config


class Variant:
  """One variant's trainer, state, pre-built global batches and compiled step."""

  def __init__(self, label: str, config: ml_collections.ConfigDict, devices: list[Any],
               with_ids: bool):
    import jax

    from clip_jax.training.flops import model_flops_per_example
    from clip_jax.training.trainer import Trainer

    self.label, self.kind = label, "clip_jax"
    local = host_batches(config, with_ids)
    trainer = Trainer(config, devices=devices, batch_spec={
        k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in local[0].items()})
    self.flops_per_example = model_flops_per_example(trainer)  # analytic, 3 x forward
    self.state = trainer.init_state()
    self.batches = [trainer.global_batch(b) for b in local]
    start = time.perf_counter()
    self.compiled = trainer.train_step.lower(self.state, self.batches[0]).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = _flops(self.compiled)  # one device's program
    self.loops = bool(LOOP.search(self.compiled.as_text()))
    self.temp_bytes = getattr(self.compiled.memory_analysis(), "temp_size_in_bytes", None)
    self.devices, self.batch_size = len(devices), trainer.config.batch_size
    self.times: list[float] = []
    self.metrics = None
    self.first_loss = None
    self.steps_run = 0

  def step(self, timed: bool) -> None:
    """Runs one training step to completion; records its wall time if `timed`."""
    import jax

    start = time.perf_counter()
    self.state, self.metrics = self.compiled(self.state,
                                             self.batches[self.steps_run % len(self.batches)])
    jax.block_until_ready((self.state, self.metrics))
    if timed:
      self.times.append(time.perf_counter() - start)
    if self.steps_run == 0:
      self.first_loss = float(jax.device_get(self.metrics["loss"]))
    self.steps_run += 1

  def finish(self) -> None:
    """Frees the state and batches; keeps the measurements."""
    import jax

    metrics = jax.device_get(self.metrics)
    self.loss, self.skipped = float(metrics["loss"]), int(metrics["skipped_steps"])
    self.median = statistics.median(self.times)
    del self.state, self.batches, self.compiled
    print(f"[{self.label}] compile {self.compile_s:.1f} s, median {self.median * 1e3:.1f} "
          f"ms/step, first loss {self.first_loss:.6f}, last loss {self.loss:.4f}, skipped steps "
          f"{self.skipped}", file=sys.stderr, flush=True)


def max_batch_per_device(config: ml_collections.ConfigDict, devices: list[Any], with_ids: bool,
                         memory_bytes: float) -> int:
  """The per-device batch whose compiled step fills `FILL` of `memory_bytes`, from two probe
  compiles (`PROBES`) whose memory is taken as linear in the batch; a multiple of 8, >= 8.

  Raises:
    ConfigError: the backend gives no memory analysis.
  """
  import jax

  from clip_jax.training.trainer import Trainer

  used = []
  for per_device in PROBES:
    probe = with_batch(config, per_device, len(devices))
    trainer = Trainer(probe, devices=devices, batch_spec=_batch_spec(probe, with_ids))
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding)
             for k, v in trainer.batch_spec.items() if k in trainer.batch_keys}
    compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
    used.append(_memory_bytes(compiled))
    if used[-1] is None:
      raise ConfigError("--batch_per_device=max: this backend gives no memory analysis of the "
                        "compiled step; give a number")
  slope = (used[1] - used[0]) / (PROBES[1] - PROBES[0])
  fixed = used[0] - slope * PROBES[0]
  best = int((FILL * memory_bytes - fixed) / slope) if slope > 0 else PROBES[1]
  print(f"memory per device: {fixed / 2**20:.1f} MiB + {slope / 2**20:.3f} MiB x batch; "
        f"{best} fits {FILL:.0%} of {memory_bytes / 2**20:,.1f} MiB", file=sys.stderr, flush=True)
  return max(8, best // 8 * 8)


def build_clip_jax(label: str, config: ml_collections.ConfigDict, devices: list[Any],
                   with_ids: bool, per_device: int | None, memory_bytes: float | None) -> Variant:
  """The Variant at `per_device` (None: the config's batch; with `memory_bytes`, the start of
  the search for the largest batch). In the search, a compiled step whose memory analysis
  exceeds `FILL` of `memory_bytes` (the probes' line misses what grows faster than the batch,
  e.g. the all_gather loss's B^2 similarities) is rebuilt at the batch scaled by the excess, and
  an out-of-memory error backs off by `BACK_OFF`; three tries."""
  for attempt in range(3 if memory_bytes else 1):
    batched = config if per_device is None else with_batch(config, per_device, len(devices))
    print(f"[{label}] compiling (global batch {batched.batch_size}) ...", file=sys.stderr,
          flush=True)
    try:
      variant = Variant(label, batched, devices, with_ids)
      used = _memory_bytes(variant.compiled) if memory_bytes else None
      if used and used > FILL * memory_bytes and attempt < 2:
        smaller = max(8, int(per_device * FILL * memory_bytes / used) // 8 * 8)
        print(f"[{label}] {used / 2**20:,.1f} MiB per device at {per_device} exceeds "
              f"{FILL:.0%} of {memory_bytes / 2**20:,.1f} MiB; trying {smaller}",
              file=sys.stderr, flush=True)
        per_device = smaller
        del variant
        continue
      if memory_bytes:
        variant.step(timed=False)  # an out-of-memory error shows here, not in the timed loop
      return variant
    except Exception as e:  # noqa: BLE001  (XLA's runtime error type varies by version)
      if not (memory_bytes and _is_oom(e) and attempt < 2):
        raise
      per_device = max(8, int(per_device * BACK_OFF) // 8 * 8)
      print(f"[{label}] out of memory; backing off to {per_device} per device", file=sys.stderr,
            flush=True)
  raise AssertionError("unreachable")


def build_open_clip(label: str, open_clip: Any, config: ml_collections.ConfigDict,
                    params: dict[str, Any], with_ids: bool, per_device: int | None,
                    search: bool, **kwargs: Any):
  """The open_clip peer (one device) at `per_device` (None: the config's batch); with `search`,
  halves the batch on torch.OutOfMemoryError (its first step runs here)."""
  import torch

  from open_clip_peer import OpenClipVariant

  while True:
    batched = config if per_device is None else with_batch(config, per_device, 1)
    try:
      peer = OpenClipVariant(label, open_clip, batched, params, host_batches(batched, with_ids),
                             **kwargs)
      if search:
        peer.step(timed=False)
      return peer
    except torch.OutOfMemoryError:
      if not search or per_device <= 8:
        raise
    peer = None  # its tensors go, and the error's frames went with the except block
    torch.cuda.empty_cache()
    per_device //= 2
    print(f"[{label}] out of memory; halving to {per_device}", file=sys.stderr, flush=True)


def _run(variants: list[Any], warmup: int, steps: int, interleave: bool) -> None:
  """Times `variants` (each with step/finish), in turns or one after another."""
  if interleave:
    for i in range(warmup + steps):
      for v in variants:
        v.step(timed=i >= warmup)
  else:
    for v in variants:
      for i in range(warmup + steps):
        v.step(timed=i >= warmup)
      v.finish()
    return
  for v in variants:
    v.finish()


def measure(variants: list[tuple[str, ml_collections.ConfigDict]], devices: list[Any],
            with_ids: bool, warmup: int, steps: int, interleave: bool,
            peers: list[tuple[str, dict[str, Any], str, bool]] = (), open_clip: Any = None,
            per_device: int | str | None = None, memory_bytes: float | None = None) -> list[Any]:
  """Builds and times the (label, config) clip_jax variants and the open_clip peers (label,
  OpenClipVariant keywords, the clip_jax dtype and remat they match, per `peers`), in turns or
  one after another; the clip_jax rows first.

  `per_device`: None (the configs' batches), a number, or "max" (then `memory_bytes` is one
  device's memory, and everything runs one after another, open_clip first).
  """
  search = per_device == "max"
  sizes = {label: (max_batch_per_device(config, devices, with_ids, memory_bytes) if search
                   else per_device) for label, config in variants}
  params = initial_params(variants[0][1], devices, with_ids) if peers else None

  def peer(label, kwargs, dtype, remat):
    start = per_device
    if search:  # clip_jax's batch of the same dtype and remat
      start = next((sizes[l] for l, c in variants
                    if c.model.dtype == dtype and c.model.remat == remat), max(sizes.values()))
    return build_open_clip(label, open_clip, variants[0][1], params, with_ids, start, search,
                           **kwargs)

  def clip_jax(label, config):
    return build_clip_jax(label, config, devices, with_ids, sizes[label],
                          memory_bytes if search else None)

  if interleave and not search:
    built = [clip_jax(*v) for v in variants] + [peer(*p) for p in peers]
    _run(built, warmup, steps, True)
    return built
  done = {}
  # With `search`, open_clip first: PyTorch frees its cache after each, JAX keeps its pool.
  order = [("clip_jax", variants), ("open_clip", peers)]
  for kind, items in (order[::-1] if search else order):
    done[kind] = []
    for item in items:
      v = clip_jax(*item) if kind == "clip_jax" else peer(*item)
      _run([v], warmup, steps, False)
      done[kind].append(v)
  return done["clip_jax"] + done["open_clip"]


def _si(value: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g} "


def _per_device(value: str) -> int | str | None:
  if value in ("", "max"):
    return value or None
  if not value.isdigit() or int(value) < 1:
    raise ConfigError(f"--batch_per_device={value}: give a number >= 1, 'max', or '' (the "
                      "config's batch)")
  return int(value)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing off the console
  try:
    impls = _choices("impls", _IMPLS.value, IMPLS)
    dtypes = _choices("dtypes", _DTYPES.value, ("float32", "bfloat16"))
    remats = [v == "on" for v in _choices("remat", _REMAT.value, ("off", "on"))]
    modes = [m for m in _choices("open_clip", _OPEN_CLIP.value, ("eager", "compile", "none"))
             if m != "none"]
    if not _MICRO.value or not all(v.isdigit() for v in _MICRO.value):
      raise ConfigError(f"--microbatch={','.join(_MICRO.value)}: give sizes >= 0 (0: off)")
    if _STEPS.value < 1 or _WARMUP.value < 0:
      raise ConfigError("--steps must be >= 1 and --warmup >= 0")
    with contextlib.ExitStack() as stack:
      run(impls, dtypes, remats, [int(v) for v in _MICRO.value], modes,
          _per_device(_BATCH.value), stack)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


def _versions(open_clip: Any) -> dict[str, str]:
  import jax
  import jaxlib

  versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
  if open_clip is not None:
    import torch
    versions.update(torch=torch.__version__, open_clip=open_clip.__version__,
                    cuda_torch=str(torch.version.cuda))
  return versions


def run(impls: list[str], dtypes: list[str], remats: list[bool], micros: list[int],
        modes: list[str], per_device: int | str | None, stack: contextlib.ExitStack) -> None:
  """Measures every (impl, dtype, remat, micro-batch) variant and the open_clip `modes` (x dtype
  x remat), and prints the markdown table (and writes --json)."""
  import jax
  from ml_collections import config_flags

  from clip_jax.training.flops import peak_flops_per_device

  available = jax.devices()
  if _DEVICES.value > len(available):
    raise ConfigError(f"--devices={_DEVICES.value}, but {jax.default_backend()} has "
                      f"{len(available)} devices")
  devices = available[:_DEVICES.value or len(available)]
  base = _CONFIG.value
  memory_bytes = None
  if per_device == "max":
    stats = None
    try:
      stats = devices[0].memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats raise their own types)
      pass
    memory_bytes = (_MEMORY_GIB.value * 2**30 if _MEMORY_GIB.value else
                    (stats or {}).get("bytes_limit"))
    if not memory_bytes:
      raise ConfigError(f"--batch_per_device=max: {devices[0].device_kind} does not report its "
                        "memory; give --memory_gib")
  open_clip = None
  peers = []
  if modes:
    from open_clip_peer import PRECISIONS, architecture_of, load_open_clip

    architecture_of(base)  # the config error before any compile
    open_clip = load_open_clip(_OPEN_CLIP_WHEEL.value, stack)
    peers = [(f"{mode} {PRECISIONS[dtype]} ckpt={'on' if remat else 'off'}",
              dict(mode=mode, precision=PRECISIONS[dtype], grad_checkpointing=remat), dtype,
              remat) for mode in modes for dtype in dtypes for remat in remats]
  specs = [(impl, dtype, remat, micro) for impl in impls for dtype in dtypes for remat in remats
           for micro in micros]
  label = lambda impl, dtype, remat, micro: (f"{impl} {dtype} remat={'on' if remat else 'off'} "
                                             f"micro={micro or 'off'}")
  interleave = _INTERLEAVE.value and per_device != "max"
  rows = measure([(label(*spec), variant_config(base, *spec)) for spec in specs], devices,
                 _INSTANCE_IDS.value, _WARMUP.value, _STEPS.value, interleave,
                 [(f"open_clip {l}", *rest) for l, *rest in peers], open_clip, per_device,
                 memory_bytes)
  jax_rows, peer_rows = rows[:len(specs)], rows[len(specs):]

  # XLA's model FLOPs: from a loop-free program (all_gather loss) without remat's recomputation.
  reference = next((r for r, (impl, _, remat, _) in zip(jax_rows, specs)
                    if impl == "all_gather" and not remat and not r.loops), None)
  if reference is None:
    print("compiling the all_gather float32 variant for XLA's model FLOPs ...", file=sys.stderr,
          flush=True)
    reference = Variant("model FLOPs", variant_config(
        with_batch(base, jax_rows[0].batch_size // len(devices), len(devices)), "all_gather",
        "float32", False, 0), devices, _INSTANCE_IDS.value)
  xla_flops = None
  if reference.flops and not reference.loops:
    xla_flops = reference.flops * len(devices) / reference.batch_size
  del reference
  peak = _PEAK.value
  if not peak:
    known = peak_flops_per_device(devices[0], ml_collections.ConfigDict(
        dict(peak_tflops_per_device=0.0)))
    peak = known / 1e12 if known else None

  path = config_flags.get_config_filename(flags.FLAGS["config"])
  base_speed = jax_rows[0].batch_size / jax_rows[0].median
  best_peer = max((r.batch_size / r.median for r in peer_rows), default=None)
  batch_size = jax_rows[0].batch_size
  print(f"\n### Training-step throughput: {os.path.relpath(path)}\n")
  print(f"backend {jax.default_backend()}, {len(devices)} device(s) "
        f"({devices[0].device_kind}), global batch "
        f"{'max per variant' if per_device == 'max' else batch_size}; median of {_STEPS.value} "
        f"steps after {_WARMUP.value} warm-up, variants "
        f"{'in turns' if interleave else 'one after another'}; model FLOPs per example "
        f"(analytic, 3 x forward): {_si(jax_rows[0].flops_per_example)}FLOP; XLA "
        f"(all_gather, fwd + bwd + optimizer, all devices): "
        f"{_si(xla_flops) + 'FLOP' if xla_flops else 'n/a'}; peak "
        f"{f'{peak:g} TFLOP/s per device' if peak else 'n/a'}\n")
  print("| loss impl / peer | dtype | remat | micro-batch | batch/device | compile s | ms/step | "
        "examples/s | vs first | vs open_clip best | memory MiB/device | XLA FLOP/example | "
        "MFU |")
  print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  records = []
  described = [(r, impl, dtype, remat, micro) for r, (impl, dtype, remat, micro)
               in zip(jax_rows, specs)]
  described += [(r, f"open_clip {kwargs['mode']}", kwargs["precision"],
                 kwargs["grad_checkpointing"], 0) for r, (_, kwargs, _, _) in zip(peer_rows, peers)]
  for r, name, dtype, remat, micro in described:
    speed = r.batch_size / r.median
    per_example = (r if r.kind == "clip_jax" else jax_rows[0]).flops_per_example
    mfu = per_example * speed / (peak * 1e12 * r.devices) if peak else None
    if r.kind == "clip_jax":
      memory = r.temp_bytes
      xla = r.flops * r.devices / r.batch_size if r.flops else None
      cells_xla = f"{_si(xla)}{' †' if r.loops else ''}" if xla else "n/a"
    else:
      memory, xla, cells_xla = r.peak_bytes, None, "-"
    records.append(dict(
        variant=name, framework=r.kind, dtype=dtype, remat=bool(remat), microbatch=micro,
        devices=r.devices, global_batch=r.batch_size, batch_per_device=r.batch_size // r.devices,
        compile_s=r.compile_s, step_ms=[t * 1e3 for t in r.times], median_ms=r.median * 1e3,
        examples_per_s=speed, examples_per_s_per_device=speed / r.devices,
        vs_open_clip_best=speed / best_peer if best_peer else None,
        memory_bytes_per_device=memory, xla_flops_per_example=xla,
        analytic_flops_per_example=per_example, mfu=mfu, first_loss=r.first_loss,
        last_loss=r.loss))
    print(f"| {name} | {dtype} | {'on' if remat else 'off'} | {micro or 'off'} | "
          f"{r.batch_size // r.devices} | "
          f"{f'{r.compile_s:.1f}' if r.compile_s is not None else '-'} | {r.median * 1e3:.1f} | "
          f"{speed:,.0f} | {speed / base_speed:.2f}x | "
          f"{f'{speed / best_peer:.2f}x' if best_peer else '-'} | "
          f"{f'{memory / 2**20:.1f}' if memory is not None else 'n/a'} | {cells_xla} | "
          f"{f'{100 * mfu:.2f}%' if mfu is not None else 'n/a'} |")
  if any(r.kind == "clip_jax" and r.loops for r in jax_rows):
    print("\n† the program has while loops (the ring loss, micro-batches); XLA counts a loop "
          "body once, so this count is too low.")
  if peer_rows:
    print("\nmemory: clip_jax's compiled temporaries; open_clip's peak CUDA allocation (n/a on "
          "the CPU). compile s: open_clip compile's first step.")
    print(f"\nstep-0 loss: clip_jax {jax_rows[0].first_loss:.6f}, open_clip "
          f"{peer_rows[0].first_loss:.6f} (same weights and batch: equal in float32)")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dict(config=os.path.relpath(path), date=datetime.datetime.now(
          datetime.timezone.utc).isoformat(timespec="seconds"), backend=jax.default_backend(),
          device_kind=devices[0].device_kind, devices=len(devices), steps=_STEPS.value,
          warmup=_WARMUP.value, interleaved=interleave, peak_tflops=peak,
          versions=_versions(open_clip), rows=records), f, indent=1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
