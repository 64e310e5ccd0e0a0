"""TensorBoard event files of a run's metrics, through tensorboardX (a maintained writer).

    tb = TensorBoardWriter(workdir, resume_step=start)   # events in <workdir>/tensorboard/
    tb.write(step, {"loss": 0.7, "heldout/i2t_recall@5": 0.16})
    tb.sync(); tb.close()

`tensorboard --logdir <workdir>/tensorboard` shows every scalar of `metrics.jsonl` under the same
name, with the characters TensorBoard does not allow in a tag replaced by "_"
(`heldout/i2t_recall@5` is `heldout/i2t_recall_5` there). A resumed run starts a new event file that tells TensorBoard to discard the earlier files'
points after the restored step (tensorboardX's `purge_step`), so the curves have no steps twice.
On object storage (`gs://`) the events are written to a local temporary folder and copied into
`<workdir>/tensorboard/` at each `sync()` and at `close()` (event files are append-only, so each
copy holds everything so far).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Mapping

import tensorboardX

from clip_jax import fs

TENSORBOARD_DIRNAME = "tensorboard"


class TensorBoardWriter:
  """Scalars to TensorBoard event files in `<workdir>/tensorboard/`.

  Args:
    workdir: the run directory, local or on object storage.
    resume_step: the step a resumed run restarts from: points of earlier event files after it are
      discarded by TensorBoard. None for a new run.
    enabled: False (processes other than 0) makes every method a no-op.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True):
    self.directory = fs.join(workdir, TENSORBOARD_DIRNAME)
    self._writer = None
    self._local: str | None = None
    if not enabled:
      return
    if fs.is_remote(workdir):
      self._local = tempfile.mkdtemp(prefix="clip_jax_tensorboard_")
    else:
      fs.makedirs(self.directory)
    purge = resume_step + 1 if resume_step is not None else None
    # tensorboardX names a file by the second it was opened; the nanosecond suffix keeps a quick
    # restart from reopening (and truncating) the last file, and keeps name order = time order.
    self._writer = tensorboardX.SummaryWriter(logdir=self._local or self.directory,
                                              purge_step=purge, flush_secs=30,
                                              filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Adds each scalar at `step` (floats; the names as in metrics.jsonl)."""
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=int(step))

  def sync(self) -> None:
    """Flushes the events to disk and, on object storage, copies them to the workdir."""
    if self._writer is None:
      return
    self._writer.flush()
    if self._local is not None:
      for name in os.listdir(self._local):
        with open(os.path.join(self._local, name), "rb") as f:
          fs.write_atomic(fs.join(self.directory, name), f.read())

  def close(self) -> None:
    if self._writer is None:
      return
    self.sync()
    self._writer.close()
    self._writer = None
    if self._local is not None:
      shutil.rmtree(self._local, ignore_errors=True)

  def __enter__(self) -> TensorBoardWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
