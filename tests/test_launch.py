"""The launch scripts hand every override to clip_jax.train as one argument, quotes and spaces kept.

Bug replayed: launch/tpu_pod.sh put the overrides into gcloud's remote command as `$*`, so the
worker's shell split a value with spaces and choked on one with quotes.

`python` and `srun` are replaced by stubs on PATH that record the arguments they receive.
"""

import json
import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRICKY = ["--config.data.captions=a cat; a dog", "--config.note=it's \"quoted\" $HOME `id`",
          "--config.lines=one\ntwo", "--config.empty="]
RECORD = "#!/usr/bin/env python3\nimport json, os, sys\n" \
         "open(os.path.join(os.environ['ARGS_DIR'], str(os.getpid())), 'w')" \
         ".write(json.dumps(sys.argv[1:]))\n"


def _stubs(tmp_path, *names):
  """A PATH whose `names` record their arguments into tmp_path/args/<pid>."""
  bin_dir, args_dir = tmp_path / "bin", tmp_path / "args"
  bin_dir.mkdir()
  args_dir.mkdir()
  for name in names:
    (bin_dir / name).write_text(RECORD)
    (bin_dir / name).chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGS_DIR=str(args_dir))


def _recorded(tmp_path):
  return [json.loads(p.read_text()) for p in sorted((tmp_path / "args").iterdir())]


def test_tpu_pod_dry_run_prints_a_command_that_reparses(tmp_path):
  proc = subprocess.run(
      ["bash", "launch/tpu_pod.sh", "my-tpu", "us-central2-b", "configs/demo/emoji.py",
       "gs://bucket/runs/exp 1", *TRICKY],
      cwd=ROOT, env=dict(os.environ, DRY_RUN="1"), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  remote = proc.stdout[:-1]  # the one trailing newline
  expected = ["python", "-m", "clip_jax.train", "--multihost", "--config",
              "configs/demo/emoji.py", "--workdir", "gs://bucket/runs/exp 1", *TRICKY]
  assert shlex.split(remote) == ["cd", ROOT, "&&", *expected]
  # The worker's shell (a POSIX sh) runs it: python gets exactly these arguments.
  run = subprocess.run(["sh", "-c", remote], env=_stubs(tmp_path, "python"), capture_output=True,
                       text=True, timeout=60)
  assert run.returncode == 0, run.stderr
  assert _recorded(tmp_path) == [expected[1:]]


def test_tpu_pod_passes_the_printed_command_to_gcloud(tmp_path):
  env = _stubs(tmp_path, "gcloud")
  args = ["my-tpu", "us-central2-b", "configs/demo/emoji.py", "gs://bucket/run", *TRICKY]
  printed = subprocess.run(["bash", "launch/tpu_pod.sh", *args], cwd=ROOT,
                           env=dict(env, DRY_RUN="1"), capture_output=True, text=True,
                           timeout=60).stdout[:-1]
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert _recorded(tmp_path) == [["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone",
                                  "us-central2-b", "--worker=all", "--command", printed]]


def test_slurm_passes_overrides_unsplit(tmp_path):
  proc = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "cfg.py", "/shared/run 1", *TRICKY],
                        cwd=ROOT, env=_stubs(tmp_path, "srun"), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert _recorded(tmp_path) == [["--kill-on-bad-exit=1", "python", "-m", "clip_jax.train",
                                  "--multihost", "--config", "cfg.py", "--workdir",
                                  "/shared/run 1", *TRICKY]]


def test_local_processes_pass_overrides_unsplit(tmp_path):
  proc = subprocess.run(["bash", "launch/local_processes.sh", "2", "cfg.py", "/tmp/run 1",
                         *TRICKY], cwd=ROOT, env=dict(_stubs(tmp_path, "python"), PORT="23456"),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert sorted(_recorded(tmp_path)) == [
      ["-m", "clip_jax.train", "--coordinator_address", "127.0.0.1:23456", "--num_processes",
       "2", "--process_id", str(i), "--config", "cfg.py", "--workdir", "/tmp/run 1", *TRICKY]
      for i in range(2)]
