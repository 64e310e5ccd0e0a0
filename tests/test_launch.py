"""The launch scripts: every override reaches clip_jax.train as one argument, quotes and spaces
kept, and `--print` writes commands that, run by a shell, do exactly what the script does.

Bug replayed: launch/tpu_pod.sh put the overrides into gcloud's remote command as `$*`, so the
worker's shell split a value with spaces and choked on one with quotes.

`python`, `srun` and `gcloud` are replaced by stubs on PATH that record the arguments they receive
and the environment variables the launchers set.
"""

import json
import os
import re
import shlex
import subprocess

import pytest
from jax._src.clusters.slurm_cluster import SlurmCluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRICKY = ["--config.data.captions=a cat; a dog", "--config.note=it's \"quoted\" $HOME `id`",
          "--config.lines=one\ntwo", "--config.empty="]
ENV_KEYS = ("JAX_PLATFORMS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION")
RECORD = ("#!/usr/bin/env python3\nimport json, os, sys\n"
          "with open(os.path.join(os.environ['ARGS_DIR'], 'calls'), 'a') as f:\n"
          f"  f.write(json.dumps([sys.argv[1:], {{k: os.environ.get(k) for k in {ENV_KEYS!r}}}])"
          " + '\\n')\n"
          "sys.exit(int(os.environ.get('STUB_EXIT', '0')))\n")
TRAIN = ["-m", "clip_jax.train"]
SLURM_ENV = dict(SLURM_JOB_ID="1234", SLURM_JOB_NODELIST="gpu[003-004,010]",
                 SLURM_JOB_NUM_NODES="3")


def _stubs(tmp_path, *names):
  """An environment whose PATH has `names` record their arguments into tmp_path/args/calls."""
  bin_dir, args_dir = tmp_path / "bin", tmp_path / "args"
  bin_dir.mkdir()
  args_dir.mkdir()
  for name in names:
    (bin_dir / name).write_text(RECORD)
    (bin_dir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS and not k.startswith("SLURM_")}
  return dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGS_DIR=str(args_dir))


def _recorded(tmp_path, clear=True):
  """[(argv, {env key: value})] of the stub calls so far, in call order; clears the log."""
  path = tmp_path / "args" / "calls"
  calls = [tuple(json.loads(line)) for line in path.read_text().splitlines()] if (
      path.exists()) else []
  if clear and path.exists():
    path.unlink()
  return calls


def _run(args, env, **kwargs):
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                        **kwargs)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def _gcloud_lines(printed):
  """The printed gcloud commands (a quoted argument may hold a newline)."""
  return re.split(r"\n(?=gcloud )", printed.removesuffix("\n"))


def test_tpu_pod_print_writes_gcloud_commands_that_reparse(tmp_path):
  env = _stubs(tmp_path, "gcloud", "python")
  args = ["my-tpu", "us-central2-b", "configs/demo/emoji.py", "gs://bucket/runs/exp 1", *TRICKY]
  printed = _gcloud_lines(_run(["bash", "launch/tpu_pod.sh", "--print", "--install", *args], env))
  assert _recorded(tmp_path) == []  # nothing ran
  gcloud = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-central2-b",
            "--worker=all", "--command"]
  install, train = (shlex.split(line) for line in printed)
  assert install == gcloud + [f"cd {ROOT} && python -m pip install -e '.[gcs]'"]
  assert train[:-1] == gcloud
  expected = [*TRAIN, "--multihost", "--config", "configs/demo/emoji.py", "--workdir",
              "gs://bucket/runs/exp 1", *TRICKY]
  assert shlex.split(train[-1]) == ["cd", ROOT, "&&", "python", *expected]
  # The worker's shell (a POSIX sh) runs it: python gets exactly these arguments.
  _run(["sh", "-c", train[-1]], env)
  assert [argv for argv, _ in _recorded(tmp_path)] == [expected]
  # Without --print, gcloud gets exactly the printed commands, install first.
  _run(["bash", "launch/tpu_pod.sh", "--install", *args], env)
  assert [argv for argv, _ in _recorded(tmp_path)] == [install[1:], train[1:]]
  # --install=SPEC installs SPEC; without --install there is one step.
  printed = _gcloud_lines(_run(["bash", "launch/tpu_pod.sh", "--print",
                               "--install=-U clip-jax[gcs]", *args], env))
  assert shlex.split(printed[0])[-1] == f"cd {ROOT} && python -m pip install -U clip-jax[gcs]"
  assert _gcloud_lines(_run(["bash", "launch/tpu_pod.sh", "--print", *args], env)) == printed[1:]


