"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. orbax writes each checkpoint to a temporary
directory and renames it when complete, so a crash mid-write never leaves a checkpoint that
looks complete. Restoring takes an abstract state whose leaves carry the target shardings, so a
checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


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
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict[str, Any], *,
           force: bool = False) -> bool:
    """Saves `state` and `data_state` as checkpoint `step` (in the background if async)."""
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint `step` onto the shardings carried by `abstract_state`'s leaves."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"] or {})

  def wait(self) -> None:
    """Blocks until background saves are complete."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
