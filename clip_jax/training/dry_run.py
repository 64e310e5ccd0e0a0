"""Dry run: what a config builds, costs and needs per device, without weights, data or a workdir.

    python -m clip_jax.train --config configs/paper/clip_vit_b32_laion400m.py --dry_run \\
        [--target=v4-256 | --target=8xH100 | ...]

The model, optimizer and train state are built abstractly (`jax.eval_shape`: shapes only, no
weights allocated), no data is read and nothing is written. The train step is lowered
(`jax.jit(...).lower`) with the batch and state as ShapeDtypeStructs carrying their
NamedShardings, on the current devices or, with a target, on that many simulated CPU devices
(`--xla_force_host_platform_device_count`, set before JAX starts: the CLI re-executes itself with
it). Up to `MAX_SIMULATED_DEVICES`; a larger target gets the analytic per-device analysis only.
The lowered step is compiled when that is affordable (`compile=None`: at most
`AUTO_COMPILE_DEVICES` devices and `AUTO_COMPILE_PARAMS` parameters).

The report (`Report.text`):

* `total_params=<int>` (model and objective parameters; a softmax loss's scale counts 1) and the
  parameters of each tower (its encoder and projection);
* FLOPs per step: XLA's `cost_analysis()` of the lowered step (the whole program; the loss's
  shard_map body is counted for one shard) and, when compiled, of the compiled per-device
  program; and the analytic count (`clip_jax.training.flops.analytic_flops`: its module
  docstring gives the formula);
* per device: parameters, optimizer state and gradients (float32, each sharded as the
  `config.sharding_rules` give: shard shapes from the PartitionSpecs) and activations: the
  compiled program's temporaries (`memory_analysis()`, which also hold the gradients) when
  compiled, else `analytic_activation_bytes` (Korthikanti et al. 2022's per-layer count for the
  stored activations of a transformer block, e x b x T x (17 D + 2.5 H T) bytes with e bytes per
  element of the compute dtype, b the per-device batch (micro-batch), H the heads; with remat
  only each block's input, e x b x T x D, plus one block's full set; plus 12 x b x B bytes for
  the loss's similarities);
* the largest arrays of the train state with their PartitionSpec;
* the config's problems: validation errors (the mesh does not cover the devices, a batch not
  divisible by the batch shards or the processes, ...) and a per-device estimate above the
  target's memory (`TARGETS`). `Report.ok` is False when there is one (the CLI exits 1).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh, PartitionSpec as P

from clip_jax import config as config_lib
from clip_jax import mesh as mesh_lib
from clip_jax.data import train_batch_spec
from clip_jax.losses.registry import make_objective
from clip_jax.models import parse_model_config
from clip_jax.registry import ConfigError
from clip_jax.sharding import param_partition_specs
from clip_jax.training import state as state_lib
from clip_jax.training.flops import analytic_flops, tower_shapes
from clip_jax.training.trainer import Trainer, make_optimization
from clip_jax.tree_paths import path_to_str

GIB = 2**30
# Simulating more CPU devices than this is too slow to be useful; larger targets are analysed
# analytically (shard shapes from the PartitionSpecs).
MAX_SIMULATED_DEVICES = 512
# compile=None compiles the lowered step up to this many devices and parameters.
AUTO_COMPILE_DEVICES = 64
AUTO_COMPILE_PARAMS = 50_000_000
# The environment variable the CLI sets when it re-executes itself with simulated devices.
SIMULATED_ENV = "CLIP_JAX_DRY_RUN_DEVICES"


@dataclasses.dataclass(frozen=True)
class Target:
  """A topology to check a config against.

  Attributes:
    name: as given, e.g. "v4-256". kind: the accelerator, e.g. "TPU v4".
    num_devices: JAX devices (TPU chips, GPUs). processes: hosts, one JAX process each.
    memory_gib: memory per device.
  """

  name: str
  kind: str
  num_devices: int
  processes: int
  memory_gib: float


# (pattern, kind, devices from the number in the name, devices per host, GiB per device). TPU
# names follow Cloud TPU's: v4-N and v5p-N count TensorCores (2 per chip, one JAX device per
# chip), v5litepod-N / v5e-N count chips. GPU names are "<count>x<GPU>".
TARGETS: tuple[tuple[str, str, Any, int, float], ...] = (
    (r"v4-(\d+)", "TPU v4", lambda n: n // 2, 4, 32.0),
    (r"v5p-(\d+)", "TPU v5p", lambda n: n // 2, 4, 95.0),
    (r"v5(?:e|litepod)-(\d+)", "TPU v5e", lambda n: n, 4, 16.0),
    (r"(\d+)xH100", "NVIDIA H100 80GB", lambda n: n, 8, 80.0),
    (r"(\d+)xA100(?:-80)?", "NVIDIA A100 80GB", lambda n: n, 8, 80.0),
    (r"(\d+)xA100-40", "NVIDIA A100 40GB", lambda n: n, 8, 40.0),
)


def parse_target(name: str) -> Target:
  """The `Target` named `name` ("v4-256", "v5p-128", "v5litepod-16", "8xH100", "64xA100-40").

  Raises:
    ConfigError naming --target and the known forms.
  """
  for pattern, kind, devices, per_host, memory in TARGETS:
    match = re.fullmatch(pattern, name)
    if match and devices(int(match.group(1))) > 0:
      n = devices(int(match.group(1)))
      return Target(name, kind, n, max(1, n // per_host), memory)
  raise ConfigError(f"--target={name!r} is not a known topology; use e.g. v4-256, v5p-128, "
                    "v5litepod-16, 8xH100, 16xA100-80, 8xA100-40")


def simulation_env(target: Target) -> dict[str, str] | None:
  """The environment that makes JAX start with `target.num_devices` CPU devices, or None when
  the target is too large to simulate (`MAX_SIMULATED_DEVICES`)."""
  if target.num_devices > MAX_SIMULATED_DEVICES:
    return None
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count="
                       f"{target.num_devices}".strip(),
          "JAX_PLATFORMS": "cpu", SIMULATED_ENV: str(target.num_devices)}


@dataclasses.dataclass
class Report:
  """What `dry_run` found. `lines` is the report's text, `problems` the config's problems."""

  total_params: int = 0
  tower_params: dict[str, int] = dataclasses.field(default_factory=dict)
  flops_xla: float | None = None
  flops_analytic: float | None = None
  memory_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
  lines: list[str] = dataclasses.field(default_factory=list)
  problems: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.problems

  def text(self) -> str:
    problems = [f"problem: {p}" for p in self.problems] or ["problems: none"]
    return "\n".join(self.lines + problems)


def _count(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shard_bytes(leaf: Any, spec: P, axis_sizes: dict[str, int]) -> int:
  """Bytes of one device's shard of `leaf` laid out as `spec`."""
  shape = list(leaf.shape)
  for dim, axes in enumerate(spec):
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None:
        shape[dim] = -(-shape[dim] // axis_sizes[axis])
  return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def _plural(n: int, noun: str) -> str:
  """"1 process", "8 devices"."""
  return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _device_memory_gib(device: jax.Device) -> float | None:
  """The memory JAX may use on `device` (its `memory_stats()` bytes_limit), None where the
  backend does not say (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001  (backends without memory stats raise their own types)
    return None
  return stats["bytes_limit"] / GIB if stats and "bytes_limit" in stats else None


def analytic_activation_bytes(shapes: dict[str, dict[str, Any]], local_batch: int,
                              global_batch: int) -> int:
  """Stored activations per device (see the module docstring)."""
  total = 12 * local_batch * global_batch
  for s in shapes.values():
    b, t, d, e = local_batch, s["tokens"], s["width"], s["bytes"]
    layer = e * b * t * (17 * d + 2.5 * s["heads"] * t)
    total += (s["depth"] * e * b * t * d + layer) if s["remat"] else s["depth"] * layer
  return int(total)


def _cudnn_as_xla(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict,
                                                                 list[str]]:
  """`config` with every `attention_impl = "cudnn"` (config.model's and the towers') set to
  "xla" when JAX's backend is not a GPU (the model would not build: see
  `clip_jax.models.model.TowerSpec.build`), and the fields changed; else `config` unchanged."""
  if jax.default_backend() == "gpu":
    return config, []
  config = ml_collections.ConfigDict(config.to_dict())
  changed = []
  for field, fields in [("config.model", config.model)] + [
      (f"config.model.towers.{m}", t) for m, t in config.model.towers.items()]:
    if fields.get("attention_impl") == "cudnn":
      fields.attention_impl = "xla"
      changed.append(f"{field}.attention_impl")
  return config, changed


def dry_run(config: ml_collections.ConfigDict, *, target: Target | None = None,
            devices: Sequence[jax.Device] | None = None,
            compile: bool | None = None) -> Report:  # noqa: A002  (the JAX method's name)
  """Builds `config`'s model and train step abstractly and reports on them (module docstring).

  Args:
    config: a training config (optional fields are filled in).
    target: the topology to check against; None: the current devices. The step is lowered on
      `devices` when they are as many as the target's, else only the analytic analysis runs.
    devices: the devices to lower on (default: all of JAX's).
    compile: compile the lowered step (memory_analysis, per-device cost); None: when
      affordable (`AUTO_COMPILE_DEVICES`, `AUTO_COMPILE_PARAMS`).

  Returns:
    The `Report`; its `problems` hold the config's problems instead of raising them.
  """
  report = Report()
  out = report.lines.append
  config = config_lib.with_defaults(config)
  config, cudnn = _cudnn_as_xla(config)
  if cudnn:
    out(f"attention_impl 'cudnn' ({', '.join(cudnn)}) lowered as 'xla' here ("
        f"{jax.default_backend()} backend; cuDNN needs a GPU): the FLOPs are the same, the "
        "activation memory counts the attention probabilities [B, H, L, S] that cuDNN's fused "
        "kernel does not store (an overestimate)")
  devices = list(devices) if devices is not None else jax.devices()
  num_devices = target.num_devices if target else len(devices)
  processes = target.processes if target else jax.process_count()
  memory_gib = target.memory_gib if target else _device_memory_gib(devices[0])
  where = (f"target {target.name} ({target.kind}, {_plural(num_devices, 'device')}, "
           f"{_plural(processes, 'process')}, {memory_gib:g} GiB each)" if target else
           f"{_plural(num_devices, devices[0].device_kind + ' device')}" +
           (f", {memory_gib:.1f} GiB each" if memory_gib else
            " (memory not known: no per-device limit is checked; give --target to check "
            "against one)"))
  out(f"dry run: {where}")
  try:
    config_lib.validate_config(config, num_devices=num_devices, process_count=processes)
  except ConfigError as e:
    report.problems.append(str(e))
  simulate = target is None or len(devices) == num_devices
  trainer = None
  try:
    if simulate and not report.problems:
      trainer = Trainer(config, devices=devices)  # what training would build, on these devices
      batch_spec, model_spec = trainer.batch_spec, trainer.model_spec
      frozen, abstract = trainer.frozen, trainer.abstract_state
    else:
      batch_spec = train_batch_spec(config)
      model_spec = parse_model_config(config.model)
      sample = state_lib.sample_inputs(batch_spec, tuple(model_spec.towers))
      optimization = make_optimization(
          config, state_lib.make_model_init_fn(model_spec, sample),
          make_objective(config.loss, axis_name=tuple(config.batch_axes)))
      frozen = optimization.frozen
      # The state's layout without building the model again: its params are given, as zeros
      # made inside eval_shape (traced: nothing allocated, whatever the model's size).
      given = lambda _: jax.tree.map(  # noqa: E731
          lambda a: jnp.zeros(a.shape, a.dtype), optimization.abstract_params)
      abstract = jax.eval_shape(state_lib.make_state_fn(given, optimization.tx,
                                                        config.seed))
  except ConfigError as e:
    if str(e) not in report.problems:
      report.problems.append(str(e))
    return report

  params = abstract["params"]
  report.total_params = _count(params)
  out(f"total_params={report.total_params}")
  for modality in model_spec.towers:
    report.tower_params[modality] = _count(params["model"][modality])
    out(f"params[{modality}]={report.tower_params[modality]}")
  out(f"params[loss]={_count(params['loss'])}")

  shapes = tower_shapes(config, model_spec, params["model"], frozen["model"], batch_spec)
  report.flops_analytic = analytic_flops(shapes, config.batch_size, model_spec.embed_dim)
  out(f"flops_per_step_analytic={report.flops_analytic:.4g}")

  try:
    names, sizes = mesh_lib.parse_mesh_shape(config.mesh, num_devices)
  except ConfigError:  # already a problem
    out("no per-device analysis: config.mesh does not fit the devices (see the problem below)")
    return report
  axis_sizes = dict(zip(names, sizes))
  out(f"mesh={axis_sizes}")
  try:
    specs = param_partition_specs(abstract, config.sharding_rules,
                                  AbstractMesh(tuple(sizes), tuple(names)))
  except ConfigError as e:
    report.problems.append(str(e))
    return report
  flat = [(path_to_str(p), leaf, spec) for (p, leaf), spec in zip(
      jax.tree_util.tree_flatten_with_path(abstract)[0],
      jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))]
  per_device = {part: sum(_shard_bytes(leaf, spec, axis_sizes) for name, leaf, spec in flat
                          if name.startswith(part + "/")) for part in ("params", "opt_state")}
  per_device["gradients"] = per_device["params"]
  shards = math.prod(axis_sizes.get(a, 1) for a in config.batch_axes)
  local_batch = max(1, (config.microbatch_size or config.batch_size) // shards)
  out(f"global batch {config.batch_size}, {_plural(shards, 'batch shard')}, local batch "
      f"{config.batch_size // shards}" + (f", micro-batch {config.microbatch_size} "
                                          f"({local_batch} per shard)"
                                          if config.microbatch_size else ""))
  per_device["activations"] = analytic_activation_bytes(shapes, local_batch, config.batch_size)
  activations_from = "analytic"

  largest = sorted(flat, key=lambda x: -math.prod(x[1].shape) * np.dtype(x[1].dtype).itemsize)
  out("largest arrays (global shape, PartitionSpec):")
  for name, leaf, spec in largest[:5]:
    out(f"  {name} {tuple(leaf.shape)} {leaf.dtype} {spec}")

  if simulate and trainer is None:
    out("not lowered: the config has problems (below); the per-device figures are analytic")
  if not simulate:
    out(f"not lowered: the target's {num_devices} devices are not simulated here "
        f"({len(devices)} devices; at most {MAX_SIMULATED_DEVICES} are simulated); the "
        "per-device figures are analytic")
  elif trainer is not None:
    batch = {k: jax.ShapeDtypeStruct(trainer.batch_spec[k].shape, trainer.batch_spec[k].dtype,
                                     sharding=trainer.batch_sharding)
             for k in trainer.batch_keys}
    lowered = trainer.train_step.lower(trainer.abstract_state, batch)
    cost = lowered.cost_analysis() or {}
    report.flops_xla = cost.get("flops")
    if report.flops_xla is not None:
      out(f"flops_per_step_xla={report.flops_xla:.4g} (lowered program, "
          f"analytic/xla={report.flops_analytic / max(report.flops_xla, 1):.3f})")
    if compile is None:
      compile = num_devices <= AUTO_COMPILE_DEVICES and report.total_params <= AUTO_COMPILE_PARAMS
    if compile:
      compiled = lowered.compile()
      device_cost = compiled.cost_analysis() or {}
      if "flops" in device_cost:
        out(f"flops_per_step_per_device_xla={device_cost['flops']:.4g} (compiled)")
      memory = compiled.memory_analysis()
      if memory is not None:
        per_device["activations"] = int(memory.temp_size_in_bytes)
        per_device["gradients"] = 0  # among the compiled program's temporaries
        activations_from = "compiled memory_analysis temporaries, gradients included"
  report.memory_bytes = per_device
  total = sum(per_device.values())
  out("per device: " + ", ".join(f"{k} {_gib(v)}" for k, v in per_device.items()) +
      f" (activations: {activations_from}); total {_gib(total)}")
  if memory_gib is not None and total > memory_gib * GIB:
    kind = target.kind if target else devices[0].device_kind
    report.problems.append(
        f"the per-device estimate {_gib(total)} exceeds the {memory_gib:g} GiB of one {kind}; "
        "shard more (config.mesh fsdp, config.sharding_rules), set config.model.remat = True, "
        "or set config.microbatch_size")
  return report


def main(config: ml_collections.ConfigDict, target_name: str | None,
         compile: bool | None) -> int:  # noqa: A002
  """The `--dry_run` of `clip_jax.train`: prints the report; returns the exit status (1 when the
  config has problems). With a target that can be simulated and is not yet, it first
  re-executes the command with that many CPU devices (`simulation_env`): JAX fixes its device
  count when it starts.

  Raises:
    ConfigError: an unknown target name.
  """
  target = parse_target(target_name) if target_name else None
  env = simulation_env(target) if target else None
  if env is not None and os.environ.get(SIMULATED_ENV) != env[SIMULATED_ENV]:
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "clip_jax.train", *sys.argv[1:]],
              {**os.environ, **env})
  devices = jax.devices()
  report = dry_run(config, target=target, devices=devices, compile=compile)
  print(report.text(), flush=True)
  return 0 if report.ok else 1
