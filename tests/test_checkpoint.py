"""Checkpoint reads into the current mesh, and runs that fell back from an unreadable checkpoint.

Bug reports replayed here:
* `init_from` of a run saved on 8 devices raised "Topology mismatch" on 1 or 4 devices; every
  checkpoint read must restore into the current mesh's target shardings.
* A run that fell back from a corrupted checkpoint 8 to 4 failed at step 8 on every restart
  (`StepAlreadyExistsError`), and its messages called step 8 "the last complete" checkpoint.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from clip_jax.checkpoint import Checkpointer, load_params_from
from clip_jax.config import load_config_file
from clip_jax.tree_paths import named_leaves
from clip_jax.metrics import read_metrics
from clip_jax.registry import ConfigError
from clip_jax.training.loop import initial_state, train_and_evaluate
from clip_jax.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def tiny(**overrides):
  config = load_config_file(TINY)
  config.update(overrides)
  return config


def built(config, devices):
  return Trainer(config, devices=devices)


def trained_params_on(devices, mesh, rules, workdir):
  """Trains 2 steps on `devices` with `mesh` and sharding `rules`; saves; returns the params."""
  trainer = built(tiny(mesh=mesh, sharding_rules=rules), devices)
  state = trainer.init_state()
  rng = np.random.default_rng(0)
  for _ in range(2):
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32),
             "text": rng.integers(1, 300, (16, 6)).astype(np.int32)}
    state, _ = trainer.train_step(state, trainer.global_batch(batch))
  ckpt = Checkpointer(workdir, async_save=False)
  ckpt.save(2, state, {"step": 2}, force=True)
  ckpt.close()
  return jax.device_get(state["params"])


# Loads `init_from` in a process that has only `dst` devices (the writer had more), and saves
# the loaded params by path to an npz file.
LOAD_SCRIPT = """
import sys
import jax
import numpy as np
from clip_jax.config import load_config_file
from clip_jax.training.loop import initial_state
from clip_jax.training.trainer import Trainer
from clip_jax.tree_paths import named_leaves
config = load_config_file(sys.argv[1])
config.mesh = eval(sys.argv[2])
config.init_from = sys.argv[3]
trainer = Trainer(config)
params = initial_state(trainer, trainer.config)["params"]
kernel = params["model"]["image"]["projection"]["kernel"]
assert kernel.sharding == trainer.state_shardings["params"]["model"]["image"]["projection"][
    "kernel"]
