"""Config mistakes stop at start-up with a message naming the field and the allowed values."""

import os
import subprocess
import sys

import pytest

from clip_jax.config import load_config_file, validate_config, with_defaults
from clip_jax.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo", "emoji.py")


def _demo():
  return with_defaults(load_config_file(DEMO))


def test_demo_configs_validate():
  for name in ("emoji.py", "emoji_softmax.py"):
    validate_config(with_defaults(load_config_file(os.path.join(ROOT, "configs", "demo", name))),
                    num_devices=8)


def _set(config, dotted, value):
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  with node.unlocked() if hasattr(node, "unlocked") else _null():
    node[leaf] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


@pytest.mark.parametrize("field, value, expected", [
    ("total_stepz", 3, "config.total_stepz is not a known field"),
    ("batch_size", 100, "config.batch_size = 100 is not divisible by the 8 batch shards"),
    ("total_steps", 0, "config.total_steps = 0 must be a positive integer"),
    ("loss.name", "cosine", "config.loss.name = 'cosine' is not a known loss; choose one of:"),
    ("model.towers.image.name", "resnet9000",
     "config.model.towers.image.name = 'resnet9000' is not a known tower; choose one of:"),
    ("mesh", (("data", 3), ("fsdp", 1)), "config.mesh = "),
    ("batch_axes", ("batch",), "config.batch_axes = ('batch',) must be a non-empty subset"),
    ("data.name", "laion9b", "config.data.name = 'laion9b' is not a known data source"),
    ("evals.heldout.name", "vqa", "config.evals.heldout.name = 'vqa' is not a known evaluator"),
    ("optim.lr", 0.1, "config.optim.lr is not a known field"),
    ("model.dtype", "float16", "config.model.dtype = 'float16'; choose float32 or bfloat16"),
])
def test_config_mistakes_are_named(field, value, expected):
  config = _demo()
  _set(config, field, value)
  with pytest.raises(ConfigError) as e:
    validate_config(config, num_devices=8)
  assert expected in str(e.value)


def test_mesh_mismatch_names_device_count():
  config = _demo()
  config.mesh = (("data", 4), ("fsdp", 1))
  with pytest.raises(ConfigError, match=r"covers 4 devices but JAX has 8"):
    validate_config(config, num_devices=8)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "clip_jax.train", "--config", DEMO, *args],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_unknown_override_is_one_line_message(tmp_path):
  proc = _cli("--workdir", str(tmp_path), "--config.total_stepz=3")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert "--config.total_stepz is not a known field; did you mean --config.total_steps?" in (
      proc.stderr)


def test_cli_validation_error_exits_cleanly(tmp_path):
  proc = _cli("--workdir", str(tmp_path), "--config.batch_size=7")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "config.batch_size = 7 is not divisible" in proc.stderr
