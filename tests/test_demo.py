"""The demo config end to end on a small budget: metrics, checkpoints and plot are written, and a
second start resumes from the checkpoint. Uses the real emoji data (npm pack on first use)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from clip_jax.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo", "emoji.py")
SMALL = ["--config.batch_size=64", "--config.log_every_steps=10", "--config.eval_every_steps=30",
         "--config.ckpt_every_steps=15", "--config.optim.warmup_steps=5"]

if shutil.which("npm") is None:
  pytest.fail("the demo test needs npm (apt-get install npm) to fetch emoji-datasource-google",
              pytrace=False)


def _train(workdir, steps):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run(
      [sys.executable, "-m", "clip_jax.train", "--config", DEMO, "--workdir", str(workdir),
       f"--config.total_steps={steps}", *SMALL], capture_output=True, text=True, cwd=ROOT,
      env=env, timeout=900)


def test_demo_trains_writes_everything_and_resumes(tmp_path):
  proc = _train(tmp_path, 30)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["15", "30"]
  assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  lines = read_metrics(str(tmp_path / "metrics.jsonl"))
  train = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train] == [10, 20, 30]
  assert {"learning_rate", "scale", "bias", "examples_per_sec"} <= set(train[0])
  evals = [l for l in lines if "heldout/i2t_recall@5" in l]
  assert evals[0]["step"] == 30 and evals[0]["heldout/num_texts"] == 286
  assert 0 <= evals[0]["heldout_categories/top1"] <= 1
  assert json.loads((tmp_path / "final_metrics.json").read_text())["heldout/num_images"] == 286

  proc = _train(tmp_path, 40)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resumed from" in proc.stdout and "(step 30 of 40)" in proc.stdout
  steps = [l["step"] for l in read_metrics(str(tmp_path / "metrics.jsonl")) if "loss" in l]
  assert steps == [10, 20, 30, 40]
