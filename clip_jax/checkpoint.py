"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. The workdir may be local or on object
storage (`gs://bucket/run`): every path goes through `clip_jax.fs`, and orbax writes the arrays
there with TensorStore's own GCS/S3 driver.

Guarantees:
* orbax writes each checkpoint into a temporary directory and renames it when complete (on GCS,
  which has no rename, it writes a commit_success.txt marker last instead), so a crash mid-write
  (kill -9, a lost node) never leaves a checkpoint that looks complete; leftover temporary
  directories are removed at start-up.
* `restore_latest` walks back from the newest checkpoint: one that cannot be read (a truncated or
  corrupted file) is reported with a warning and the previous one is used; the unreadable ones
  are then moved aside to `<workdir>/checkpoints_unreadable/` (never deleted), so the run
  finishes and writes those steps again.
* Every read takes the current mesh's target shardings: resuming (an abstract state whose leaves
  carry them), `restore_params` (evaluation: the model's params only, partial restore) and
  `load_params_from` (params only, partial restore), so a checkpoint written on one mesh (8
  devices, say) restores onto another (4 or 1).
* Before each save to a local disk the free space is checked against the state's size (object
  storage has no disk to check); a failed save raises an error naming the directory and the last
  complete checkpoint. Old checkpoints are only deleted after a newer one is complete.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from clip_jax import fs
from clip_jax.log import get_logger
from clip_jax.tree_paths import compile_rules, named_leaves, path_to_str
from clip_jax.registry import ConfigError

