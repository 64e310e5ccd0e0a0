"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

Layout: `<workdir>/checkpoints/<step>/{state,data}`.

Guarantees:
* orbax writes each checkpoint into a temporary directory and renames it when complete, so a
  crash mid-write (kill -9, a lost node) never leaves a checkpoint that looks complete; leftover
  temporary directories are removed at start-up.
* `restore_latest` walks back from the newest checkpoint: one that cannot be read (a truncated or
  corrupted file) is reported with a warning and the previous one is used.
* Restoring takes an abstract state whose leaves carry the target shardings, so a checkpoint
  written on one mesh (8 devices, say) restores onto another (4 or 1).
* Before each save the free disk space is checked against the state's size; a failed save
  raises an error naming the directory and the last complete checkpoint. Old checkpoints are
  only deleted after a newer one is complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from clip_jax.mesh import compile_rules, named_leaves, path_to_str
from clip_jax.registry import ConfigError

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message says what to do."""


def _state_bytes(state: Any) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))


class Checkpointer:
  """Saves and restores (train state, data iterator state) under `<workdir>/checkpoints`.

  Args:
    workdir: the run's directory.
    keep: how many of the latest checkpoints to keep.
    keep_period: also keep every checkpoint whose step is a multiple of this (0: none).
    async_save: write in the background while training goes on.
  """

  def __init__(self, workdir: str, *, keep: int = 3, keep_period: int = 0,
               async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _check_space(self, step: int, state: Any) -> None:
    need = _state_bytes(state) // max(jax.process_count(), 1)
    free = shutil.disk_usage(self.directory).free
    if free < 1.1 * need + (16 << 20):
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

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint; None if there is none at all.

    A checkpoint that fails to restore is skipped with a warning, and the one before it is tried.

    Raises:
      CheckpointError: if checkpoints exist but none can be read.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except Exception as e:  # noqa: BLE001
        log.warning("Checkpoint %s/%d cannot be restored (%s: %s); trying the previous one.",
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:300])
        print(f"WARNING: checkpoint {self.directory}/{step} cannot be restored "
              f"({type(e).__name__}); falling back to the previous one.", flush=True)
    if steps:
      raise CheckpointError(
          f"none of the checkpoints {steps} in {self.directory} can be restored; move the "
          "directory away to start from scratch, or fix the files.")
    return None

  def wait(self) -> None:
    """Blocks until background saves are complete."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _resolve_state_dir(path: str) -> str:
  """`path` may be a workdir, its checkpoints/ directory, a step directory or its state/ item."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = [d for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  if steps:
    path = os.path.join(path, str(max(int(s) for s in steps)))
  if os.path.isdir(os.path.join(path, "state")):
    path = os.path.join(path, "state")
  if not os.path.isdir(path):
    raise ConfigError(f"config.init_from = {path!r} is not a checkpoint: give a workdir, its "
                      "checkpoints/ directory, or one step directory")
  return path


def load_params_from(path: str, target_params: Any, target_shardings: Any,
                     rules: Sequence[Sequence[str]] = ()) -> Any:
  """Initialises params from another run's (or a converted) checkpoint: params only.

  Args:
    path: see `_resolve_state_dir`.
    target_params: the freshly initialised params {"model": ..., "loss": ...} of this run.
    target_shardings: NamedShardings matching `target_params`.
    rules: ((regex, "load" | "init"), ...) on the "/"-joined param path; the first match wins and
      unmatched params are loaded. "init" keeps this run's fresh initialisation (a new head, a
      tower to train from scratch).

  Raises:
    ConfigError: naming the parameter when one marked "load" is missing from the checkpoint or
      has another shape.
  """
  compiled = compile_rules(rules, "config.init_from_rules")
  for regex, action in compiled:
    if action not in ("load", "init"):
      raise ConfigError(f"config.init_from_rules: {regex.pattern!r} -> {action!r}; the action "
                        "must be 'load' or 'init'")
  state_dir = _resolve_state_dir(path)
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(state_dir)
  saved_params = saved["params"] if "params" in saved else saved
  saved_by_path = dict(named_leaves(saved_params))

  def pick(keypath, fresh, sharding):
    name = path_to_str(keypath)
    action = next((a for r, a in compiled if r.search(name)), "load")
    if action == "init":
      return fresh
    if name not in saved_by_path:
      raise ConfigError(
          f"config.init_from: parameter {name} is not in {state_dir}; add "
          f"(r'^{re.escape(name)}$', 'init') to config.init_from_rules to keep it fresh")
    value = np.asarray(saved_by_path[name])
    if value.shape != fresh.shape:
      raise ConfigError(f"config.init_from: {name} has shape {value.shape} in {state_dir} but "
                        f"{fresh.shape} here; mark it 'init' in config.init_from_rules")
    return jax.device_put(value.astype(fresh.dtype), sharding)

  return jax.tree.map_with_path(pick, target_params, target_shardings)
