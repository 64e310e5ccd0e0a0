"""Multi-host flags: inconsistent combinations stop with a one-line error before anything starts.

The real two-process run is in tests/test_multihost.py; here `jax.distributed.initialize` is
replaced by a recorder.
"""

import os
import subprocess
import sys

import jax
import pytest

from clip_jax import distributed
from clip_jax.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


@pytest.fixture
def calls(monkeypatch):
  """The keyword arguments of every jax.distributed.initialize call."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
  return recorded


@pytest.mark.parametrize("address, num, pid, auto, expected", [
    ("10.0.0.1:1234", None, None, False,
     "--coordinator_address given without --num_processes, --process_id; an explicit"),
    ("10.0.0.1:1234", 2, None, False,
     "--coordinator_address, --num_processes given without --process_id;"),
    (None, 2, 0, False,
     "--num_processes, --process_id given without --coordinator_address;"),
    (None, None, 1, False, "--process_id given without --coordinator_address, --num_processes;"),
    ("10.0.0.1:1234", 2, 0, True,
     "--multihost reads the cluster environment and cannot be combined with "
     "--coordinator_address, --num_processes, --process_id;"),
    (None, 4, None, True, "--multihost reads the cluster environment and cannot be combined with "
                          "--num_processes;"),
    ("10.0.0.1", 2, 0, False, "--coordinator_address='10.0.0.1' is not HOST:PORT"),
    (":1234", 2, 0, False, "--coordinator_address=':1234' is not HOST:PORT"),
    ("host:99999", 2, 0, False, "--coordinator_address='host:99999' is not HOST:PORT"),
    ("host:1234", 0, 0, False, "--num_processes=0 must be at least 1"),
    ("host:1234", 2, 2, False, "--process_id=2 must lie in [0, 2) for --num_processes=2"),
    ("host:1234", 2, -1, False, "--process_id=-1 must lie in [0, 2)"),
])
def test_inconsistent_flags_are_named(calls, address, num, pid, auto, expected):
  with pytest.raises(ConfigError) as e:
    distributed.initialize(address, num, pid, auto=auto)
  assert expected in str(e.value)
  assert "\n" not in str(e.value)
  assert calls == []  # nothing started


def test_consistent_flags_start_as_asked(calls, capsys):
  distributed.initialize(None, None, None, auto=False)
  assert calls == []  # one process: no distributed runtime
  distributed.initialize("10.0.0.1:1234", 2, 1)
  distributed.initialize(auto=True)
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1), {}]
  assert "process 0 of 1" in capsys.readouterr().out


def test_cli_flag_error_is_one_line_exit_2(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "clip_jax.train", "--config", TINY, "--workdir", str(tmp_path),
       "--num_processes=2", "--process_id=0"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      "Config error: --num_processes, --process_id given without --coordinator_address; an "
      "explicit multi-process start passes --coordinator_address=HOST:PORT, --num_processes=N "
      "and --process_id=I to every process"]
  assert not os.path.exists(tmp_path / "metrics.jsonl")  # no single-process run instead