log = get_logger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message says what to do."""


def _state_bytes(state: Any) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))


def _barrier(name: str) -> None:
  """Waits for every process (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """Saves and restores (train state, data iterator state) under `<workdir>/checkpoints`.

  Args:
    workdir: the run's directory: local (made absolute) or object storage (gs://bucket/run).
    keep: how many of the latest checkpoints to keep.
    keep_period: also keep every checkpoint whose step is a multiple of this (0: none).
    async_save: write in the background while training goes on.
    read_only: for readers such as the evaluate CLI (which never call `save`): create nothing and
      leave orbax's temporary directories alone, so a reader beside a running training job
      cannot remove a save in progress.
  """

  def __init__(self, workdir: fs.PathLike, *, keep: int = 3, keep_period: int = 0,
               async_save: bool = True, read_only: bool = False):
    self.directory = fs.join(fs.resolve(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=not read_only,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _check_space(self, step: int, state: Any) -> None:
    """Raises CheckpointError if the local disk cannot hold checkpoint `step` (not checked on
    object storage, which has no disk)."""
    need = _state_bytes(state) // max(jax.process_count(), 1)
    free = fs.free_bytes(self.directory)
    if free is not None and free < 1.1 * need + (16 << 20):
      raise CheckpointError(
          f"not enough free disk space in {self.directory} for checkpoint {step}: it needs about "
          f"{need / 2**20:.0f} MiB and {free / 2**20:.0f} MiB are free. Free space or move "
          f"--workdir; the last complete checkpoint is step {self.latest_step()}.")

  def save(self, step: int, state: Any, data_state: dict[str, Any], *,
           force: bool = False, wait: bool = False) -> bool:
    """Saves `state` and `data_state` as checkpoint `step` (in the background if async).

    Args:
      force: save even if orbax's save policy would skip this step.
      wait: block until this checkpoint is complete on disk (for preemption).
    """
    self._check_space(step, state)
    try:
      saved = self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=ocp.args.JsonSave(data_state)), force=force)
      if wait:
        self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001  (I/O errors come in many types)
      raise CheckpointError(
          f"saving checkpoint {step} to {self.directory} failed: {e}. Older checkpoints are "
          f"kept; the last complete one is step {self.latest_step()}.") from e
    return saved

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint `step` onto the shardings carried by `abstract_state`'s leaves."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"] or {})

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Reads only the params of checkpoint `step` that `abstract_params` holds, each straight into
    the sharding its leaf carries; nothing else (no optimizer or data state) is read.

    Args:
      step: a step of `all_steps()`.
      abstract_params: a sub-tree of the state's "params", e.g. {"model": ...} for evaluation,
        of ShapeDtypeStructs with shardings. The checkpoint may hold a train state (params under
        "params") or a bare params tree.

    Raises:
      ConfigError: a param of `abstract_params` is missing from the checkpoint or has another
        shape there (the checkpoint holds another model than the config describes).
    """
    state_dir = fs.join(self.directory, str(step), "state")
    saved, nested = _saved_params_metadata(state_dir)
    want = _shapes(abstract_params)
    mismatch = _shape_mismatch(want, {k: tuple(m.shape) for k, m in saved.items()}, want)
    if mismatch:
      raise ConfigError(f"{self.directory}/{step} holds a run of another model: {mismatch}. "
                        "Evaluate it with the config it was trained with (its config.json).")
    if not nested:  # a bare params tree (written by hand or by another tool)
      return _partial_restore(state_dir, abstract_params)
    return _partial_restore(state_dir, {"params": abstract_params})["params"]

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint; None if there is none at all.

    A checkpoint that fails to restore is skipped with a warning and the one before it is tried.
    Once one is restored, the unreadable newer ones are moved aside into
    `<workdir>/checkpoints_unreadable/` (never deleted), so the run can write those steps again
    and every message names only steps that can be read.

    Raises:
      CheckpointError: if checkpoints exist but none can be read (nothing is moved then).
    """
    steps = self.all_steps()
    self._check_same_model(steps, abstract_state)
    unreadable = []
    for step in reversed(steps):
      try:
        state, data = self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001
        log.warning("checkpoint %s/%d cannot be restored (%s: %s); falling back to the previous "
                    "one.", self.directory, step, type(e).__name__,
                    (str(e).splitlines() or [""])[0][:300])
        unreadable.append(step)
        continue
      if unreadable:
        self._move_aside(unreadable)
      return step, state, data
    if steps:
      raise CheckpointError(
          f"none of the checkpoints {steps} in {self.directory} can be restored; move the "
          "directory away to start from scratch, or fix the files.")
    return None

  def _check_same_model(self, steps: Sequence[int], abstract_state: Any) -> None:
    """Raises ConfigError when the newest checkpoint whose metadata can be read holds params of
    other names or shapes than this config's model: the workdir belongs to another run (read
    as "unreadable" by orbax, which would hide the cause)."""
    want = {name: shape for name, shape in _shapes(abstract_state).items()
            if name.startswith("params/")}
    for step in reversed(steps):
      try:
        saved, _ = _saved_params_metadata(fs.join(self.directory, str(step), "state"))
      except Exception:  # noqa: BLE001  (unreadable metadata: restore_latest reports it)
        continue
      saved = {f"params/{name}": tuple(m.shape) for name, m in saved.items()}
      mismatch = _shape_mismatch(want, saved, set(want) | set(saved))
      if mismatch:
        raise ConfigError(
            f"{self.directory}/{step} holds a run of another model: {mismatch}. Use a new "
            "--workdir, or start from its params with --config.init_from and "
            "config.init_from_rules.")
      return

  def _move_aside(self, steps: Sequence[int]) -> None:
    """Moves unreadable step directories to `<workdir>/checkpoints_unreadable/` (process 0)."""
    aside = fs.join(fs.dirname(self.directory), "checkpoints_unreadable")
    _barrier("clip_jax_checkpoint_move_aside_start")
    if jax.process_index() == 0:
      fs.makedirs(aside)
      for step in steps:
        target = fs.join(aside, str(step))
        suffix = 1
        while fs.exists(target):
          target, suffix = fs.join(aside, f"{step}.{suffix}"), suffix + 1
        fs.move(fs.join(self.directory, str(step)), target)
        log.warning("moved the unreadable checkpoint %d to %s.", step, target)
    _barrier("clip_jax_checkpoint_move_aside_done")
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _state_dirs(path: str) -> list[str]:
  """The `state/` directories `path` can mean, newest first.

  `path` may be a workdir, its checkpoints/ directory (every step, newest first), a step
  directory or its state/ item (just that one); local or on object storage.

  Raises:
    ConfigError: `path` holds no checkpoint.
  """
  root = fs.resolve(path)
  if fs.isdir(fs.join(root, "checkpoints")):
    root = fs.join(root, "checkpoints")
  steps = sorted((int(d) for d in fs.listdir(root) if d.isdigit()), reverse=True) if (
      fs.isdir(root)) else []
  candidates = [fs.join(root, str(s)) for s in steps] or [root]
  dirs = [fs.join(c, "state") if fs.isdir(fs.join(c, "state")) else c for c in candidates]
  dirs = [d for d in dirs if fs.isdir(d) and fs.listdir(d)]
  if not dirs:
    raise ConfigError(f"config.init_from = {path!r} is not a checkpoint: give a workdir, its "
                      "checkpoints/ directory, or one step directory")
  return dirs


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{"/"-joined path: shape} of every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  return {name: tuple(leaf.shape) for name, leaf in named_leaves(tree)}


def _shape_mismatch(want: dict[str, tuple[int, ...]], saved: dict[str, tuple[int, ...]],
                    names: Any) -> str | None:
  """The first of `names` (sorted) whose shape differs between this config (`want`) and a
  checkpoint (`saved`), described for an error message; None if they all agree."""
  for name in sorted(names):
    if want.get(name) != saved.get(name):
      return (f"{name} has shape {saved.get(name, 'absent')} there but "
              f"{want.get(name, 'absent')} in this config")
  return None


def _saved_tree(state_dir: str) -> dict[str, Any]:
  """The tree metadata (array metadata by nested key) saved in `state_dir`, read without the
  arrays. The item handler reads it alone (the checkpointer would also look for the step's
  metadata file, one level up, and warn when reading a bare params tree)."""
  tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
  if not isinstance(tree, dict):
    raise ValueError(f"{state_dir} does not hold a tree of arrays")
  return tree


def _saved_params_metadata(state_dir: str) -> tuple[dict[str, Any], bool]:
  """({"/"-joined param path: array metadata (shape, dtype)}, whether the params sit under a
  "params" key (a train state) rather than at the top (a converted params tree))."""
  tree = _saved_tree(state_dir)
  return dict(named_leaves(tree["params"] if "params" in tree else tree)), "params" in tree


def _partial_restore(state_dir: str, item: Any) -> Any:
  """Reads only the leaves of `item` (nested dicts of ShapeDtypeStructs with shardings) from the
  tree saved in `state_dir`, each straight into its sharding."""
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))


