"""Fault handling: unwritable workdir, full disk, a second signal, init_from, composite metrics."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from clip_jax import fs as fs_lib
from clip_jax.checkpoint import CheckpointError, Checkpointer
from clip_jax.config import load_config_file
from clip_jax.metrics import read_metrics
from clip_jax.registry import ConfigError
from clip_jax.training.loop import initial_state, train_and_evaluate
from clip_jax.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def tiny(**overrides):
  config = load_config_file(TINY)
  config.update(overrides)
  return config


def test_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(ConfigError, match=r"--workdir .*a_file/run.* is not writable"):
    train_and_evaluate(tiny(), str(blocker / "run"))


def test_full_disk_at_save_keeps_old_checkpoints(tmp_path, monkeypatch):
  trainer = Trainer(tiny())
  state = trainer.init_state()
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(4, state, {"step": 4}, force=True)

  class Full:
    free = 1 << 20

  monkeypatch.setattr(fs_lib.shutil, "disk_usage", lambda path: Full)
  with pytest.raises(CheckpointError) as e:
    ckpt.save(8, state, {"step": 8}, force=True)
  message = str(e.value)
  assert "not enough free disk space" in message and str(tmp_path) in message
  assert "the last complete checkpoint is step 4" in message
  assert ckpt.all_steps() == [4]


def test_second_signal_exits_at_once():
  script = (
      "import os, signal, time\n"
      "from clip_jax.training.preemption import PreemptionGuard\n"
      "with PreemptionGuard() as guard:\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  assert guard.should_stop()\n"
      "  print('first signal handled', flush=True)\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  time.sleep(30)\n"
      "  print('not reached', flush=True)\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
  assert proc.returncode == 130
  assert "first signal handled" in proc.stdout and "not reached" not in proc.stdout
  assert "exiting now without a checkpoint" in proc.stderr


def test_init_from_loads_chosen_params(tmp_path):
  source = tmp_path / "source"
  train_and_evaluate(tiny(total_steps=4, eval_every_steps=4), str(source))
  saved = Checkpointer(source, async_save=False)
  trained = jax.device_get(saved.restore_latest(
      Trainer(tiny()).abstract_state)[1]["params"])

  config = tiny(init_from=str(source), init_from_rules=((r"^model/text/", "init"),))
  trainer = Trainer(config)
  fresh = jax.device_get(trainer.init_state()["params"])
  state = initial_state(trainer, trainer.config)
  params = jax.device_get(state["params"])
  jax.tree.map(np.testing.assert_array_equal, params["model"]["image"],
               trained["model"]["image"])
  jax.tree.map(np.testing.assert_array_equal, params["loss"], trained["loss"])
  jax.tree.map(np.testing.assert_array_equal, params["model"]["text"], fresh["model"]["text"])
  assert int(state["step"]) == 0  # params only: a new run


def test_init_from_names_a_missing_param(tmp_path):
  source = tmp_path / "source"
  train_and_evaluate(tiny(total_steps=2, eval_every_steps=2), str(source))
  config = tiny(init_from=str(source))
  config.model.towers.text.depth = 2  # block_1 does not exist in the source
  with pytest.raises(ConfigError, match=r"parameter model/text/.*block_1.* is not in"):
    trainer = Trainer(config)
    initial_state(trainer, trainer.config)


def test_composite_terms_are_logged_separately(tmp_path):
  config = tiny(total_steps=2, eval_every_steps=2)
  config.loss = dict(name="composite", terms=dict(
      siglip=dict(name="sigmoid", weight=1.0), clip=dict(name="softmax", weight=0.5)))
  train_and_evaluate(config, str(tmp_path))
  line = [l for l in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in l][-1]
  assert {"loss/siglip", "loss/clip"} <= set(line)
  np.testing.assert_allclose(line["loss"], line["loss/siglip"] + 0.5 * line["loss/clip"],
                             rtol=1e-5)


def test_objective_batch_entries_are_checked_at_start(tmp_path):
  config = tiny()
  config.loss = dict(name="multi_positive")
  with pytest.raises(ConfigError, match=r"reads the batch entries \['instance_id'\].*"
                                        r"captions_per_example >= 2"):
    train_and_evaluate(config, str(tmp_path))


def test_tower_without_data_is_named_at_start(tmp_path):
  config = tiny()
  config.model.towers.sketch = dict(config.model.towers.image)
  with pytest.raises(ConfigError, match=r"config.model.towers.sketch reads the batch entry "
                                        r"'sketch'.*config.data.extra_views"):
    train_and_evaluate(config, str(tmp_path))
