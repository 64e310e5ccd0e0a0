"""The stop signals: SIGTERM and SIGINT both ask the loop to stop after the step (the loop's
checkpoint-and-exit path is exercised end to end with SIGTERM in test_resume.py)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from clip_jax.training.preemption import SIGNALS, PreemptionGuard


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_sets_the_flag_and_the_handlers_are_restored(signum, capsys):
  before = signal.getsignal(signum)
  with PreemptionGuard() as guard:
    assert not guard.should_stop()
    os.kill(os.getpid(), signum)  # delivered to the main thread before kill() returns
    assert guard.should_stop()
  assert signal.getsignal(signum) is before
  assert f"{signal.Signals(signum).name} received" in capsys.readouterr().err


def test_outside_the_main_thread_the_guard_installs_nothing():
  before = {s: signal.getsignal(s) for s in SIGNALS}
  seen = {}

  def run():
    with PreemptionGuard():
      seen.update({s: signal.getsignal(s) for s in SIGNALS})

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == before