def load_params_from(path: str, target_params: Any, target_shardings: Any,
                     rules: Sequence[Sequence[str]] = ()) -> Any:
  """Initialises params from another run's (or a converted) checkpoint: params only.

  Only the parameters marked "load" are read, each straight into this run's target sharding,
  so the writer's device count and mesh do not matter (a checkpoint written on 8 devices loads
  on 1 or 4). The optimizer state in the checkpoint is never read.

  Args:
    path: a workdir, its checkpoints/ directory, a step directory or its state/ item, local or
      on object storage (gs://bucket/run). Given a workdir or checkpoints/ directory, the newest
      readable step is used (an unreadable one is reported and the previous one tried).
      Or released weights, converted as they are read: "<source>:<name>[:<checkpoint>]" with a
      source of `clip_jax.pretrained.load` (e.g. "sentence_transformers:all-MiniLM-L6-v2",
      "open_clip:ViT-B-32:/models/b32.safetensors"); they hold model params only (model/...), so
      mark the others "init" in `rules`.
    target_params: the freshly initialised params {"model": ..., "loss": ...} of this run.
    target_shardings: NamedShardings matching `target_params`.
    rules: ((regex, "load" | "init"), ...) on the "/"-joined param path; the first match wins and
      unmatched params are loaded. "init" keeps this run's fresh initialisation (a new head, a
      tower to train from scratch).

  Raises:
    ConfigError: an unknown rule action; `path` is not a checkpoint or none of its steps can be
      read; a parameter marked "load" is missing from the checkpoint or has another shape (the
      message names it).
  """
  compiled = compile_rules(rules, "config.init_from_rules")
  for regex, action in compiled:
    if action not in ("load", "init"):
      raise ConfigError(f"config.init_from_rules: {regex.pattern!r} -> {action!r}; the action "
                        "must be 'load' or 'init'")
  converted = _pretrained_params(path)
  if converted is not None:
    saved = dict(named_leaves(converted))
    wanted = _wanted(path, saved, compiled, target_params)
    shardings = dict(named_leaves(target_shardings))
    return _merge(target_params, {name: jax.device_put(saved[name], shardings[name])
                                  for name in wanted})
  failures = []
  for state_dir in _state_dirs(path):
    try:
      saved, nested = _saved_params_metadata(state_dir)
      return _load_params(state_dir, saved, nested, compiled, target_params, target_shardings)
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001  (orbax raises many types for unreadable files)
      failures.append(f"{state_dir} ({type(e).__name__})")
      log.warning("config.init_from: %s cannot be read (%s); trying the previous step.",
                  state_dir, type(e).__name__)
  raise ConfigError(f"config.init_from = {path!r}: no checkpoint there can be read: "
                    f"{', '.join(failures)}")


