"""`python -m clip_jax.evaluate` on a tiny trained run: it reproduces the training evals at the
chosen checkpoint and draws its pictures, also when the training data is gone (it reads the model's params only), and a
step without a checkpoint is a one-line error naming the steps there are. Evaluation on two
processes is in tests/test_multihost.py."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest
from PIL import Image

from clip_jax.checkpoint import Checkpointer
from clip_jax.config import load_config_file, saved_config
from clip_jax.data import synthetic
from clip_jax.metrics import read_metrics
from clip_jax.training.loop import train_and_evaluate

from tests.test_tensorboard import read_events, scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A run of 8 steps with checkpoints and evals (retrieval and classification) at 4 and 8."""
  workdir = tmp_path_factory.mktemp("trained")
  config = load_config_file(TINY)
  config.update(total_steps=8, eval_every_steps=4, ckpt_every_steps=4, ckpt_async=False)
  config.evals.shapes = ml_collections.ConfigDict(dict(
      name="zeroshot_classification", split="heldout", label="shape",
      templates=("{}", "a {} shape.")))
  train_and_evaluate(config, str(workdir))
  return workdir


def evaluate_cli(workdir, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "clip_jax.evaluate", "--workdir", str(workdir),
                         *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def training_evals(workdir):
  """step -> the eval metrics that training logged at that step."""
  return {l["step"]: {k: v for k, v in l.items() if k != "step"}
          for l in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "heldout/mean_recall" in l}


def assert_same_metrics(got, want):
  assert set(got) == set(want)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("step", [None, 4])
def test_evaluate_reproduces_training_evals(workdir, step):
  evals = training_evals(workdir)
  assert sorted(evals) == [4, 8]
  assert evals[4] != evals[8]  # the two checkpoints are told apart by their metrics
  before = set(os.listdir(workdir / "tensorboard"))
  proc = evaluate_cli(workdir, *([f"--step={step}"] if step else []))
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  with open(os.path.join(workdir, "eval", f"{step or 8}.json")) as f:
    assert json.load(f) == printed  # the JSON written to the workdir
  assert printed.pop("step") == (step or 8)
  assert_same_metrics(printed, evals[step or 8])
  # The pictures beside the JSON: the retrieval split's grid and projection, the confusion matrix.
  for picture in ("heldout_grid", "heldout_projection", "shapes_confusion"):
    with Image.open(os.path.join(workdir, "eval", f"{step or 8}_{picture}.png")) as png:
      assert png.format == "PNG" and min(png.size) > 100, picture
  # And to TensorBoard, in an events file of its own beside training's.
  new_files = sorted(set(os.listdir(workdir / "tensorboard")) - before)
  assert len(new_files) == 1
  logged = [(s, value) for name, event in read_events(workdir / "tensorboard")
            if name == new_files[0] for s, tag, value in scalars([(name, event)])
            if tag == "heldout/i2t_recall_5"]
  assert logged == [(step or 8, pytest.approx(printed["heldout/i2t_recall@5"]))]
  if step is None:
    with open(os.path.join(workdir, "final_metrics.json")) as f:
      assert_same_metrics(printed, json.load(f))


@pytest.mark.parametrize("step", [5, 0])
def test_missing_step_is_one_line_exit_2(workdir, step):
  proc = evaluate_cli(workdir, f"--step={step}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"Config error: --step={step}: {workdir}/checkpoints has no checkpoint at step {step}; "
      "available steps: 4, 8"]


def test_evaluate_leaves_a_save_in_progress_alone(workdir):
  # A training job beside the evaluation may be writing a checkpoint: orbax's temporary
  # directory must survive the evaluation (a reader cleaning it up would lose that save).
  from clip_jax.evaluate import evaluate_checkpoint

  in_progress = workdir / "checkpoints" / "12.orbax-checkpoint-tmp-1764400000000000"
  (in_progress / "state").mkdir(parents=True)
  (in_progress / "state" / "partial").write_bytes(b"being written")
  config = json.load(open(workdir / "config.json"))
  metrics = evaluate_checkpoint(ml_collections.ConfigDict(config), str(workdir), step=8)
  assert metrics["step"] == 8
  assert (in_progress / "state" / "partial").read_bytes() == b"being written"
  (in_progress / "state" / "partial").unlink()
  (in_progress / "state").rmdir()
  in_progress.rmdir()


def test_evaluate_needs_no_training_data_nor_optimizer(workdir, monkeypatch):
  # The run's training examples can no longer be read (as when the directory they were read from
  # is gone); evaluation reads only the evaluation split, restores the model's params alone,
  # builds no optimizer, and still reproduces the training evals.
  def gone(*args, **kwargs):
    raise FileNotFoundError("the training data is gone")

  from clip_jax.evaluate import evaluate_checkpoint
  from clip_jax.training import trainer

  monkeypatch.setattr(synthetic.SyntheticSource, "train_examples", gone)
  monkeypatch.setattr(synthetic.SyntheticSource, "train_view", gone)
  monkeypatch.setattr(trainer, "make_optimizer", gone)
  monkeypatch.setattr(Checkpointer, "restore", gone)  # the whole train state
  config = saved_config((workdir / "config.json").read_text())
  metrics = evaluate_checkpoint(config, str(workdir), step=4)
  assert metrics.pop("step") == 4
  assert_same_metrics(metrics, training_evals(workdir)[4])
