"""Smoke runs of the benchmark scripts at toy sizes: they run and print their tables."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def run_script(name, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def table_rows(stdout, first_cell):
  """The cells of the markdown table rows whose first cell is in `first_cell`."""
  rows = [[c.strip() for c in line.strip().strip("|").split("|")]
          for line in stdout.splitlines() if line.startswith("| ")]
  return [r for r in rows if r[0] in first_cell]


def test_loss_memory_prints_table_and_targets():
  proc = run_script("loss_memory.py", "--quick", "--n", "16", "--d", "8", "--devices", "2,8",
                    "--single_n", "0")
  assert "| loss | impl | chunk | D=2 MiB | D=8 MiB | mem D=8 / D=2 |" in proc.stdout, proc.stderr
  rows = table_rows(proc.stdout, ("sigmoid", "softmax"))
  assert [r[:3] for r in rows] == [[loss, impl, chunk] for loss in ("sigmoid", "softmax")
                                   for impl, chunk in (("ring", "-"), ("ring", "2"),
                                                       ("all_gather", "-"))]
  ratio = {(r[0], r[1], r[2]): float(r[5]) for r in rows}
  for loss in ("sigmoid", "softmax"):
    # all_gather's memory grows with the gathered batch (about 4x from 2 to 8 devices); the
    # ring's does not.
    assert ratio[loss, "all_gather", "-"] > 3
    assert max(ratio[loss, "ring", "-"], ratio[loss, "ring", "2"]) < 2
  verdicts = re.findall(r"^- (?:sigmoid|softmax) ring .*\(target <= 1\.25\) (OK|MISSED);",
                        proc.stdout, re.M)
  assert len(verdicts) == 4
  assert proc.returncode == (0 if set(verdicts) == {"OK"} else 1), proc.stderr[-2000:]


def test_train_throughput_prints_table():
  proc = run_script("train_throughput.py", "--config", TINY, "--devices", "2", "--impls",
                    "all_gather", "--steps", "1", "--warmup", "0", "--batches", "1",
                    "--microbatch", "0,8")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "backend cpu, 2 device(s)" in proc.stdout and "global batch 16" in proc.stdout
  flops = re.search(r"all devices\): (\S+ \S+)FLOP", proc.stdout).group(1)
  assert "step-0 loss" not in proc.stdout  # no open_clip peer unless asked
  rows = table_rows(proc.stdout, ("all_gather",))
  assert [r[3] for r in rows] == ["off", "8"]  # the micro-batch column
  (impl, dtype, remat, _, per_device, compile_s, ms, speed, rel, peer, temp, row_flops,
   mfu) = rows[0]
  assert (impl, dtype, remat, per_device, rel, peer, mfu) == (
      "all_gather", "float32", "off", "8", "1.00x", "-", "n/a")
  assert row_flops == flops.strip()  # the only variant is the model-FLOPs reference
  assert float(compile_s) > 0 and float(ms) > 0 and float(temp) >= 0
  # examples/s = global batch / median step time (both printed rounded).
  assert float(speed.replace(",", "")) == pytest.approx(16 / (float(ms) / 1e3), rel=0.01, abs=1)


def test_retrieval_scale_prints_its_table():
  proc = run_script("retrieval_scale.py", "--images", "300", "--d", "32")
  assert proc.returncode == 0, proc.stderr[-2000:]
  (row,) = table_rows(proc.stdout, ("300",))
  assert row[1] == "1,500" and row[7] == "0.0"
  assert "i2t_recall@1" in proc.stdout and "t2i_median_rank" in proc.stdout


def test_data_throughput_prints_its_table(tmp_path, emoji_cache_dir):
  proc = run_script("data_throughput.py", "--workdir", str(tmp_path), "--images", "24",
                    "--shard_size", "10", "--batch", "4", "--batches", "2", "--threads", "0,1",
                    "--cache_dir", str(emoji_cache_dir))
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = table_rows(proc.stdout, ("webdataset + Pillow loop", "clip_jax (grain)"))
  assert [r[:2] for r in rows] == [["webdataset + Pillow loop", "-"], ["clip_jax (grain)", "0"],
                                   ["clip_jax (grain)", "1"]]
  assert all(float(r[2]) > 0 for r in rows) and len(list(tmp_path.glob("shards/*.tar"))) == 3


DEMO = os.path.join(ROOT, "benchmarks", "configs", "demo_scale.py")


def _peer_module():
  """benchmarks/open_clip_peer.py, imported as the scripts do (not train_throughput.py, whose
  import defines the absl flag --config: a test process may already have one)."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import open_clip_peer
  finally:
    sys.path.pop(0)
  return open_clip_peer