def _pretrained_params(path: str) -> dict[str, Any] | None:
  """{"model": the converted params} for `path` = "<source>:<name>[:<checkpoint>]" naming a
  source of `clip_jax.pretrained.load`; None for any other path (a checkpoint directory)."""
  from clip_jax import pretrained  # imported here: it builds models, which a reader may not need

  source, sep, rest = path.partition(":")
  if not sep or source not in pretrained.SOURCES:
    return None
  name, _, checkpoint = rest.partition(":")
  _, params = pretrained.load(source, name, checkpoint=checkpoint or None)
  return {"model": params}


def _wanted(where: str, saved: dict[str, Any], compiled, target_params: Any) -> dict[str, Any]:
  """{name: saved dtype} of the target params marked "load" (first matching rule; unmatched
  ones load), checked against `saved` ({"/"-joined path: array or its metadata}) of `where`.

  Raises:
    ConfigError: a parameter to load is missing from `saved` or has another shape there.
  """
  wanted = {}
  for keypath, fresh in jax.tree.flatten_with_path(target_params)[0]:
    name = path_to_str(keypath)
    if next((a for r, a in compiled if r.search(name)), "load") == "init":
      continue
    if name not in saved:
      raise ConfigError(
          f"config.init_from: parameter {name} is not in {where}; add "
          f"(r'^{re.escape(name)}$', 'init') to config.init_from_rules to keep it fresh")
    if tuple(saved[name].shape) != tuple(fresh.shape):
      raise ConfigError(f"config.init_from: {name} has shape {tuple(saved[name].shape)} in "
                        f"{where} but {tuple(fresh.shape)} here; mark it 'init' in "
                        "config.init_from_rules")
    wanted[name] = saved[name].dtype
  return wanted


def _merge(target_params: Any, loaded: dict[str, Any]) -> Any:
  """`target_params` with the leaves named in `loaded` replaced (cast to the targets' dtypes)."""

  def pick(keypath, fresh):
    name = path_to_str(keypath)
    return loaded[name].astype(fresh.dtype) if name in loaded else fresh

  return jax.tree.map_with_path(pick, target_params)


def _load_params(state_dir: str, saved: dict[str, Any], nested: bool, compiled, target_params,
                 target_shardings) -> Any:
  """Reads the "load" params of `saved` (metadata by path) from `state_dir` into the targets."""
  wanted = _wanted(state_dir, saved, compiled, target_params)
  shardings = dict(named_leaves(target_shardings))

  def abstract(keypath, fresh):
    name = path_to_str(keypath)
    return (jax.ShapeDtypeStruct(fresh.shape, wanted[name], sharding=shardings[name])
            if name in wanted else None)

  # Restore only the wanted leaves (partial restore), each directly into its target sharding.
  item = jax.tree.map_with_path(abstract, target_params)
  item = _prune(item)
  restored = _partial_restore(state_dir, {"params": item} if nested else item)
  return _merge(target_params, dict(named_leaves(restored["params"] if nested else restored)))


def _prune(tree: Any) -> Any:
  """`tree` (nested dicts) without None leaves and without dicts left empty."""
  if isinstance(tree, dict):
    kept = {k: _prune(v) for k, v in tree.items()}
    return {k: v for k, v in kept.items() if v is not None and v != {}}
  return tree
