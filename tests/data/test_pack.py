"""The tools for the users' own data: pack and stats (a training run on packed shards:
tests/training/test_own_data.py)."""

import os
import subprocess
import sys
import tarfile

import numpy as np

from clip_jax.data import build_source, pack, table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEBDATASET_CONFIG = os.path.join(ROOT, "configs", "custom", "webdataset.py")


def pack_table(table_path, output) -> list[str]:
  samples, skips = table.read_table(str(table_path), "filepath", "title")
  shards, read_skips = pack.write_shards(samples, str(output), shard_size=5)
  assert skips.total == read_skips.total == 0
  return shards


def test_pack_round_trip_equals_the_csv_source(photo_table, file_config, tmp_path):
  shards = pack_table(photo_table, tmp_path / "out")
  assert [os.path.basename(s) for s in shards] == [f"shard-{i:05d}.tar" for i in range(3)]
  csv = build_source(file_config(name="csv", path=str(photo_table)).data)
  wds = build_source(file_config(name="webdataset",
                                 train_shards=str(tmp_path / "out" / "shard-*.tar")).data)
  units = np.arange(12)
  images, captions = csv.train_examples(units, np.zeros((12, 2)))
  packed, packed_captions = wds.train_examples(units, np.zeros((12, 2)))
  np.testing.assert_array_equal(images, packed)
  assert captions == packed_captions == [f"photo number {i}" for i in range(12)]
  with tarfile.open(shards[0]) as tar:  # no time stamps or owners
    assert {(m.mtime, m.uid, m.uname, m.mode) for m in tar} == {(0, 0, "", 0o644)}
  again = pack_table(photo_table, tmp_path / "again")  # the same bytes from the same input
  for a, b in zip(shards, again, strict=True):
    assert open(a, "rb").read() == open(b, "rb").read()


def run(*args) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=300)


def test_pack_folder_and_stats_commands(photo_table, tmp_path):
  folder = photo_table.parent / "imgs"
  for i in range(11):  # captions beside 11 of the 12 images
    (folder / f"{i}.txt").write_text(f"photo number {i}")
  out = run("clip_jax.data.pack", "--images", str(folder), "--output", str(tmp_path / "shards"),
            "--shard_size", "5")
  assert out.returncode == 0, out.stderr
  assert "Wrote 11 samples in 3 shards" in out.stdout
  assert "Skipped: caption_missing 1; e.g. " + str(folder / "11.jpg") in out.stdout
  out = run("clip_jax.data.stats", "--config",
            f"{WEBDATASET_CONFIG}:train_shards={tmp_path}/shards/shard-{{00000..00002}}.tar",
            f"--config.data.cache_dir={tmp_path / 'cache'}", "--sample", "6")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == "source 'webdataset': 11 training units, 11 captions"
  assert lines[1] == "found 11 samples; skipped at start-up: 0"
  assert lines[2].startswith("caption characters: p0 14, p5 14, p50 14, p95 15, p100 15")
  assert lines[3].startswith("caption words: p0 3, p5 3, p50 3, p95 3, p100 3, mean 3.0")
  assert lines[4] == "images read: 6 of 6 sampled"
  assert lines[5].startswith("image width: p0 16, p5 16, p50 20, p95 24, p100 24")
