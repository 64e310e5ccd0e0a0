"""Multi-host: 2 local processes (2 CPU devices each; started by launch/local_processes.sh for
training) joined through a coordinator on 127.0.0.1 train exactly like one process with 4
devices (same global batches, same losses), and evaluate a checkpoint to the same metrics."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from clip_jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
ARGS = ["--config", TINY, "--config.total_steps=6", "--config.eval_every_steps=6",
        "--config.ckpt_every_steps=3"]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  return [l["loss"] for l in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in l]


def _two_processes(module, *args):
  """Runs `python -m module *args` as processes 0 and 1 of 2 (2 devices each); returns their
  (stdout, stderr) after checking that both exited with 0."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", module, f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", *args], env=_env(2), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The workdir of the run in one process with 4 devices."""
  single = tmp_path_factory.mktemp("single")
  proc = subprocess.run([sys.executable, "-m", "clip_jax.train", "--workdir", str(single), *ARGS],
                        env=_env(4), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return single


def test_two_processes_match_one_process(single, tmp_path):
  # Started as a user starts a multi-host run without a cluster: launch/local_processes.sh.
  multi = tmp_path / "multi"
  env = dict(_env(2), PORT=str(_free_port()), DEVICES_PER_PROCESS="2",
             PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
  proc = subprocess.run(["bash", "launch/local_processes.sh", "2", TINY, str(multi), *ARGS[2:]],
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "process 0 of 2: 2 local / 4 global devices" in proc.stdout
  assert "process 1 of 2: 2 local / 4 global devices" in proc.stdout

  single_losses, multi_losses = _losses(single), _losses(multi)
  assert len(single_losses) == len(multi_losses) == 6
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  assert sorted(os.listdir(multi / "checkpoints")) == ["3", "6"]


def test_evaluate_on_two_processes_matches_one_process(single):
  # The one-process run's evals at its last step are what one process evaluates from that
  # checkpoint (tests/test_evaluate.py); two processes evaluate that checkpoint to the same (each
  # ranking half of the retrieval queries).
  outputs = _two_processes("clip_jax.evaluate", "--workdir", str(single))
  metrics = json.loads(outputs[0][0].strip().splitlines()[-1])
  assert "{" not in outputs[1][0]  # process 0 alone prints and records the result
  assert metrics.pop("step") == 6
  want = json.loads((single / "final_metrics.json").read_text())
  assert set(metrics) == set(want) and metrics["heldout/num_images"] > 0
  for key, value in want.items():
    assert metrics[key] == pytest.approx(value, abs=1e-5), key
  # Written by process 0: the metrics and the retrieval split's pictures.
  assert sorted(os.listdir(single / "eval")) == [
      "6.json", "6_heldout_grid.png", "6_heldout_projection.png"]
  assert json.loads((single / "eval" / "6.json").read_text()) == dict(metrics, step=6)
