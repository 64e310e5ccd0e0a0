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

FLOPs come from XLA (`compiled.cost_analysis()["flops"]`, which counts one device's program;
times the devices, divided by the batch). XLA counts a while loop's body once, so a program with
loops (the ring loss) is undercounted (marked †). The model FLOPs per example used for MFU are
therefore taken from the all_gather variant without remat (compiled for that purpose if it is not
among the variants): forward, backward and optimizer update, summed over devices. With
`--peak_tflops` (the peak of ONE device; no default), MFU = model FLOP/s / (peak x devices).

  python benchmarks/train_throughput.py --steps 20
  python benchmarks/train_throughput.py --devices 8 --steps 20 --dtypes float32,bfloat16
  python benchmarks/train_throughput.py --config configs/demo/emoji_softmax.py \
      --config.batch_size=512 --remat off,on --peak_tflops 989
  python benchmarks/train_throughput.py --impls config --microbatch 0,64 --steps 20

`--devices N` uses the first N devices; on the CPU backend it first makes N simulated devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, set before the flags are parsed: parsing
--config imports jax, and the backend reads XLA_FLAGS when it starts). The CPU's
simulated devices share its cores, so their numbers show program costs, not scaling.
"""

from __future__ import annotations

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

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "demo", "emoji.py")

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
                           "Peak TFLOP/s of one device, for MFU (no default: MFU is n/a).")
_INTERLEAVE = flags.DEFINE_bool(
    "interleave", True, "Time the variants in turns, one step each, so that background load "
    "hits all alike (holds every variant's state at once); --nointerleave runs them one after "
    "another.")
_INSTANCE_IDS = flags.DEFINE_bool("instance_ids", False,
                                  "Add batch['instance_id'] (for multi_positive losses).")

IMPLS = ("ring", "all_gather", "config")
LOOP = re.compile(r"\bwhile\(")


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
  micro-batch size set."""
  config = ml_collections.ConfigDict(base.to_dict())
  if impl != "config" and not _set_impl(config.loss, impl):
    raise ConfigError(f"config.loss.name = {config.loss.name!r} has no sigmoid or softmax "
                      "objective whose impl could be set; use --impls=config")
  config.model.dtype = dtype
  config.model.remat = remat
  config.microbatch_size = microbatch_size
  return config


def random_batch(config: ml_collections.ConfigDict, rng: np.random.Generator,
                 with_ids: bool) -> dict[str, np.ndarray]:
  """A host batch of `config.batch_size` random examples with the model's input shapes.

  "vit" towers get float32 `[B, S, S, 3]` in [-1, 1] (S = config.data.image_size);
  "text_transformer" towers int32 `[B, context_length]` ids, padded with 0 after 2 to L tokens.
  """
  n = config.batch_size
  batch = {}
  for modality, tower in config.model.towers.items():
    if tower.name == "vit":
      size = config.data.image_size
      batch[modality] = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    elif tower.name == "text_transformer":
      length = tower.context_length
      tokens = rng.integers(1, tower.vocab_size, (n, length)).astype(np.int32)
      lengths = rng.integers(2, length + 1, n)
      tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0  # pad after each text
      batch[modality] = tokens
    else:
      raise ConfigError(f"config.model.towers.{modality}.name = {tower.name!r}: this benchmark "
                        "makes random inputs for 'vit' and 'text_transformer' towers only")
  if with_ids:
    batch["instance_id"] = np.arange(n, dtype=np.int32)
  return batch


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


class Variant:
  """One variant's trainer, state, pre-built global batches and compiled step."""

  def __init__(self, label: str, config: ml_collections.ConfigDict, devices: list[Any],
               with_ids: bool, seed: int = 0):
    import jax

    from clip_jax.training.trainer import Trainer

    self.label = label
    rng = np.random.default_rng(seed)
    local = [random_batch(config, rng, with_ids) for _ in range(max(1, _BATCHES.value))]
    trainer = Trainer(config, devices=devices, batch_spec={
        k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in local[0].items()})
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
    self.steps_run = 0

  def step(self, timed: bool) -> None:
    """Runs one training step to completion; records its wall time if `timed`."""
    import jax

    start = time.perf_counter()
    self.state, self.metrics = self.compiled(self.state,
                                             self.batches[self.steps_run % len(self.batches)])
    jax.block_until_ready((self.state, self.metrics))
    self.steps_run += 1
    if timed:
      self.times.append(time.perf_counter() - start)

  def finish(self) -> None:
    """Frees the state and batches; keeps the measurements."""
    import jax

    metrics = jax.device_get(self.metrics)
    self.loss, self.skipped = float(metrics["loss"]), int(metrics["skipped_steps"])
    self.median = statistics.median(self.times)
    del self.state, self.batches, self.compiled
    print(f"[{self.label}] compile {self.compile_s:.1f} s, median {self.median * 1e3:.1f} "
          f"ms/step, last loss {self.loss:.4f}, skipped steps {self.skipped}", file=sys.stderr,
          flush=True)


