"""The dry run (`clip_jax.training.dry_run`, `python -m clip_jax.train --dry_run`): abstract only.

Parameter counts come from `jax.eval_shape` (nothing allocated); every config under configs/ is
lowered on the 8 simulated CPU devices with its towers cut to one block (the layout, batch and
widths are the config's), without compiling; the CLI runs once end to end, compiling the emoji
demo's step.
"""

from __future__ import annotations

import glob
import os
import pathlib
import subprocess
import sys

import pytest

from clip_jax.config import load_config_file
from clip_jax.training import dry_run as dry_run_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# configs/tables/ holds table configs (clip_jax.tables), checked in tests/test_tables.py.
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / "configs/*/*.py"))
                 if os.path.dirname(p) != str(ROOT / "configs" / "tables"))
# Too large to simulate: only the abstract build and the analytic analysis run.
UNSIMULATED = dry_run_lib.parse_target("v4-4096")


@pytest.mark.parametrize("config_file,expected,gflops", [
    # open_clip's own counts of these models (logit_scale included), and its model profile's
    # GFLOPs per image-text pair x 3 (forward and backward; the similarities are not counted).
    ("configs/paper/clip_vit_b32_laion400m.py", 151_277_313, 44.3),
    ("configs/paper/clip_vit_b16_laion400m.py", 149_620_737, 123.3),
    ("configs/paper/clip_vit_l14_laion400m.py", 427_616_513, None),
])
def test_paper_clip_configs_have_open_clips_parameter_counts(config_file, expected, gflops,
                                                           with_tokenizer_files):
  config = with_tokenizer_files(load_config_file(str(ROOT / config_file)))
  report = dry_run_lib.dry_run(config, target=UNSIMULATED)
  assert report.total_params == expected
  assert f"total_params={expected}" in report.text()
  assert sum(report.tower_params.values()) + 1 == expected  # + the loss's scale
  if gflops:  # no remat in these configs: 3 x forward
    assert report.flops_analytic / config.batch_size / 1e9 == pytest.approx(gflops, rel=0.005)


@pytest.mark.parametrize("config_file", CONFIGS)
def test_every_config_passes_its_dry_run(config_file, with_tokenizer_files):
  config = with_tokenizer_files(load_config_file(str(ROOT / config_file)))
  with config.unlocked():
    for tower in config.model.towers.values():
      tower.depth = 1
  report = dry_run_lib.dry_run(config, compile=False)
  assert report.ok, report.text()
  assert report.flops_xla and report.flops_analytic
  # The analytic count follows XLA's (its omissions: norms, activations, softmax, the loss).
  assert report.flops_analytic == pytest.approx(report.flops_xla, rel=0.25)


def test_a_batch_the_mesh_cannot_split_is_a_problem():
  config = load_config_file(str(ROOT / "configs/demo/emoji.py"))
  config.batch_size = 260
  report = dry_run_lib.dry_run(config)
  assert not report.ok
  assert "config.batch_size = 260 is not divisible by the 8 batch shards" in report.text()


def test_a_per_device_estimate_above_the_targets_memory_is_a_problem():
  config = load_config_file(str(ROOT / "configs/demo/emoji.py"))
  target = dry_run_lib.parse_target("v4-32")  # 16 chips: analysed, not simulated
  config.batch_size = 16 * 4096  # ~3 GiB per device, mostly the loss's 4096 x 65536 similarities
  report = dry_run_lib.dry_run(config, target=target)
  assert report.ok, report.text()
  config.batch_size = 16 * 32768  # ~200 GiB
  report = dry_run_lib.dry_run(config, target=target)
  assert not report.ok
  assert "exceeds the 32 GiB of one TPU v4" in report.problems[0]


def test_cli_dry_run_needs_no_workdir():
  env = {k: v for k, v in os.environ.items() if k != dry_run_lib.SIMULATED_ENV}
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  result = subprocess.run(
      [sys.executable, "-m", "clip_jax.train", "--config", "configs/demo/emoji.py", "--dry_run",
       "--target=8xH100", "--dry_run_compile=yes", "--config.model.towers.image.depth=1",
       "--config.model.towers.text.depth=1"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  out = result.stdout
  assert "target 8xH100 (NVIDIA H100 80GB, 8 devices, 1 process, 80 GiB each)" in out
  assert "total_params=473858" in out
  assert "global batch 256, 8 batch shards, local batch 32" in out
  assert "flops_per_step_per_device_xla=" in out
  assert "compiled memory_analysis" in out
  assert "problems: none" in out


def test_a_cudnn_config_is_checked_on_a_cpu_host():
  """A GPU run's config with cuDNN attention can be dry-run where cuDNN is not (lowered as
  XLA's attention, and said so); the config itself keeps "cudnn"."""
  config = load_config_file(str(ROOT / "configs/demo/emoji.py"))
  config.model.dtype = "bfloat16"
  config.model.attention_impl = "cudnn"
  config.model.towers.text.attention_impl = "cudnn"
  report = dry_run_lib.dry_run(config, compile=False)
  assert report.ok, report.text()
  assert ("attention_impl 'cudnn' (config.model.attention_impl, "
          "config.model.towers.text.attention_impl) lowered as 'xla' here") in report.text()
  assert config.model.attention_impl == "cudnn"
