"""The mini paper tables runner (clip_jax.tables) on two runs of the tiny config: it writes the
markdown and the PNG, a rerun skips finished runs, an interrupted run resumes from its checkpoint,
and a workdir that holds other settings is refused."""

import glob
import json
import os
import shutil

import pytest

from clip_jax import tables
from clip_jax.registry import ConfigError
from clip_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
TABLES = sorted(glob.glob(os.path.join(ROOT, "configs", "tables", "*.py")))
TABLE = f"""
from clip_jax.tables import Run, Table

def get_config():
  common = {{"total_steps": 8, "eval_every_steps": 8, "ckpt_every_steps": 4, "ckpt_async": False,
            "optim.warmup_steps": 2}}
  return Table(
      title="Tiny", claim="A claim.", setup="Two tiny runs.",
      runs=(Run("seed 0", {TINY!r}, common), Run("seed 1", {TINY!r}, dict(common, seed=1))),
      columns=(("heldout/i2t_recall@1", "i2t R@1"), ("heldout/modality_gap", "gap")),
      verdict=lambda r: "VERDICT " + ", ".join(sorted(r)))
"""


def test_table_written_rerun_skips_and_interrupted_run_resumes(tmp_path, monkeypatch):
  table = tmp_path / "tiny_table.py"
  table.write_text(TABLE)
  work, out = str(tmp_path / "runs"), str(tmp_path / "out")
  trained = []
  real = loop.train_and_evaluate
  monkeypatch.setattr(loop, "train_and_evaluate",
                      lambda config, workdir: trained.append(os.path.basename(workdir))
                      or real(config, workdir))

  md, png = tables.run_table(str(table), work, out, command="CMD")
  assert trained == ["seed_0", "seed_1"]
  assert (md, png) == (os.path.join(out, "tiny_table.md"), os.path.join(out, "tiny_table.png"))
  assert open(png, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
  text = open(md).read()
  first = {r: json.load(open(os.path.join(work, r, "final_metrics.json")))
           for r in ("seed_0", "seed_1")}
  assert "`CMD`" in text and "VERDICT seed 0, seed 1" in text and "![Tiny](tiny_table.png)" in text
  assert f"| seed 1 | {first['seed_1']['heldout/i2t_recall@1']:.3f} | " in text
  assert "configs/tiny.py --config.total_steps=8 " in text

  # Run "seed 1" killed after its step-4 checkpoint; "seed 0" finished.
  os.remove(os.path.join(work, "seed_1", "final_metrics.json"))
  shutil.rmtree(os.path.join(work, "seed_1", "checkpoints", "8"))
  record = json.load(open(os.path.join(work, "seed_1", tables.RECORD)))
  del record["metrics"]
  open(os.path.join(work, "seed_1", tables.RECORD), "w").write(json.dumps(record))
  os.remove(md)
  metrics_path = os.path.join(work, "seed_1", "metrics.jsonl")
  lines = open(metrics_path).read().splitlines()
  assert json.loads(lines[0])["step"] == 1
  open(metrics_path, "w").write("\n".join([json.dumps({"step": 1, "loss": 123.0})] + lines[1:])
                                + "\n")
  trained.clear()
  tables.run_table(str(table), work, out, command="CMD")
  assert trained == ["seed_1"] and os.path.exists(md)
  records = [json.loads(line) for line in open(metrics_path)]
  assert records[0] == {"step": 1, "loss": 123.0}  # kept: the run went on from step 4
  steps = [r["step"] for r in records]
  assert steps == sorted(steps) and len(steps) == len(set(steps)) + 1  # step 8: train + eval
  # Resumed from step 4 exactly: the same final metrics as the uninterrupted run.
  assert json.load(open(os.path.join(work, "seed_1", "final_metrics.json"))) == pytest.approx(
      first["seed_1"], rel=1e-5)

  trained.clear()
  tables.run_table(str(table), work, out, command="CMD")
  assert trained == []

  # A run that stops before its last step (a signal): no table, and the sweep stops there.
  shutil.rmtree(out)
  monkeypatch.setattr(loop, "train_and_evaluate", lambda config, workdir: {})
  assert tables.run_table(str(table), str(tmp_path / "stopped"), out) is None
  assert not os.path.exists(out)

  # Other settings in the same workdir are refused, naming the directory.
  table.write_text(TABLE.replace('"total_steps": 8', '"total_steps": 12'))
  with pytest.raises(ConfigError, match="holds run 'seed 0' with other settings"):
    tables.run_table(str(table), work, out)


@pytest.mark.parametrize("path", TABLES, ids=os.path.basename)
def test_every_table_config_validates_and_writes_its_verdict(path):
  from clip_jax.config import validate_config, with_defaults

  table = tables.load_table(path)
  for run in table.runs:
    validate_config(with_defaults(tables.run_config(run)), num_devices=8)
  # The verdict (read only after a sweep of minutes) takes every column of every run.
  fake = {run.label: {key: 0.1 * (i + 1) for key, _ in table.columns}
          for i, run in enumerate(table.runs)}
  fake = {label: dict(m, **{"heldout_categories/top1": 0.2}) for label, m in fake.items()}
  assert table.verdict(fake).startswith("**Verdict")