def measure(variants: list[tuple[str, ml_collections.ConfigDict]], devices: list[Any],
            with_ids: bool, warmup: int, steps: int, interleave: bool) -> list[Variant]:
  """Builds and times the (label, config) variants, in turns or one after another."""
  def make(label, config):
    print(f"[{label}] compiling ...", file=sys.stderr, flush=True)
    return Variant(label, config, devices, with_ids)

  if not interleave:
    done = []
    for label, config in variants:
      v = make(label, config)
      for i in range(warmup + steps):
        v.step(timed=i >= warmup)
      v.finish()
      done.append(v)
    return done
  built = [make(label, config) for label, config in variants]
  for i in range(warmup + steps):
    for v in built:
      v.step(timed=i >= warmup)
  for v in built:
    v.finish()
  return built


def _si(value: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g} "


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing off the console
  try:
    impls = _choices("impls", _IMPLS.value, IMPLS)
    dtypes = _choices("dtypes", _DTYPES.value, ("float32", "bfloat16"))
    remats = [v == "on" for v in _choices("remat", _REMAT.value, ("off", "on"))]
    if not _MICRO.value or not all(v.isdigit() for v in _MICRO.value):
      raise ConfigError(f"--microbatch={','.join(_MICRO.value)}: give sizes >= 0 (0: off)")
    if _STEPS.value < 1 or _WARMUP.value < 0:
      raise ConfigError("--steps must be >= 1 and --warmup >= 0")
    run(impls, dtypes, remats, [int(v) for v in _MICRO.value])
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)


def run(impls: list[str], dtypes: list[str], remats: list[bool], micros: list[int]) -> None:
  """Measures every (impl, dtype, remat, micro-batch) variant and prints the markdown table."""
  import jax
  from ml_collections import config_flags

  available = jax.devices()
  if _DEVICES.value > len(available):
    raise ConfigError(f"--devices={_DEVICES.value}, but {jax.default_backend()} has "
                      f"{len(available)} devices")
  devices = available[:_DEVICES.value or len(available)]
  base = _CONFIG.value
  specs = [(impl, dtype, remat, micro) for impl in impls for dtype in dtypes for remat in remats
           for micro in micros]
  label = lambda impl, dtype, remat, micro: (f"{impl} {dtype} remat={'on' if remat else 'off'} "
                                             f"micro={micro or 'off'}")
  rows = measure([(label(*spec), variant_config(base, *spec)) for spec in specs], devices,
                 _INSTANCE_IDS.value, _WARMUP.value, _STEPS.value, _INTERLEAVE.value)

  # Model FLOPs: from a loop-free program (all_gather loss) without remat's recomputation.
  reference = next((r for r, (impl, _, remat, _) in zip(rows, specs)
                    if impl == "all_gather" and not remat and not r.loops), None)
  if reference is None:
    print("compiling the all_gather float32 variant for the model FLOPs ...", file=sys.stderr,
          flush=True)
    reference = Variant("model FLOPs", variant_config(base, "all_gather", "float32", False),
                        devices, _INSTANCE_IDS.value)
  model_flops = None
  if reference.flops and not reference.loops:
    model_flops = reference.flops * len(devices) / reference.batch_size
  del reference

  path = config_flags.get_config_filename(flags.FLAGS["config"])
  batch_size = rows[0].batch_size
  base_speed = batch_size / rows[0].median
  print(f"\n### Training-step throughput: {os.path.relpath(path)}\n")
  print(f"backend {jax.default_backend()}, {len(devices)} device(s) "
        f"({devices[0].device_kind}), global batch {batch_size}; median of {_STEPS.value} "
        f"steps after {_WARMUP.value} warm-up, variants "
        f"{'in turns' if _INTERLEAVE.value else 'one after another'}; model FLOPs per example "
        f"(XLA, all_gather, fwd + bwd + optimizer, all devices): "
        f"{_si(model_flops) + 'FLOP' if model_flops else 'n/a'}; peak "
        f"{f'{_PEAK.value:g} TFLOP/s per device' if _PEAK.value else 'n/a'}\n")
  print("| loss impl | dtype | remat | micro-batch | compile s | ms/step | examples/s | vs first | "
        "temp MiB/device | XLA FLOP/example | MFU |")
  print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r, (impl, dtype, remat, micro) in zip(rows, specs):
    speed = r.batch_size / r.median
    flops = (f"{_si(r.flops * r.devices / r.batch_size)}{' †' if r.loops else ''}"
             if r.flops else "n/a")
    mfu = (f"{100 * model_flops * speed / (_PEAK.value * 1e12 * r.devices):.2f}%"
           if model_flops and _PEAK.value else "n/a")
    temp = f"{r.temp_bytes / 2**20:.1f}" if r.temp_bytes is not None else "n/a"
    print(f"| {impl} | {dtype} | {'on' if remat else 'off'} | {micro or 'off'} | "
          f"{r.compile_s:.1f} | "
          f"{r.median * 1e3:.1f} | {speed:,.0f} | {speed / base_speed:.2f}x | {temp} | {flops} | "
          f"{mfu} |")
  if any(r.loops for r in rows):
    print("\n† the program has while loops (the ring loss, micro-batches); XLA counts a loop "
          "body once, so this count is too low. MFU uses the model FLOPs above for every "
          "variant.")

if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
