"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint, exit 0.

The first signal sets a flag that the loop reads after each step; the loop then writes a
checkpoint synchronously, flushes its writers and returns. A second signal exits at once
(status 130), for a user who really means it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """Context manager installing the signal handlers (main thread only; else a no-op)."""

  def __init__(self) -> None:
    self._requested = False
    self._previous: dict[int, object] = {}

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self._requested:
      print(f"\nSecond {signal.Signals(signum).name}: exiting now without a checkpoint.",
            file=sys.stderr, flush=True)
      os._exit(130)
    self._requested = True
    print(f"\n{signal.Signals(signum).name} received: finishing the current step, then "
          "writing a checkpoint. Send it again to exit at once.", file=sys.stderr, flush=True)

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def should_stop(self) -> bool:
    """Whether to stop after this step; all processes agree (any one signalled stops all)."""
    if jax.process_count() == 1:
      return self._requested
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
    return bool(np.any(flags))