print("devices", jax.device_count(), len(kernel.sharding.device_set))
np.savez(sys.argv[4], **{k: np.asarray(v) for k, v in named_leaves(jax.device_get(params))})
"""


@pytest.mark.parametrize("src_devices, src_mesh, rules, dst_devices, dst_mesh", [
    (8, (("data", 4), ("fsdp", 2)), ((".*", "fsdp"),), 1, (("data", 1), ("fsdp", 1))),
])
def test_init_from_loads_exactly_on_another_device_count(tmp_path, src_devices, src_mesh, rules,
                                                         dst_devices, dst_mesh):
  saved = trained_params_on(jax.devices()[:src_devices], src_mesh, rules, tmp_path / "src")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={dst_devices}")
  out = tmp_path / "loaded.npz"
  proc = subprocess.run(
      [sys.executable, "-c", LOAD_SCRIPT, TINY, repr(dst_mesh), str(tmp_path / "src"), str(out)],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"devices {dst_devices} {dst_devices}" in proc.stdout
  loaded = np.load(out)
  saved_by_path = dict(named_leaves(saved))
  assert sorted(loaded.files) == sorted(saved_by_path)
  assert max(float(np.max(np.abs(loaded[k] - v))) for k, v in saved_by_path.items()) == 0.0


def test_init_from_loads_onto_more_devices_in_process(tmp_path):
  # The same kind in the other direction, in this 8-device process: written on 1 device.
  saved = trained_params_on(jax.devices()[:1], (("data", 1), ("fsdp", 1)),
                            ((".*", "replicate"),), tmp_path / "src")
  trainer = built(tiny(mesh=(("data", 4), ("fsdp", 2)), init_from=str(tmp_path / "src")),
                  jax.devices())
  params = initial_state(trainer, trainer.config)["params"]
  assert len(params["model"]["image"]["projection"]["kernel"].sharding.device_set) == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), saved)


def test_init_from_a_params_only_checkpoint_and_a_step_directory(tmp_path):
  # Two more read paths of the same kind: a step directory of another run (written on 8
  # devices), and a params-only tree as a converter writes it, each read on 2 devices.
  saved = trained_params_on(jax.devices(), (("data", 4), ("fsdp", 2)), ((".*", "fsdp"),),
                            tmp_path / "src")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "converted", jax.device_put(saved))
  for path in (tmp_path / "src" / "checkpoints" / "2", tmp_path / "converted"):
    trainer = built(tiny(mesh=(("data", 2), ("fsdp", 1)), init_from=str(path)),
                    jax.devices()[:2])
    params = jax.device_get(initial_state(trainer, trainer.config)["params"])
    jax.tree.map(np.testing.assert_array_equal, params, saved)
  # Evaluation's partial restore reads the bare tree too (it used to find no "params" level
  # and hand back placeholders).
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "bare" / "checkpoints" / "7" / "state", jax.device_put(saved))
  replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ("d",)),
                                          jax.sharding.PartitionSpec())
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          {"model": saved["model"]})
  restored = Checkpointer(tmp_path / "bare").restore_params(7, abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), {"model": saved["model"]})


def test_init_from_error_paths(tmp_path):
  trained_params_on(jax.devices(), (("data", 8), ("fsdp", 1)), ((".*", "fsdp"),),
                    tmp_path / "src")
  src = str(tmp_path / "src")
  trainer = built(tiny(), jax.devices())
  fresh = trainer.init_state()["params"]
  shardings = trainer.state_shardings["params"]
  with pytest.raises(ConfigError, match=r"'grow'.*must be 'load' or 'init'"):
    load_params_from(src, fresh, shardings, ((r"^model/", "grow"),))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ConfigError, match=r"config.init_from = .*empty.* is not a checkpoint"):
    load_params_from(str(tmp_path / "empty"), fresh, shardings)
  wide_config = tiny()
  wide_config.model.embed_dim = 32
  wide = built(wide_config, jax.devices())
  with pytest.raises(ConfigError, match=r"projection/kernel has shape \(16, 16\) in .* but "
                                        r"\(16, 32\) here; mark it 'init'"):
    load_params_from(src, wide.init_state()["params"], wide.state_shardings["params"])
  # Every checkpoint unreadable: the error names the path and the steps tried.
  for root, _, files in os.walk(tmp_path / "src" / "checkpoints" / "2" / "state"):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
  with pytest.raises(ConfigError, match=r"no checkpoint there can be read: .*checkpoints/2"):
    load_params_from(src, fresh, shardings)


@pytest.mark.parametrize("restart_steps", [12])  # past the unreadable step 8, which is saved again
def test_run_completes_after_falling_back_from_a_corrupted_checkpoint(tmp_path, capsys,
                                                                     restart_steps,
                                                                     truncate_checkpoint):
  config = tiny(total_steps=8, ckpt_every_steps=4, eval_every_steps=8, ckpt_async=False)
  train_and_evaluate(config, str(tmp_path))
  truncate_checkpoint(tmp_path / "checkpoints" / "8")
  capsys.readouterr()

  config.total_steps = restart_steps
  train_and_evaluate(config, str(tmp_path))  # falls back to 4, trains on, saves 8 again
  out = capsys.readouterr().out
  assert "checkpoints/8 cannot be restored" in out and "Resumed from" in out
  assert os.path.isdir(tmp_path / "checkpoints_unreadable" / "8")  # moved aside, not deleted
  assert "moved the unreadable checkpoint 8" in out
  assert "last complete checkpoint is step 8" not in out
  lines = [l for l in read_metrics(tmp_path / "metrics.jsonl") if "loss" in l]
  assert [l["step"] for l in lines] == list(range(1, restart_steps + 1))  # each step once

  ckpt = Checkpointer(tmp_path, async_save=False)
  trainer = built(config, jax.devices())
  step, _, _ = ckpt.restore_latest(trainer.abstract_state)
  assert step == restart_steps and 8 in ckpt.all_steps()
  ckpt.close()
  # Starting again keeps working (the moved-aside step stays where it is).
  train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints_unreadable") == ["8"]


def test_restart_with_another_model_is_a_named_error_and_keeps_the_run(tmp_path):
  config = tiny(total_steps=4, eval_every_steps=4, ckpt_async=False)
  train_and_evaluate(config, str(tmp_path))
  saved_config = (tmp_path / "config.json").read_text()
  config.model.towers.image.width = 24
  with pytest.raises(ConfigError, match=r"checkpoints/4 holds a run of another model: "
                                        r"params/model/image/.* has shape .* there but .* in "
                                        r"this config"):
    train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == saved_config  # the run's config is kept
  assert Checkpointer(tmp_path, async_save=False, read_only=True).all_steps() == [4]
