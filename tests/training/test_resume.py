"""Fault tolerance: exact resume after SIGKILL and SIGTERM at seeded random steps (SIGINT takes
the same path: test_preemption.py), fallback from a corrupted checkpoint, and the divergence
guard's clean stop. Restoring onto another mesh: test_restore_state.py.

The signal steps are drawn from a fixed seed (set CLIP_JAX_TEST_SEED to draw others); each test
prints its step, so a failure can be replayed."""

import json
import os
import random
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from clip_jax.checkpoint import Checkpointer
from clip_jax.config import load_config_file
from clip_jax.metrics import read_metrics
from clip_jax.training import faults
from clip_jax.training.flops import model_flops_per_example
from clip_jax.training.loop import train_and_evaluate
from clip_jax.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def train_cli(workdir, *overrides, fault_signal=""):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{faults.SIGNAL_VAR: fault_signal})
  return subprocess.run(
      [sys.executable, "-m", "clip_jax.train", "--config", TINY, "--workdir", str(workdir),
       *overrides], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def signal_step(test_id: str) -> int:
  """The step in [5, 22] at which test `test_id` signals its run, seeded by CLIP_JAX_TEST_SEED."""
  seed = os.environ.get("CLIP_JAX_TEST_SEED", "0")
  step = random.Random(f"{seed}/{test_id}").randint(5, 22)
  print(f"{test_id}: signal at step {step} (CLIP_JAX_TEST_SEED={seed})")
  return step


def test_signal_steps_are_reproducible(monkeypatch):
  ids = [f"test_{i}" for i in range(10)]
  monkeypatch.setenv("CLIP_JAX_TEST_SEED", "7")
  steps = [signal_step(i) for i in ids]
  assert [signal_step(i) for i in ids] == steps and all(5 <= s <= 22 for s in steps)
  monkeypatch.setenv("CLIP_JAX_TEST_SEED", "8")
  assert [signal_step(i) for i in ids] != steps


def training_lines(workdir):
  return [line for line in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run's training lines."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = train_cli(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = training_lines(workdir)
  assert [l["step"] for l in lines] == list(range(1, 25))
  return lines


def assert_same_training(lines, reference):
  assert [l["step"] for l in lines] == [l["step"] for l in reference]  # no duplicates or gaps
  for got, want in zip(lines, reference):
    for key in ("loss", "learning_rate", "scale", "bias", "grad_norm"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=f"{key} @ {got['step']}")


@pytest.mark.parametrize("async_save", [True])
def test_sigkill_then_restart_matches_uninterrupted(tmp_path, reference, async_save):
  kill_at = signal_step(f"sigkill-async={async_save}")
  proc = train_cli(tmp_path, f"--config.ckpt_async={async_save}",
                   fault_signal=f"SIGKILL@{kill_at}")
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert max(l["step"] for l in training_lines(tmp_path)) == kill_at
  proc = train_cli(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed = re.search(r"Resumed from \S+ \(step (\d+) of", proc.stdout)
  resumed_at = int(resumed.group(1)) if resumed else 0  # no complete checkpoint: from scratch
  # Synchronous saves lose at most one interval (4 steps). An async save still in flight when
  # the process dies is incomplete and ignored, so at most one more interval is redone.
  assert kill_at - resumed_at <= (8 if async_save else 4), (kill_at, resumed_at)
  assert_same_training(training_lines(tmp_path), reference)


@pytest.mark.parametrize("signal_name", ["SIGTERM"])  # SIGINT: test_preemption.py
def test_stop_signal_checkpoints_and_exits_zero(tmp_path, reference, signal_name):
  stop_at = signal_step(signal_name)
  proc = train_cli(tmp_path, fault_signal=f"{signal_name}@{stop_at}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"{signal_name} received" in proc.stderr
  assert f"Stopped at step {stop_at} of 24" in proc.stdout
  assert Checkpointer(tmp_path, async_save=False).latest_step() == stop_at
  proc = train_cli(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resumed from {tmp_path}/checkpoints/{stop_at} (step {stop_at} of 24)" in proc.stdout
  assert_same_training(training_lines(tmp_path), reference)


def _steps(trainer, state, n, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    text = rng.integers(2, 300, size=(16, 6)).astype(np.int32)
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32), "text": text}
    state, metrics = trainer.train_step(state, trainer.global_batch(batch))
  return state, float(metrics["loss"])


def _trainer(devices, fsdp):
  config = load_config_file(TINY)
  config.mesh = (("data", -1), ("fsdp", fsdp))
  return Trainer(config, devices=devices)


def test_corrupted_latest_checkpoint_falls_back(tmp_path, capsys, truncate_checkpoint):
  trainer = _trainer(jax.devices(), fsdp=2)
  state = trainer.init_state()
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(4, state, {"step": 4}, force=True)
  state, _ = _steps(trainer, state, 1)
  ckpt.save(8, state, {"step": 8}, force=True)
  ckpt.close()
  truncate_checkpoint(os.path.join(tmp_path, "checkpoints", "8"))
  ckpt = Checkpointer(tmp_path)
  step, _, data = ckpt.restore_latest(trainer.abstract_state)
  ckpt.close()
  assert step == 4 and data == {"step": 4}
  out = capsys.readouterr().out
  assert f"checkpoint {tmp_path}/checkpoints/8 cannot be restored" in out
  assert "falling back to the previous one" in out


def test_consecutive_nan_steps_stop_cleanly(tmp_path, monkeypatch):
  config = load_config_file(TINY)
  monkeypatch.setenv(faults.NAN_STEPS_VAR, "6,7,8")
  config.max_bad_steps = 3
  with pytest.raises(FloatingPointError) as e:
    train_and_evaluate(config, str(tmp_path))
  message = str(e.value)
  assert "3 consecutive non-finite" in message and "last good checkpoint is step 4" in message
  ckpt = Checkpointer(tmp_path, async_save=False)
  assert ckpt.all_steps() == [4]  # nothing written after the divergence began
  lines = [l for l in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in l]
  assert [l["skipped_steps"] for l in lines if l["step"] in (5, 6, 7)] == [0, 1, 2]


def test_single_nan_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
  config = load_config_file(TINY)
  config.total_steps = 8
  config.peak_tflops_per_device = 0.002  # a CPU's peak is not known: given, so mfu is logged
  monkeypatch.setenv(faults.NAN_STEPS_VAR, "3")
  train_and_evaluate(config, str(tmp_path))
  lines = [l for l in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in l]
  assert np.isnan(lines[2]["loss"]) and lines[2]["skipped_steps"] == 1
  assert np.isfinite(lines[-1]["loss"]) and lines[-1]["skipped_steps"] == 1
  # Every training line says what fraction of its wall time the loop waited for data.
  assert all(0 <= l["data_wait_fraction"] <= 1 for l in lines)
  assert 0 < sum(l["data_wait_fraction"] for l in lines) < len(lines)
  # ... and its throughput: examples/s in all and per device (8), and the MFU.
  flops = model_flops_per_example(Trainer(config))
  for l in lines:
    assert l["examples_per_sec_per_device"] == pytest.approx(l["examples_per_sec"] / 8)
    assert l["mfu"] == pytest.approx(flops * l["examples_per_sec"] / (0.002e12 * 8))
  assert json.load(open(os.path.join(tmp_path, "final_metrics.json")))


def test_keeps_last_k_plus_every_mth(tmp_path):
  config = load_config_file(TINY)
  config.ckpt_keep = 2
  config.ckpt_keep_period = 8
  train_and_evaluate(config, str(tmp_path))  # checkpoints every 4 steps up to 24
  assert Checkpointer(tmp_path, async_save=False).all_steps() == [8, 16, 20, 24]


def test_rerunning_a_finished_run_keeps_its_results(tmp_path):
  config = load_config_file(TINY)
  config.total_steps = 4
  train_and_evaluate(config, str(tmp_path))
  final = json.load(open(os.path.join(tmp_path, "final_metrics.json")))
  assert final["heldout/num_images"] > 0
  lines = read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert not any("mfu" in l for l in lines)  # the CPU's peak FLOP/s is not known
  train_and_evaluate(config, str(tmp_path))
  assert json.load(open(os.path.join(tmp_path, "final_metrics.json"))) == final
  assert read_metrics(os.path.join(tmp_path, "metrics.jsonl")) == lines