def test_open_clip_peer_starts_where_clip_jax_does(open_clip_lib):
  """Same weights, batch, architecture and loss: the step-0 losses, parameter counts and model
  FLOPs of clip_jax's trainer and the open_clip peer agree (float32, CPU)."""
  from torch.utils.flop_counter import FlopCounterMode

  from clip_jax.config import load_config_module
  from clip_jax.training.flops import model_flops_per_example
  from clip_jax.training.trainer import Trainer

  peer_lib = _peer_module()
  config = load_config_module(DEMO).get_config("tiny")
  config.loss.init_bias = 0.0  # at b = -10 every model's loss is about 10: the check is weak
  devices = jax.devices()[:1]
  batch = peer_lib.random_batch(config, np.random.default_rng(0), False)
  trainer = Trainer(config, devices=devices, batch_spec={
      k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  state = trainer.init_state()
  params = jax.device_get(state["params"])
  _, metrics = trainer.train_step(state, trainer.global_batch(batch))
  peer = peer_lib.OpenClipVariant("peer", open_clip_lib, config, params, [batch], mode="eager",
                                  precision="float32", grad_checkpointing=False)
  assert (sum(p.numel() for p in peer.model.parameters()) ==
          sum(x.size for x in jax.tree.leaves(params)))
  images, texts = peer.batches[0]
  with FlopCounterMode(display=False) as counter:
    peer.loss_fn(**peer.model(images, texts))
  # torch's counter sees the matmuls and the patch convolution, not the attention inside
  # nn.MultiheadAttention (4 x B x T^2 x D per layer: T = 5 image tokens, 8 text tokens, D = 32);
  # the analytic count also applies the patch embedding to the class token (2 x B x p^2 C x D).
  n = config.batch_size
  attention = 4 * n * (5**2 + 8**2) * 32
  cls_token = 2 * n * 8 * 8 * 3 * 32
  analytic = model_flops_per_example(trainer)
  assert counter.get_total_flops() + attention + cls_token == analytic * n / 3
  peer.step(timed=False)
  loss = float(metrics["loss"])
  print(f"step-0 loss: clip_jax {loss:.7f}, open_clip {peer.first_loss:.7f}")
  assert peer.first_loss == pytest.approx(loss, abs=1e-5)


def test_gpu_session_smoke(tmp_path, open_clip_wheel):
  """benchmarks/gpu_session.sh's CPU smoke run: the max-batch search, the open_clip peer and
  the files under $OUT."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", OUT=str(tmp_path), CLIP_JAX_GPU_SESSION_SMOKE="1",
             PYTHON=sys.executable, CLIP_JAX_OPEN_CLIP_WHEEL=str(open_clip_wheel))
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_session.sh")],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  log = (tmp_path / "session.log").read_text()
  assert proc.returncode == 0, log[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md",
                                                        "session.log"]
  (run,) = json.loads((tmp_path / "results.json").read_text()).values()
  jax_row, peer_row = run["rows"]
  assert (jax_row["framework"], peer_row["framework"]) == ("clip_jax", "open_clip")
  assert jax_row["batch_per_device"] % 8 == 0 and jax_row["batch_per_device"] > 8
  assert peer_row["batch_per_device"] == jax_row["batch_per_device"]  # fits: no halving
  assert run["versions"]["open_clip"] == "3.3.0"
  rows = table_rows((tmp_path / "results.md").read_text(), ("all_gather", "open_clip eager"))
  assert [r[0] for r in rows] == ["all_gather", "open_clip eager"]


def test_step_breakdown_prints_every_part(open_clip_wheel):
  """benchmarks/step_breakdown.py at toy size: every part timed in both frameworks (where it has
  a PyTorch side), and the plain-JAX image tower checked equal to clip_jax's before timing."""
  proc = run_script("step_breakdown.py", "--config",
                    os.path.join(ROOT, "benchmarks", "configs", "demo_scale.py") + ":tiny",
                    "--steps", "1", "--warmup", "0", "--open_clip_wheel", str(open_clip_wheel))
  assert proc.returncode == 0, proc.stderr[-2000:]
  difference = float(re.search(r"max abs difference (\S+)\n", proc.stdout).group(1))
  assert difference <= 1e-5
  parts = ("train step", "image forward", "image fwd+bwd", "text forward", "text fwd+bwd",
           "loss fwd+bwd", "AdamW update", "attention fwd+bwd", "MLP matmul fwd+bwd")
  rows = table_rows(proc.stdout, parts + ("attention fwd+bwd (einsum)", "plain-JAX image fwd+bwd"))
  assert len(rows) == len(parts) + 2
  for name, jax_ms, torch_ms, ratio in rows:
    assert float(jax_ms) > 0
    if name in parts:
      assert float(ratio) == pytest.approx(float(torch_ms) / float(jax_ms), rel=0.05, abs=0.01)
