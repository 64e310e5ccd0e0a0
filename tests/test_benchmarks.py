"""Smoke runs of the benchmark scripts at toy sizes: they run and print their tables."""

import os
import re
import subprocess
import sys

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
  rows = table_rows(proc.stdout, ("all_gather",))
  assert [r[3] for r in rows] == ["off", "8"]  # the micro-batch column
  impl, dtype, remat, micro, compile_s, ms, speed, rel, temp, row_flops, mfu = rows[0]
  assert (impl, dtype, remat, rel, mfu) == ("all_gather", "float32", "off", "1.00x", "n/a")
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
