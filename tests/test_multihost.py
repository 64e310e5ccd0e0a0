"""Multi-host: 2 local processes (2 CPU devices each) joined through a coordinator on 127.0.0.1
train exactly like one process with 4 devices: same global batches, same losses."""

import os
import socket
import subprocess
import sys

import numpy as np

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


def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / "single"
  proc = subprocess.run([sys.executable, "-m", "clip_jax.train", "--workdir", str(single), *ARGS],
                        env=_env(4), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "clip_jax.train", "--workdir", str(multi),
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       *ARGS], env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2: 2 local / 4 global devices" in outputs[0][0]
  assert "process 1 of 2: 2 local / 4 global devices" in outputs[1][0]

  single_losses, multi_losses = _losses(single), _losses(multi)
  assert len(single_losses) == len(multi_losses) == 6
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  assert sorted(os.listdir(multi / "checkpoints")) == ["3", "6"]