@pytest.mark.parametrize("nodelist", ["gpu[003-004,010]", "node7", "a[1-3],b5", "h1,h2",
                                      "gpu[12,20-21]"])
def test_slurm_print_shows_the_environment_jax_reads(tmp_path, monkeypatch, nodelist):
  env = dict(_stubs(tmp_path, "srun", "python"), **dict(SLURM_ENV, SLURM_JOB_NODELIST=nodelist))
  printed = _run(["bash", "launch/slurm_gpu.sbatch", "--print", "cfg.py", "/shared/run 1",
                  *TRICKY], env)
  assert _recorded(tmp_path) == []
  # The coordinator jax.distributed.initialize() derives in each task (one task per node: the
  # step's node list is the job's).
  monkeypatch.setenv("SLURM_JOB_ID", "1234")
  monkeypatch.setenv("SLURM_STEP_NODELIST", nodelist)
  coordinator = SlurmCluster.get_coordinator_address(None, None)
  assert f"# coordinator_address = {coordinator}\n" in printed
  assert "# num_processes = SLURM_NTASKS = 3 (one task on each of 3 nodes)\n" in printed
  assert "# process_id = SLURM_PROCID = SLURM_NODEID = 0 .. 2\n" in printed
  if nodelist != "gpu[003-004,010]":
    return
  expected = ["--kill-on-bad-exit=1", "python", *TRAIN, "--multihost", "--config", "cfg.py",
              "--workdir", "/shared/run 1", *TRICKY]
  # Pasted into bash, the printed commands run srun with the same arguments and environment as
  # the script does.
  _run(["bash", "-c", printed], env)
  from_print = _recorded(tmp_path)
  _run(["bash", "launch/slurm_gpu.sbatch", "cfg.py", "/shared/run 1", *TRICKY], env)
  assert from_print == _recorded(tmp_path) == [
      (expected, dict(JAX_PLATFORMS=None, XLA_FLAGS=None, XLA_PYTHON_CLIENT_MEM_FRACTION="0.9"))]


def test_slurm_print_outside_a_job_names_the_variables(tmp_path):
  printed = _run(["bash", "launch/slurm_gpu.sbatch", "--print", "cfg.py", "/r"],
                 _stubs(tmp_path, "srun"))
  assert "first host of SLURM_JOB_NODELIST, port SLURM_JOB_ID % 4096 + 61440" in printed
  assert "SLURM_PROCID = SLURM_NODEID of the task's node" in printed


def test_local_processes_pass_overrides_unsplit_and_print_the_same(tmp_path):
  env = dict(_stubs(tmp_path, "python"), PORT="23456")
  args = ["2", "cfg.py", "/tmp/run 1", *TRICKY]
  _run(["bash", "launch/local_processes.sh", *args], env)
  expected = [(
      [*TRAIN, "--coordinator_address", "127.0.0.1:23456", "--num_processes", "2",
       "--process_id", str(i), "--config", "cfg.py", "--workdir", "/tmp/run 1", *TRICKY],
      dict(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
           XLA_PYTHON_CLIENT_MEM_FRACTION=None)) for i in range(2)]
  assert sorted(_recorded(tmp_path)) == expected
  printed = _run(["bash", "launch/local_processes.sh", "--print", *args], env)
  assert _recorded(tmp_path) == []
  assert len(printed.splitlines()) == 3
  _run(["bash", "-c", printed], env)
  assert sorted(_recorded(tmp_path)) == expected
  # A failed process fails the script, and the printed commands, run by a shell, alike.
  for command in (["bash", "launch/local_processes.sh", *args], ["bash", "-c", printed]):
    proc = subprocess.run(command, cwd=ROOT, env=dict(env, STUB_EXIT="3"), capture_output=True,
                          timeout=60)
    assert proc.returncode == 3, command[:2]
