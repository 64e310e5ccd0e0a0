"""Test-only fault injection, switched on by environment variables (never by the config):

  CLIP_JAX_FAULT_NAN_STEPS="6,7,8"    the updates that make the step count 6, 7 and 8 see a NaN
                                      loss (the train step's divergence guard then skips them)
  CLIP_JAX_FAULT_SIGNAL="SIGKILL@17"  the process sends itself SIGKILL (or SIGTERM, SIGINT) right
                                      after step 17, before that step's checkpoint

The tests set them for the process they start (or with pytest's monkeypatch.setenv) to replay
crashes, preemptions and divergence. Unset, they change nothing.
"""

from __future__ import annotations

import os
import signal

NAN_STEPS_VAR = "CLIP_JAX_FAULT_NAN_STEPS"
SIGNAL_VAR = "CLIP_JAX_FAULT_SIGNAL"


def nan_steps() -> tuple[int, ...]:
  """The steps of $CLIP_JAX_FAULT_NAN_STEPS (comma-separated ints; () when unset or empty).

  Raises:
    ValueError: the variable holds something else (naming it).
  """
  raw = os.environ.get(NAN_STEPS_VAR, "")
  try:
    return tuple(int(s) for s in raw.split(",") if s.strip())
  except ValueError:
    raise ValueError(f"${NAN_STEPS_VAR} = {raw!r}: give comma-separated step numbers, "
                     "e.g. 6,7,8") from None


def signal_after(step: int) -> None:
  """Sends this process the signal of $CLIP_JAX_FAULT_SIGNAL ("NAME@STEP") if `step` is STEP.

  Raises:
    ValueError: the variable is not NAME@STEP with a signal NAME (naming it).
  """
  raw = os.environ.get(SIGNAL_VAR, "")
  if not raw:
    return
  name, _, at = raw.partition("@")
  if not at.isdigit() or not isinstance(getattr(signal, name, None), signal.Signals):
    raise ValueError(f"${SIGNAL_VAR} = {raw!r}: give NAME@STEP, e.g. SIGKILL@17")
  if int(at) == step:
    os.kill(os.getpid(), getattr(signal, name))
